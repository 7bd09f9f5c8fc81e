/**
 * The cloud-init drive of a real guest (guests=qemu), made at every start the way qemu-server's
 * `PVE::QemuServer::Cloudinit` makes it for the `nocloud` format (src/PVE/QemuServer/Cloudinit.pm,
 * qemu-server 9.2.6):
 *
 * - `generate_nocloud` (:610-635): user-data is the `cicustom user=` snippet verbatim, else
 *   `cloudinit_userdata` (:145-189); network-config is the `network=` snippet or `nocloud_network`
 *   (:527-596, network config v1 from `ipconfigN` and `netN`); vendor-data the `vendor=` snippet or
 *   empty; meta-data the `meta=` snippet or `instance-id: <sha1_hex(user-data . network-config)>`
 *   (:598-608). The four files together must stay below 3 MiB.
 * - `commit_cloudinit_disk` (:21-92): the files go to `/run/pve/cloudinit/<vmid>/`, `genisoimage
 *   -quiet -iso-level 3 -J -R -V cidata` makes the ISO, `qemu-img dd` writes it into the drive's
 *   volume (keeping the volume's size), and the directory is removed.
 *
 * DNS comes from `get_dns_conf` (:127-143): `nameserver`/`searchdomain` of the config, else the node's
 * /etc/resolv.conf (here the host root's, `PVESIM_HOST_ROOT/etc/resolv.conf`, absent by default).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { fail } from "./errors.js";
import type { ConfigMap } from "./types.js";
import { parseNic, parseProps, propsGet } from "./vmconfig.js";

export interface NocloudFiles {
  "user-data": string;
  "network-config": string;
  "meta-data": string;
  "vendor-data": string;
}

/** What the node's /etc/resolv.conf says (PVE::INotify's `resolvconf` reader: search and dns1..3). */
export interface ResolvConf {
  search?: string;
  nameservers: string[];
}

export function parseResolvConf(text: string): ResolvConf {
  const out: ResolvConf = { nameservers: [] };
  for (const line of text.split("\n")) {
    const m = /^\s*(search|domain|nameserver)\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    if (m[1] === "nameserver" && out.nameservers.length < 3) out.nameservers.push(m[2]!);
    else if (m[1] === "search") out.search = m[2]!;
    else if (m[1] === "domain" && out.search === undefined) out.search = m[2]!;
  }
  return out;
}

/** `get_hostname_fqdn` (:112-125). */
function hostnameFqdn(conf: ConfigMap, vmid: number): [string, string] {
  let hostname = conf["name"] ?? `VM${vmid}`;
  let fqdn: string;
  if (hostname.includes(".")) {
    fqdn = hostname;
    hostname = hostname.replace(/\..*$/, "");
  } else if (conf["searchdomain"]) {
    fqdn = `${hostname}.${conf["searchdomain"]}`;
  } else {
    fqdn = hostname;
  }
  return [hostname, fqdn];
}

/** `get_dns_conf` (:127-143): both lists always exist (possibly empty). */
function dnsConf(conf: ConfigMap, resolv: ResolvConf): { search: string[]; nameservers: string[] } {
  const split = (s: string): string[] => s.split(/\s+/).filter((x) => x !== "");
  const search = split(conf["searchdomain"] ?? resolv.search ?? "");
  const nameservers = conf["nameserver"] === undefined ? resolv.nameservers : split(conf["nameserver"]);
  return { search, nameservers };
}

/** `cloudinit_userdata` (:145-189): the user-data Proxmox writes when there is no `cicustom user=`. */
export function defaultUserData(conf: ConfigMap, vmid: number): string {
  const [hostname, fqdn] = hostnameFqdn(conf, vmid);
  let content = "#cloud-config\n";
  content += `hostname: ${hostname}\n`;
  content += "manage_etc_hosts: true\n";
  content += `fqdn: ${fqdn}\n`;
  const username = conf["ciuser"];
  const password = conf["cipassword"];
  if (username !== undefined) content += `user: ${username}\n`;
  if (username === "root") content += "disable_root: False\n";
  if (password !== undefined) content += `password: ${password}\n`;
  if (conf["sshkeys"] !== undefined) {
    const keys = decodeURIComponent(conf["sshkeys"])
      .split("\n")
      .map((k) => k.replace(/\n$/, ""))
      .filter((k) => /\S/.test(k));
    content += "ssh_authorized_keys:\n";
    for (const k of keys) content += `  - ${k}\n`;
  }
  content += "chpasswd:\n";
  content += "  expire: False\n";
  if (username !== "root") {
    content += "users:\n";
    content += "  - default\n";
  }
  if (conf["ciupgrade"] === undefined || conf["ciupgrade"] === "1") content += "package_upgrade: true\n";
  return content;
}

/** PVE::Network's `ipv4_reverse_mask`: a prefix length as a dotted netmask. */
function netmask(prefix: number): string {
  const bits = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (bits >>> s) & 0xff).join(".");
}

