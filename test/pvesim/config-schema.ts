/** The VM options the config API accepts, their value formats, and the privilege each one needs. */
import type { ParamSpec } from "./schema.js";
import {
  BOOLEAN_KEYS,
  DRIVE_KEY,
  INTEGER_KEYS,
  NET_KEY,
  normaliseTags,
  parseNic,
  parseProps,
  UNUSED_KEY,
} from "./vmconfig.js";

/** pve-common JSONSchema.pm `pve_verify_dns_name`. */
export const DNS_NAME =
  /^(?=.{1,253}$)[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/;

function propsFormat(
  allowed: string[],
  key: string,
  defaultKey?: string,
  check?: (k: string, v: string) => string | undefined,
) {
  return (value: string): string | undefined => {
    for (const pair of parseProps(value, defaultKey)) {
      if (!allowed.includes(pair.key)) {
        return `invalid format - format error\n${key}.${pair.key || "?"}: property is not defined in schema and the schema does not allow additional properties`;
      }
      const reason = check?.(pair.key, pair.value);
      if (reason) return `invalid format - format error\n${key}.${pair.key}: ${reason}`;
    }
    return undefined;
  };
}

const DRIVE_OPTS = [
  "file",
  "media",
  "size",
  "cache",
  "discard",
  "iothread",
  "ssd",
  "backup",
  "replicate",
  "format",
  "aio",
  "ro",
  "serial",
  "snapshot",
  "import-from",
  "wwn",
  "shared",
  "detect_zeroes",
  "efitype",
  "pre-enrolled-keys",
  "version",
  "mbps",
  "iops",
];

function driveFormat(key: string) {
  return (value: string): string | undefined => {
    const reason = propsFormat(DRIVE_OPTS, key, "file", (k, v) => {
      if (k === "media" && !["disk", "cdrom"].includes(v))
        return `value '${v}' does not have a value in the enumeration 'cdrom, disk'`;
      if (k === "file" && !/^(none|cdrom|[a-zA-Z][\w\-.]*:.+|\/.+)$/.test(v))
        return "invalid format - unable to parse volume ID";
      return undefined;
    })(value);
    return reason;
  };
}

const sshKeysFormat = (value: string): string | undefined => {
  if (!/^[-%a-zA-Z0-9_.!~*'()]*$/.test(value)) return `invalid format - invalid urlencoded string: ${value}`;
  let decoded: string;
  try {
    decoded = decodeURIComponent(value);
  } catch {
    return `invalid format - invalid urlencoded string: ${value}`;
  }
  for (const line of decoded.split("\n")) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    if (!/^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/=]+(\s.*)?$/.test(line.trim())) {
      return `invalid format - unable to parse ssh key '${line}'`;
    }
  }
  return undefined;
};

const NAMED: Record<string, ParamSpec> = {
  name: {
    type: "string",
    format: (v) =>
      DNS_NAME.test(v) ? undefined : "invalid format - value does not look like a valid DNS name",
  },
  description: { type: "string", maxLength: 8192 },
  memory: { type: "string", pattern: /^(current=)?\d+$/ },
  cpu: { type: "string" },
  cpulimit: { type: "number", minimum: 0, maximum: 128 },
  affinity: { type: "string", pattern: /^\d+(-\d+)?(,\d+(-\d+)?)*$/ },
  tags: {
    type: "string",
    format: (v) => {
      const r = normaliseTags(v);
      return "bad" in r ? `invalid format - invalid tag '${r.bad}'` : undefined;
    },
  },
  agent: {
    type: "string",
    format: propsFormat(
      ["enabled", "fstrim_cloned_disks", "type", "freeze-fs-on-backup", "guest-fsfreeze"],
      "agent",
      "enabled",
      (k, v) =>
        k === "enabled" && !/^(0|1|true|false|yes|no|on|off)$/.test(v)
          ? `type check ('boolean') failed - got '${v}'`
          : undefined,
    ),
  },
  scsihw: {
    type: "string",
    enum: ["lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi"],
  },
  ostype: {
    type: "string",
    enum: [
      "other",
      "wxp",
      "w2k",
      "w2k3",
      "w2k8",
      "wvista",
      "win7",
      "win8",
      "win10",
      "win11",
      "l24",
      "l26",
      "solaris",
    ],
  },
  bios: { type: "string", enum: ["seabios", "ovmf"] },
  boot: { type: "string" },
  bootdisk: { type: "string", pattern: DRIVE_KEY },
  machine: { type: "string" },
  vga: { type: "string" },
  ciuser: { type: "string" },
  cipassword: { type: "string" },
  citype: { type: "string", enum: ["configdrive2", "nocloud", "opennebula"] },
  cicustom: {
    type: "string",
    format: propsFormat(["user", "network", "meta", "vendor"], "cicustom"),
  },
  sshkeys: { type: "string", format: sshKeysFormat },
  nameserver: { type: "string" },
  searchdomain: { type: "string" },
  smbios1: { type: "string" },
  vmgenid: { type: "string" },
  meta: { type: "string" },
  hotplug: { type: "string" },
  startup: { type: "string" },
  hookscript: { type: "string" },
  lock: {
    type: "string",
    enum: [
      "backup",
      "clone",
      "create",
      "migrate",
      "rollback",
      "snapshot",
      "snapshot-delete",
      "suspending",
      "suspended",
    ],
  },
  vmstatestorage: { type: "string" },
  watchdog: { type: "string" },
  rng0: { type: "string" },
  audio0: { type: "string" },
  keyboard: { type: "string" },
  migrate_downtime: { type: "number", minimum: 0 },
  vmstate: { type: "string" },
};

/** The schema of one VM option, or undefined when the key is not a VM option. */
export function optionSpec(key: string): ParamSpec | undefined {
  if (NAMED[key]) return NAMED[key];
  if (INTEGER_KEYS.has(key))
    return { type: "integer", minimum: key === "cores" || key === "sockets" ? 1 : 0 };
  if (BOOLEAN_KEYS.has(key)) return { type: "boolean" };
  if (NET_KEY.test(key)) {
    return {
      type: "string",
      format: (v) => {
        const nic = parseNic(v, key);
        return typeof nic === "string" ? nic : undefined;
      },
    };
  }
  if (DRIVE_KEY.test(key) || UNUSED_KEY.test(key)) return { type: "string", format: driveFormat(key) };
  if (/^ipconfig(\d|[12]\d|3[01])$/.test(key)) {
    return { type: "string", format: propsFormat(["ip", "gw", "ip6", "gw6"], key) };
  }
  if (/^(serial[0-3]|usb\d+|hostpci\d+|parallel[0-2]|virtiofs\d+)$/.test(key)) return { type: "string" };
  return undefined;
}

const CPU_KEYS = new Set(["cores", "sockets", "cpu", "cpulimit", "cpuunits", "vcpus", "numa", "affinity"]);
const MEMORY_KEYS = new Set(["memory", "balloon", "shares"]);
const CLOUDINIT_KEYS = new Set([
  "ciuser",
  "cipassword",
  "citype",
  "cicustom",
  "sshkeys",
  "nameserver",
  "searchdomain",
  "ciupgrade",
]);
const HW_KEYS = new Set([
  "scsihw",
  "machine",
  "bios",
  "vga",
  "tablet",
  "keyboard",
  "kvm",
  "acpi",
  "smbios1",
  "watchdog",
  "rng0",
  "audio0",
]);

/** The privilege `PUT config` checks for a key (`check_vm_modify_config_perm`). */
export function optionPrivilege(key: string): string {
  if (CPU_KEYS.has(key)) return "VM.Config.CPU";
  if (MEMORY_KEYS.has(key)) return "VM.Config.Memory";
  if (NET_KEY.test(key)) return "VM.Config.Network";
  if (DRIVE_KEY.test(key) || UNUSED_KEY.test(key)) return "VM.Config.Disk";
  if (CLOUDINIT_KEYS.has(key) || /^ipconfig\d+$/.test(key)) return "VM.Config.Cloudinit";
  if (HW_KEYS.has(key) || /^(serial|usb|hostpci|parallel)\d+$/.test(key)) return "VM.Config.HWType";
  return "VM.Config.Options";
}
