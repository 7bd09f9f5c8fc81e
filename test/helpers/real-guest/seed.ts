/**
 * The NoCloud seed a real guest boots with, made the way Proxmox makes its cloud-init drive
 * (qemu-server src/PVE/QemuServer/Cloudinit.pm: generate_nocloud, nocloud_network, nocloud_gen_metadata,
 * commit_cloudinit_disk), so the guest's cloud-init reads our user-data exactly as on a Proxmox host.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface SeedNic {
  /** The N of netN / ipconfigN: the guest names the interface ethN. */
  id: number;
  mac: string;
  /** ipconfigN's ip: "dhcp" or an address in CIDR form. */
  ip: "dhcp" | string;
  gw?: string;
}

export interface SeedDns {
  nameservers: string[];
  searchdomains: string[];
}

/** Cloudinit.pm split_ip4: the dotted netmask of a prefix length. */
function netmask(prefix: number): string {
  const bits = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((shift) => (bits >>> shift) & 0xff).join(".");
}

/**
 * network-config, version 1, as nocloud_network writes it: one `physical` entry per netN with an
 * ipconfigN, named ethN and matched by its lower-case MAC, then one `nameserver` entry (Proxmox always
 * writes it: the search domains and nameservers come from the VM or the host's resolv.conf).
 */
export function nocloudNetworkConfig(nics: SeedNic[], dns: SeedDns): string {
  let content = "version: 1\nconfig:\n";
  const i = "    ";
  for (const nic of [...nics].sort((a, b) => a.id - b.id)) {
    content += `${i}- type: physical\n${i}  name: eth${nic.id}\n${i}  mac_address: '${nic.mac.toLowerCase()}'\n${i}  subnets:\n`;
    const j = `${i}  `;
    if (nic.ip === "dhcp") {
      content += `${j}- type: dhcp4\n`;
    } else {
      const [addr, prefix] = nic.ip.split("/");
      if (!addr || prefix === undefined) throw new Error(`not a CIDR: ${nic.ip}`);
      content += `${j}- type: static\n${j}  address: '${addr}'\n${j}  netmask: '${netmask(Number(prefix))}'\n`;
      if (nic.gw) content += `${j}  gateway: '${nic.gw}'\n`;
    }
  }
  content += `${i}- type: nameserver\n`;
  if (dns.nameservers.length > 0) {
    content += `${i}  address:\n`;
    for (const ns of dns.nameservers) content += `${i}  - '${ns}'\n`;
  }
  if (dns.searchdomains.length > 0) {
    content += `${i}  search:\n`;
    for (const domain of dns.searchdomains) content += `${i}  - '${domain}'\n`;
  }
  return content;
}

/** nocloud_gen_metadata: the instance id is the SHA-1 of user-data followed by network-config. */
export function nocloudMetaData(userData: string, networkConfig: string): string {
  return `instance-id: ${createHash("sha1")
    .update(userData + networkConfig)
    .digest("hex")}\n`;
}

export interface SeedFiles {
  userData: string;
  networkConfig: string;
  /** Default: what Proxmox generates when cicustom has no meta snippet. */
  metaData?: string;
  /** Proxmox writes an empty vendor-data when cicustom has none. */
  vendorData?: string;
}

/**
 * Write the cidata ISO to `isoPath`. commit_cloudinit_disk runs `genisoimage -quiet -iso-level 3 -J -R
 * -V cidata <dir>` on the files user-data, network-config, meta-data and vendor-data; `-input-charset
 * utf-8` only silences genisoimage's notice about guessing the charset from the locale.
 */
export async function writeCidataIso(isoPath: string, files: SeedFiles): Promise<void> {
  const dir = mkdtempSync(join(dirname(isoPath), "cidata-"));
  try {
    writeFileSync(join(dir, "user-data"), files.userData);
    writeFileSync(join(dir, "network-config"), files.networkConfig);
    writeFileSync(
      join(dir, "meta-data"),
      files.metaData ?? nocloudMetaData(files.userData, files.networkConfig),
    );
    writeFileSync(join(dir, "vendor-data"), files.vendorData ?? "");
    await run("genisoimage", [
      "-quiet",
      "-iso-level",
      "3",
      "-J",
      "-R",
      "-V",
      "cidata",
      "-input-charset",
      "utf-8",
      "-o",
      isoPath,
      dir,
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
