/**
 * VM configuration as Proxmox stores and types it: property strings, drives, NICs, sizes, tags,
 * the JSON typing of values, the digest, and which keys apply at once on a running VM.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import type { ConfigMap, VmRec } from "./types.js";

export const DRIVE_KEY = /^(scsi(\d|[12]\d|30)|virtio(\d|1[0-5])|sata[0-5]|ide[0-3]|efidisk0|tpmstate0)$/;
export const UNUSED_KEY = /^unused(\d|[1-9]\d|1\d\d|2[0-4]\d|25[0-5])$/;
export const NET_KEY = /^net(\d|[12]\d|3[01])$/;

export const INTEGER_KEYS = new Set([
  "cores",
  "sockets",
  "vcpus",
  "balloon",
  "shares",
  "cpuunits",
  "migrate_speed",
]);
export const BOOLEAN_KEYS = new Set([
  "onboot",
  "protection",
  "template",
  "numa",
  "tablet",
  "kvm",
  "acpi",
  "autostart",
  "reboot",
  "localtime",
  "freeze",
  "ciupgrade",
  "keephugepages",
]);

/** Keys a running VM takes at once; everything else waits in [PENDING] for a cold start. */
const FAST_PLUG = new Set([
  "name",
  "description",
  "tags",
  "onboot",
  "protection",
  "startup",
  "lock",
  "hookscript",
  "vmstatestorage",
  "shares",
]);

export function isHotpluggable(key: string): boolean {
  // Default `hotplug` is network,disk,usb.
  return (
    FAST_PLUG.has(key) ||
    NET_KEY.test(key) ||
    DRIVE_KEY.test(key) ||
    UNUSED_KEY.test(key) ||
    /^usb\d+$/.test(key)
  );
}

/** The JSON type of a config value as the API returns it (`memory` is a string since PVE 8.1). */
export function typedValue(key: string, value: string): string | number {
  if (INTEGER_KEYS.has(key) || BOOLEAN_KEYS.has(key)) {
    const n = Number(value);
    return Number.isFinite(n) ? n : value;
  }
  return value;
}

export function typedConfig(config: ConfigMap): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const [key, value] of Object.entries(config)) out[key] = typedValue(key, value);
  return out;
}

export interface PropPair {
  key: string;
  value: string;
}

/** Splits `a=1,b=2,bare` into pairs; a part without `=` gets `defaultKey`. */
export function parseProps(text: string, defaultKey?: string): PropPair[] {
  const pairs: PropPair[] = [];
  for (const part of text.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    if (eq < 0) pairs.push({ key: defaultKey ?? "", value: part });
    else pairs.push({ key: part.slice(0, eq), value: part.slice(eq + 1) });
  }
  return pairs;
}

export function propsGet(pairs: PropPair[], key: string): string | undefined {
  return pairs.find((p) => p.key === key)?.value;
}

// ---- sizes ----

const UNITS: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parses `8G`, `512M`, `1.5G`, `4096K` or plain bytes. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)([KMGT])?$/.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (m[2] ? UNITS[m[2]]! : 1));
}

/** `size=` text the way Proxmox writes it: the largest unit that divides evenly. */
export function formatSize(bytes: number): string {
  for (const unit of ["T", "G", "M", "K"]) {
    const f = UNITS[unit]!;
    if (bytes >= f && bytes % f === 0) return `${bytes / f}${unit}`;
  }
  return `${bytes}`;
}

/** Human size as Proxmox task logs print it (`8.0 GiB`). */
export function humanSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

// ---- drives ----

export interface Drive {
  /** Volume id, `none`, `cdrom`, or a `<storage>:<size|cloudinit>` allocation request. */
  file: string;
  pairs: PropPair[];
}

export function parseDrive(value: string): Drive {
  const pairs = parseProps(value, "file");
  const file = propsGet(pairs, "file") ?? "";
  return { file, pairs: pairs.filter((p) => p.key !== "file") };
}

export function printDrive(d: Drive): string {
  return [d.file, ...d.pairs.map((p) => `${p.key}=${p.value}`)].join(",");
}