/** `nocloud_network` (:527-596): network config version 1. */
export function nocloudNetwork(conf: ConfigMap, resolv: ResolvConf): string {
  let content = "version: 1\nconfig:\n";
  // Perl's `sort` on the key names: a string sort (net10 before net2).
  const ifaces = Object.keys(conf)
    .filter((k) => /^net\d+$/.test(k))
    .sort();
  for (const iface of ifaces) {
    const id = iface.slice(3);
    const ipconfig = conf[`ipconfig${id}`];
    if (!ipconfig) continue;
    let i = "    ";
    const nic = parseNic(conf[iface]!, iface);
    if (typeof nic === "string" || !nic.mac) throw fail(`network interface '${iface}' has no mac address`);
    const mac = nic.mac.toLowerCase();
    content += `${i}- type: physical\n${i}  name: eth${id}\n${i}  mac_address: '${mac}'\n${i}  subnets:\n`;
    i += "  ";
    const pairs = parseProps(ipconfig);
    const ip = propsGet(pairs, "ip");
    const gw = propsGet(pairs, "gw");
    const ip6 = propsGet(pairs, "ip6");
    const gw6 = propsGet(pairs, "gw6");
    if (ip !== undefined) {
      if (ip === "dhcp") {
        content += `${i}- type: dhcp4\n`;
      } else {
        const [addr, mask] = ip.split("/");
        if (mask === undefined) throw fail(`not a CIDR: ${ip}`);
        content += `${i}- type: static\n${i}  address: '${addr}'\n${i}  netmask: '${netmask(Number(mask))}'\n`;
        if (gw !== undefined) content += `${i}  gateway: '${gw}'\n`;
      }
    }
    if (ip6 !== undefined) {
      if (ip6 === "dhcp") content += `${i}- type: dhcp6\n`;
      else if (ip6 === "auto") content += `${i}- type: ipv6_slaac\n`;
      else {
        content += `${i}- type: static6\n${i}  address: '${ip6}'\n`;
        if (gw6 !== undefined) content += `${i}  gateway: '${gw6}'\n`;
      }
    }
  }
  const i = "    ";
  const { search, nameservers } = dnsConf(conf, resolv);
  // Both are array references in Perl, so the nameserver entry is always written.
  content += `${i}- type: nameserver\n`;
  if (nameservers.length > 0) {
    content += `${i}  address:\n`;
    for (const n of nameservers) content += `${i}  - '${n}'\n`;
  }
  if (search.length > 0) {
    content += `${i}  search:\n`;
    for (const s of search) content += `${i}  - '${s}'\n`;
  }
  return content;
}

/** `nocloud_gen_metadata` (:603-608). */
export function nocloudMetadata(userData: string, networkConfig: string): string {
  const uuid = createHash("sha1")
    .update(Buffer.from(userData + networkConfig, "utf8"))
    .digest("hex");
  return `instance-id: ${uuid}\n`;
}

/** The `cicustom` parts already read: `user`, `network`, `meta`, `vendor` (each the snippet's text). */
export type CustomFiles = Partial<Record<"user" | "network" | "meta" | "vendor", string>>;

/** `generate_nocloud` (:610-635) up to the files. */
export function renderNocloud(
  conf: ConfigMap,
  vmid: number,
  custom: CustomFiles,
  resolv: ResolvConf,
): NocloudFiles {
  const user = custom.user ?? defaultUserData(conf, vmid);
  const network = custom.network ?? nocloudNetwork(conf, resolv);
  const vendor = custom.vendor ?? "";
  const meta = custom.meta ?? nocloudMetadata(user, network);
  const sum = [user, network, meta, vendor].reduce((n, s) => n + Buffer.byteLength(s), 0);
  if (sum > 3 * 1024 * 1024) throw fail("Cloud-Init sum of snippets too big (> 3 MiB)");
  return { "user-data": user, "network-config": network, "meta-data": meta, "vendor-data": vendor };
}

/**
 * `commit_cloudinit_disk` (:21-92): writes the files below `runDir`, builds the ISO with Proxmox's
 * genisoimage flags and label, writes it over the start of `volumeFile` (its size stays, as with
 * `qemu-img dd -n ... osize=`), and removes `runDir`. Task log lines are pushed to `log`.
 */
export function commitCloudinitDisk(
  files: NocloudFiles,
  runDir: string,
  volumeFile: string,
  label: string,
  log: string[],
): void {
  mkdirSync(runDir, { recursive: true });
  for (const [name, content] of Object.entries(files)) writeFileSync(join(runDir, name), content);
  log.push("generating cloud-init ISO");
  try {
    const iso = spawnSync("genisoimage", ["-quiet", "-iso-level", "3", "-J", "-R", "-V", label, runDir], {
      maxBuffer: 8 * 1024 * 1024,
    });
    if (iso.error) throw fail(`command 'genisoimage' failed: ${iso.error.message}`);
    if (iso.status !== 0) {
      const last = String(iso.stderr).trim().split("\n").pop() ?? "";
      throw fail(
        `command 'genisoimage -quiet -iso-level 3 -J -R -V ${label} ${runDir}' failed: exit code ${iso.status}${last ? ` (${last})` : ""}`,
      );
    }
    const fd = openSync(volumeFile, existsSync(volumeFile) ? "r+" : "w");
    try {
      writeSync(fd, iso.stdout, 0, iso.stdout.length, 0);
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** The node's resolv.conf below the host root, or nothing when the file is absent. */
export function readHostResolvConf(hostRoot: string): ResolvConf {
  try {
    return parseResolvConf(readFileSync(join(hostRoot, "etc", "resolv.conf"), "utf8"));
  } catch {
    return { nameservers: [] };
  }
}
