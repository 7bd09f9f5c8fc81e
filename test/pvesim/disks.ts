/** VM disks on top of volumes: allocation from `storage:size`, unused slots, ownership, freeing. */
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import {
  allocVolume,
  findVolume,
  freeVolume,
  getStorage,
  parseVolname,
  setActive,
  splitVolid,
} from "./storage.js";
import type { VmRec, VolumeRec } from "./types.js";
import {
  type Drive,
  formatSize,
  isCdrom,
  isCloudinitVolume,
  mergedConfig,
  parseDrive,
  printDrive,
  propsGet,
  setDriveProp,
  UNUSED_KEY,
  volumeDrives,
} from "./vmconfig.js";

export const CLOUDINIT_SIZE = 4 * 1024 * 1024;

/** Whether the volume's name says it belongs to this VM (only owned volumes are ever freed). */
export function ownsVolume(ctx: Ctx, vmid: number, volid: string): boolean {
  try {
    const { storage, volname } = splitVolid(volid);
    const s = ctx.state.storages.find((x) => x.id === storage);
    return s ? parseVolname(s, volname).vmid === vmid : false;
  } catch {
    return false;
  }
}

export function addUnused(vm: VmRec, volid: string): string {
  for (let i = 0; i < 256; i++) {
    const key = `unused${i}`;
    if (vm.config[key] === undefined) {
      vm.config[key] = volid;
      return key;
    }
  }
  throw fail("too many unused volumes");
}

/** Frees a volume if the VM owns it and it still exists; errors become warnings like in PVE. */
export function tryFree(ctx: Ctx, vm: VmRec, volid: string, warnings: string[]): void {
  if (!ownsVolume(ctx, vm.vmid, volid)) return;
  if (!findVolume(ctx.state, vm.node, volid)) return;
  try {
    freeVolume(ctx, vm.node, volid);
  } catch (err) {
    warnings.push((err as Error).message);
  }
}

/** `delete=<disk>`: cloud-init drives are freed, owned disks become unusedN (or freed with force). */
export function detachDrive(ctx: Ctx, vm: VmRec, key: string, force: boolean, warnings: string[]): void {
  const value = vm.config[key];
  if (value === undefined) return;
  delete vm.config[key];
  const drive = parseDrive(value);
  if (UNUSED_KEY.test(key)) {
    tryFree(ctx, vm, drive.file, warnings);
    return;
  }
  if (isCloudinitVolume(drive.file)) {
    tryFree(ctx, vm, drive.file, warnings);
    return;
  }
  if (isCdrom(drive) || drive.file === "none" || !drive.file.includes(":")) return;
  if (force) tryFree(ctx, vm, drive.file, warnings);
  else if (ownsVolume(ctx, vm.vmid, drive.file)) addUnused(vm, drive.file);
}

/**
 * Turns a drive value from a config update into what gets stored: `local-zfs:10` allocates a 10 GiB
 * disk, `local-zfs:cloudinit` the cloud-init drive, an existing volid is attached with its size.
 */
export function materialiseDrive(ctx: Ctx, vm: VmRec, key: string, value: string): string {
  const drive: Drive = parseDrive(value);
  const file = drive.file;
  if (file === "none" || file === "cdrom" || file.startsWith("/")) return printDrive(drive);
  const m = /^([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?|cloudinit)$/i.exec(file);
  if (m) {
    const storage = getStorage(ctx.state, m[1]!);
    if (m[2] === "cloudinit") {
      const name = `vm-${vm.vmid}-cloudinit${storage.type === "dir" ? ".qcow2" : ""}`;
      const rec = allocVolume(ctx, {
        node: vm.node,
        storage: storage.id,
        vmid: vm.vmid,
        name,
        size: CLOUDINIT_SIZE,
        format: storage.type === "dir" ? "qcow2" : "raw",
      });
      drive.file = `${rec.storage}:${rec.volname}`;
      setDriveProp(drive, "media", "cdrom");
      return printDrive(drive);
    }
    const importFrom = propsGet(drive.pairs, "import-from");
    let size = Math.round(Number(m[2]) * 1024 ** 3);
    let copyFrom: string | undefined;
    if (importFrom) {
      copyFrom = importFrom.startsWith("/") ? importFrom : undefined;
      const src = copyFrom ? undefined : findVolume(ctx.state, vm.node, importFrom);
      if (!copyFrom && !src) throw fail(`volume '${importFrom}' does not exist`);
      if (src) size = src.size;
      setDriveProp(drive, "import-from", undefined);
    }
    const format = propsGet(drive.pairs, "format") ?? (storage.type === "dir" ? "qcow2" : "raw");
    const rec = allocVolume(ctx, {
      node: vm.node,
      storage: storage.id,
      vmid: vm.vmid,
      size,
      format,
      ...(copyFrom ? { copyFrom } : {}),
    });
    setDriveProp(drive, "format", undefined);
    drive.file = `${rec.storage}:${rec.volname}`;
    setDriveProp(drive, "size", formatSize(rec.size));
    return printDrive(drive);
  }
  if (isCdrom(drive)) return printDrive(drive);
  const rec = findVolume(ctx.state, vm.node, file);
  if (!rec) {
    getStorage(ctx.state, splitVolid(file).storage);
    throw fail(`volume '${file}' does not exist`);
  }
  if (!UNUSED_KEY.test(key)) setDriveProp(drive, "size", formatSize(rec.size));
  return printDrive(drive);
}

/** Every volume a VM references (config, pending, snapshots), owned or not. */
export function referencedVolumes(ctx: Ctx, vm: VmRec): VolumeRec[] {
  const seen = new Map<string, VolumeRec>();
  const configs = [vm.config, vm.pending, ...Object.values(vm.snapshots)];
  for (const config of configs) {
    for (const { drive } of volumeDrives(config)) {
      const rec = findVolume(ctx.state, vm.node, drive.file);
      if (rec) seen.set(drive.file, rec);
    }
  }
  return [...seen.values()];
}

/** Activates the LVs of a VM's disks, as PVE does before it starts QEMU (`lvchange -ay -K`). */
export function activateVolumes(ctx: Ctx, vm: VmRec): void {
  for (const { drive } of volumeDrives(mergedConfig(vm))) {
    const rec = findVolume(ctx.state, vm.node, drive.file);
    if (rec) setActive(ctx, rec, true);
  }
}