export function setDriveProp(d: Drive, key: string, value: string | undefined): void {
  const i = d.pairs.findIndex((p) => p.key === key);
  if (value === undefined) {
    if (i >= 0) d.pairs.splice(i, 1);
  } else if (i >= 0) d.pairs[i] = { key, value };
  else d.pairs.push({ key, value });
}

export function isCdrom(d: Drive): boolean {
  return propsGet(d.pairs, "media") === "cdrom";
}

export function isCloudinitVolume(file: string): boolean {
  return /(^|[:/])vm-\d+-cloudinit(\.(qcow2|raw))?$/.test(file);
}

/** The disk keys of a config whose value refers to a volume (not cdrom images or `none`). */
export function volumeDrives(config: ConfigMap): Array<{ key: string; drive: Drive }> {
  const out: Array<{ key: string; drive: Drive }> = [];
  for (const [key, value] of Object.entries(config)) {
    if (!DRIVE_KEY.test(key) && !UNUSED_KEY.test(key)) continue;
    const drive = parseDrive(value);
    if (drive.file === "none" || drive.file === "cdrom" || !drive.file.includes(":")) continue;
    if (isCdrom(drive) && !isCloudinitVolume(drive.file)) continue;
    out.push({ key, drive });
  }
  return out;
}

// ---- NICs ----

export const NIC_MODELS = [
  "virtio",
  "e1000",
  "e1000e",
  "rtl8139",
  "vmxnet3",
  "i82551",
  "i82557b",
  "i82559er",
  "ne2k_isa",
  "ne2k_pci",
  "pcnet",
];
const NET_KEYS = new Set([
  "macaddr",
  "model",
  "bridge",
  "firewall",
  "link_down",
  "mtu",
  "queues",
  "rate",
  "tag",
  "trunks",
]);

export interface Nic {
  model: string;
  mac: string;
  rest: PropPair[];
}

/** Parses a netN value; returns the reason when a part is not in the NIC schema. */
export function parseNic(value: string, key: string): Nic | string {
  let model: string | undefined;
  let mac: string | undefined;
  const rest: PropPair[] = [];
  for (const pair of parseProps(value, "model")) {
    if (NIC_MODELS.includes(pair.key)) {
      model = pair.key;
      mac = pair.value;
    } else if (pair.key === "model") {
      if (!NIC_MODELS.includes(pair.value)) {
        return `invalid format - format error\n${key}.model: value '${pair.value}' does not have a value in the enumeration '${NIC_MODELS.join(", ")}'`;
      }
      model = pair.value;
    } else if (pair.key === "macaddr") {
      mac = pair.value;
    } else if (!NET_KEYS.has(pair.key)) {
      return `invalid format - format error\n${key}.${pair.key}: property is not defined in schema and the schema does not allow additional properties`;
    } else {
      rest.push(pair);
    }
  }
  if (!model)
    return `invalid format - format error\n${key}.model: property is missing and it is not optional`;
  if (mac !== undefined && !/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/.test(mac)) {
    return `invalid format - format error\n${key}.macaddr: value does not match the regex pattern`;
  }
  return { model, mac: mac?.toUpperCase() ?? "", rest };
}

export function printNic(n: Nic): string {
  const rest = [...n.rest].sort((a, b) =>
    a.key === "bridge" ? -1 : b.key === "bridge" ? 1 : a.key.localeCompare(b.key),
  );
  return [`${n.model}=${n.mac}`, ...rest.map((p) => `${p.key}=${p.value}`)].join(",");
}

/** A MAC in Proxmox's default OUI (BC:24:11). */
export function randomMac(): string {
  const b = randomBytes(3);
  return `BC:24:11:${[...b].map((x) => x.toString(16).toUpperCase().padStart(2, "0")).join(":")}`;
}

export function nicMac(config: ConfigMap, key = "net0"): string | undefined {
  const value = config[key];
  if (!value) return undefined;
  const nic = parseNic(value, key);
  return typeof nic === "string" ? undefined : nic.mac;
}

