/**
 * Reading and writing the Proxmox VM config values a sandbox cares about (disks, guest agent, tags,
 * MAC). Pure functions over `qm config` properties, so provisioning, validation, revert and snapshots
 * read them the same way.
 */
import type { VmConfig } from "../../proxmox/types.js";

/** Tag put on every VM agentlab creates, so inventory can tell ours from everything else. */
export const MANAGED_TAG = "agentlab";

/** The disk the VM boots from: bootdisk, else the first disk of `boot: order=`, else scsi0/virtio0/... */
export function rootDisk(config: VmConfig): string | undefined {
  const disks = ["scsi0", "virtio0", "sata0", "ide0"];
  const bootdisk = config.bootdisk;
  if (typeof bootdisk === "string" && config[bootdisk] !== undefined) return bootdisk;
  const order = typeof config.boot === "string" ? /order=([^,]+)/.exec(config.boot)?.[1] : undefined;
  for (const device of order?.split(";") ?? [])
    if (config[device] !== undefined && /^(scsi|virtio|sata|ide)\d+$/.test(device)) return device;
  return disks.find((disk) => config[disk] !== undefined);
}

/** `size=20G` of a disk property string, in GiB. */
export function diskSizeGb(value: string | number | undefined): number | undefined {
  const match = typeof value === "string" ? /(?:^|,)size=(\d+(?:\.\d+)?)([KMGT])?/.exec(value) : null;
  if (!match) return undefined;
  const factor: Record<string, number> = { K: 1 / 1024 / 1024, M: 1 / 1024, G: 1, T: 1024 };
  return Number(match[1]) * (factor[match[2] ?? "G"] ?? 1);
}

/**
 * Disks of a VM other than its root disk (cd-roms and the cloud-init drive aside): data volumes such
 * as a future /work workspace. A Proxmox snapshot rollback covers every disk in the snapshot, so
 * revert refuses while any is attached rather than roll one back.
 */
export function nonRootDisks(config: VmConfig): string[] {
  const root = rootDisk(config);
  return Object.keys(config)
    .filter((key) => /^(scsi|virtio|sata|ide)\d+$/.test(key) && key !== root)
    .filter((key) => {
      const value = String(config[key]);
      return !/(^|,)media=cdrom(,|$)/.test(value) && !/cloudinit/.test(value);
    })
    .sort();
}

/** Whether a VM config is a template's (`template: 1`), the only reliable source for it. */
export function isTemplateConfig(config: VmConfig): boolean {
  return Number(config.template) === 1;
}

/** Whether a config's `agent` property turns the guest agent on (`1`, `enabled=1`, `1,fstrim_...`). */
export function agentEnabled(value: string | number | undefined): boolean {
  if (value === undefined) return false;
  for (const part of String(value).split(",")) {
    const flag = /^(?:enabled=)?([01])$/.exec(part.trim());
    if (flag) return flag[1] === "1";
  }
  return false;
}

/** A sandbox's own tags as it keeps them: lower-cased, each once, in the order given. */
export function sandboxTags(tags: readonly string[]): string[] {
  return [...new Set(tags.map((t) => t.toLowerCase()))];
}

/** The Proxmox tags of a sandbox's VM: the managed tag first, then the sandbox's own. */
export function vmTags(tags: readonly string[]): string {
  return [...new Set([MANAGED_TAG, ...tags])].join(";");
}

/** The MAC Proxmox gave net0 on clone, kept when the daemon rewrites net0. */
export function netMac(value: string | number | undefined): string | undefined {
  return typeof value === "string"
    ? /(?:^|,)[a-z0-9]+=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})/.exec(value)?.[1]
    : undefined;
}
