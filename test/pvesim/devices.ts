/**
 * The host's view of block volumes: the device path real Proxmox prints for a volume
 * (`/dev/<vg>/<lv>` for LVM, `/dev/zvol/<pool>/<name>` for ZFS) lives under DIR/dev as a symlink to
 * the volume's sparse file. The link exists only while the device would: always for a zvol, only
 * while the LV is active for LVM. So a daemon that forgets `lvchange -ay` finds no device, as it
 * would after a reboot of a PVE 9 host.
 *
 * Deliberately free of storage.ts imports: storage.ts calls in here whenever a volume appears,
 * disappears, is renamed or changes activation.
 */
import { lstatSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { devRoot } from "./paths.js";
import type { StorageRec, VolumeRec } from "./types.js";

export const DEFAULT_ZFS_POOL = "rpool/data";
export const DEFAULT_VG = "pve";
export const DEFAULT_THINPOOL = "data";

export function zfsPool(storage: StorageRec): string {
  return storage.pool ?? DEFAULT_ZFS_POOL;
}

export function vgName(storage: StorageRec): string {
  return storage.vgname ?? DEFAULT_VG;
}

export function isLvm(storage: StorageRec): boolean {
  return storage.type === "lvmthin" || storage.type === "lvm";
}

/** The device path of a volume (its own name, the last volname part), or undefined for file storages. */
export function devicePath(dir: string, storage: StorageRec, name: string): string | undefined {
  if (isLvm(storage)) return join(devRoot(dir), vgName(storage), name);
  if (storage.type === "zfspool") return join(devRoot(dir), "zvol", ...zfsPool(storage).split("/"), name);
  return undefined;
}

/** Whether the device node of a volume exists: zvols always, LVs while active. */
export function deviceShown(storage: StorageRec, rec: VolumeRec): boolean {
  if (storage.type === "zfspool") return true;
  if (isLvm(storage)) return rec.active !== false;
  return false;
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Makes the device link agree with the volume's state (`file` = where the bytes are). */
export function syncDevice(
  dir: string,
  storage: StorageRec,
  name: string,
  file: string,
  shown: boolean,
): void {
  const path = devicePath(dir, storage, name);
  if (!path) return;
  if (exists(path)) rmSync(path, { force: true });
  if (!shown) return;
  mkdirSync(dirname(path), { recursive: true });
  // Absolute, so the link works whatever directory DIR was given relative to.
  symlinkSync(resolve(file), path);
}

export function removeDevice(dir: string, storage: StorageRec, name: string): void {
  const path = devicePath(dir, storage, name);
  if (path && exists(path)) rmSync(path, { force: true });
}