// ---- misc option formats ----

export function agentEnabled(value: string | undefined): boolean {
  if (value === undefined) return false;
  const pairs = parseProps(value, "enabled");
  const enabled = propsGet(pairs, "enabled");
  return enabled === "1" || enabled === "true" || enabled === "on" || enabled === "yes";
}

const TAG_RE = /^[a-z0-9_][a-z0-9_\-+.]*$/i;

/** Tags lower-cased, de-duplicated, sorted, joined by `;`; returns the bad tag when one is invalid. */
export function normaliseTags(text: string): { tags: string } | { bad: string } {
  const seen = new Set<string>();
  for (const tag of text.split(/[;, ]/)) {
    if (tag === "") continue;
    if (!TAG_RE.test(tag)) return { bad: tag };
    seen.add(tag.toLowerCase());
  }
  return { tags: [...seen].sort().join(";") };
}

/** Encoding of `sshkeys` as the CLI does it: everything but unreserved characters is escaped. */
export function uriEscape(text: string): string {
  return [...Buffer.from(text, "utf8")]
    .map((b) => {
      const c = String.fromCharCode(b);
      return /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
    })
    .join("");
}

export function newSmbios(): string {
  return `uuid=${randomUUID()}`;
}

export function newVmgenid(): string {
  return randomUUID();
}

// ---- the config file ----

function renderSection(config: ConfigMap): string {
  let text = "";
  const description = config["description"];
  if (description !== undefined) {
    for (const line of description.split("\n")) text += `#${line}\n`;
  }
  for (const key of Object.keys(config).sort()) {
    if (key === "description") continue;
    text += `${key}: ${config[key]}\n`;
  }
  return text;
}

/** The text of `<vmid>.conf`; its SHA-1 is the `digest` of the config API. */
export function renderConfFile(vm: VmRec): string {
  let text = renderSection(vm.config);
  if (Object.keys(vm.pending).length > 0 || vm.pendingDelete.length > 0) {
    const pending: ConfigMap = { ...vm.pending };
    if (vm.pendingDelete.length > 0) pending["delete"] = vm.pendingDelete.join(",");
    text += `\n[PENDING]\n${renderSection(pending)}`;
  }
  for (const name of Object.keys(vm.snapshots).sort()) {
    text += `\n[${name}]\n${renderSection(vm.snapshots[name]!)}`;
  }
  return text;
}

export function configDigest(vm: VmRec): string {
  return createHash("sha1").update(renderConfFile(vm)).digest("hex");
}

/** The config with pending changes applied, as `GET config` shows by default. */
export function mergedConfig(vm: VmRec): ConfigMap {
  const merged: ConfigMap = { ...vm.config, ...vm.pending };
  for (const key of vm.pendingDelete) delete merged[key];
  return merged;
}

/** Memory in MiB from `memory: [current=]N` (default 512). */
export function memoryMiB(config: ConfigMap): number {
  const value = config["memory"];
  if (!value) return 512;
  const m = /(?:^|current=)(\d+)/.exec(value);
  return m ? Number(m[1]) : 512;
}

/** The boot disk key: `bootdisk`, else the first disk of `boot: order=`, else the first present. */
export function bootDiskKey(config: ConfigMap): string | undefined {
  if (config["bootdisk"] && config[config["bootdisk"]]) return config["bootdisk"];
  const order = /order=([^,]+)/.exec(config["boot"] ?? "");
  if (order) {
    for (const dev of order[1]!.split(";")) {
      if (DRIVE_KEY.test(dev) && config[dev] && !isCdrom(parseDrive(config[dev]!))) return dev;
    }
  }
  return ["scsi0", "virtio0", "sata0", "ide0"].find((k) => config[k] !== undefined);
}

export function driveSize(config: ConfigMap, key: string | undefined): number {
  if (!key || !config[key]) return 0;
  const size = propsGet(parseDrive(config[key]!).pairs, "size");
  return size ? (parseSize(size) ?? 0) : 0;
}
