/**
 * Storages and volumes, with the naming rules of each plugin type and real sparse files behind every
 * volume so that `pvesm path` gives something e2fsck/mkfs can open.
 */
import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
} from "node:fs";
import { dirname, join } from "node:path";
import type { Ctx } from "./context.js";
import { devicePath, deviceShown, isLvm, removeDevice, syncDevice, vgName, zfsPool } from "./devices.js";
import { CommandError, fail, type PveError, paramError } from "./errors.js";
import { guestWorkDir, snapshotRoot, storageRoot } from "./paths.js";
import {
  copyQcow2,
  createOverlay,
  internalSnapshot,
  isQcow2,
  listInternalSnapshots,
  resizeQcow2,
} from "./qcow2.js";
import type { SimState, StorageRec, VolumeRec } from "./types.js";

export function findStorage(state: SimState, id: string): StorageRec | undefined {
  return state.storages.find((s) => s.id === id);
}

export function getStorage(state: SimState, id: string): StorageRec {
  const s = findStorage(state, id);
  if (!s) throw fail(`storage '${id}' does not exist`);
  return s;
}

export function splitVolid(volid: string): { storage: string; volname: string } {
  const m = /^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$/i.exec(volid);
  if (!m) throw fail(`unable to parse volume ID '${volid}'`);
  return { storage: m[1]!, volname: m[2]! };
}

export interface VolName {
  vmid: number;
  /** The volume's own name (last path part), e.g. `vm-101-disk-0` or `vm-101-disk-0.qcow2`. */
  name: string;
  /** For linked clones: the base volume's volname. */
  base?: string;
  format: VolumeRec["format"];
  content: VolumeRec["content"];
  isBase: boolean;
}

const DIR_IMAGE = /^((base|vm)-(\d+)-\S+)\.(raw|qcow2|vmdk)$/;

/** Parses a volname per storage type with each plugin's error text. */
export function parseVolname(storage: StorageRec, volname: string): VolName {
  if (storage.type === "dir") {
    let m = /^snippets\/([^/]+)$/.exec(volname);
    if (m) return { vmid: 0, name: m[1]!, format: "raw", content: "snippets", isBase: false };
    m = /^iso\/([^/]+\.(iso|img))$/i.exec(volname);
    if (m) return { vmid: 0, name: m[1]!, format: "raw", content: "iso", isBase: false };
    m = /^(\d+)\/([^/]+)\/(\d+)\/([^/]+)$/.exec(volname);
    if (m) {
      const own = DIR_IMAGE.exec(m[4]!);
      if (own && Number(own[3]) === Number(m[3])) {
        return {
          vmid: Number(m[3]),
          name: m[4]!,
          base: `${m[1]}/${m[2]}`,
          format: own[4] as VolName["format"],
          content: "images",
          isBase: false,
        };
      }
    }
    m = /^(\d+)\/([^/]+)$/.exec(volname);
    if (m) {
      const own = DIR_IMAGE.exec(m[2]!);
      if (own && Number(own[3]) === Number(m[1])) {
        return {
          vmid: Number(m[1]),
          name: m[2]!,
          format: own[4] as VolName["format"],
          content: "images",
          isBase: own[2] === "base",
        };
      }
    }
    throw fail(`unable to parse directory volume name '${volname}'`);
  }
  if (storage.type === "zfspool") {
    const m = /^(((base)-(\d+)-[^/\s]+)\/)?((base|vm)-(\d+)-[^/\s]+)$/.exec(volname);
    if (!m) throw fail(`unable to parse zfs volume name '${volname}'`);
    return {
      vmid: Number(m[7]),
      name: m[5]!,
      ...(m[2] ? { base: m[2] } : {}),
      format: "raw",
      content: "images",
      isBase: m[6] === "base",
    };
  }
  const m = /^((vm|base)-(\d+)-\S+)$/.exec(volname);
  if (!m || volname.includes("/")) throw fail(`unable to parse lvm volume name '${volname}'`);
  return { vmid: Number(m[3]), name: m[1]!, format: "raw", content: "images", isBase: m[2] === "base" };
}

/** Where the simulator keeps the bytes of a volume. */
export function volumeFile(dir: string, storage: StorageRec, volname: string): string {
  const root = storageRoot(dir, storage.id);
  const v = parseVolname(storage, volname);
  if (storage.type === "dir") {
    if (v.content === "snippets") return join(root, "snippets", v.name);
    if (v.content === "iso") return join(root, "template", "iso", v.name);
    return join(root, "images", String(v.vmid), v.name);
  }
  return join(root, v.name);
}

/**
 * The path `pvesm path` and the content API print: the device node for LVM and ZFS volumes (which
 * exists only while the device would, see devices.ts), the file itself on dir storages.
 */
export function volumePath(dir: string, storage: StorageRec, volname: string): string {
  const v = parseVolname(storage, volname);
  if (v.content !== "images") return volumeFile(dir, storage, volname);
  return devicePath(dir, storage, v.name) ?? volumeFile(dir, storage, volname);
}

/** Re-creates or removes the device link of a volume after its state changed. */
export function refreshDevice(ctx: Ctx, rec: VolumeRec): void {
  const storage = getStorage(ctx.state, rec.storage);
  const name = parseVolname(storage, rec.volname).name;
  syncDevice(ctx.dir, storage, name, volumeFile(ctx.dir, storage, rec.volname), deviceShown(storage, rec));
}

/** LV activation (`lvchange -ay/-an`, VM start, host reboot); zvols are always there. */
export function setActive(ctx: Ctx, rec: VolumeRec, active: boolean): void {
  const storage = getStorage(ctx.state, rec.storage);
  if (!isLvm(storage)) return;
  rec.active = active;
  refreshDevice(ctx, rec);
}

const volKey = (node: string, storage: string, volname: string): string => `${node}/${storage}:${volname}`;

export function findVolume(state: SimState, node: string, volid: string): VolumeRec | undefined {
  const { storage, volname } = splitVolid(volid);
  return state.volumes[volKey(node, storage, volname)];
}

export function volidOf(v: VolumeRec): string {
  return `${v.storage}:${v.volname}`;
}

/** The volume id for a VM-owned volume name on a storage (dir volumes live under `<vmid>/`). */
export function volnameFor(storage: StorageRec, vmid: number, name: string, base?: string): string {
  if (storage.type === "dir") return base ? `${base}/${vmid}/${name}` : `${vmid}/${name}`;
  if (storage.type === "zfspool" && base) return `${base}/${name}`;
  return name;
}

function diskNameTaken(state: SimState, node: string, storage: StorageRec, name: string): boolean {
  const stem = name.replace(/\.(raw|qcow2|vmdk)$/, "");
  return Object.values(state.volumes).some((v) => {
    if (v.node !== node || v.storage !== storage.id) return false;
    const own = parseVolname(storage, v.volname).name.replace(/\.(raw|qcow2|vmdk)$/, "");
    // A base volume blocks the vm- name with the same number and the other way round.
    return own === stem || own.replace(/^base-/, "vm-") === stem.replace(/^base-/, "vm-");
  });
}

/** The next free `vm-<vmid>-disk-<n>` (with extension on dir storages). */
export function freeDiskName(
  state: SimState,
  node: string,
  storage: StorageRec,
  vmid: number,
  format: string,
): string {
  for (let n = 0; n < 10_000; n++) {
    const name = `vm-${vmid}-disk-${n}${storage.type === "dir" ? `.${format}` : ""}`;
    if (!diskNameTaken(state, node, storage, name)) return name;
  }
  throw fail(`unable to allocate an image name for VM ${vmid} in storage '${storage.id}'`);
}

function ensureFile(path: string, size: number): void {
  mkdirSync(dirname(path), { recursive: true });
  closeSync(openSync(path, "a"));
  truncateSync(path, size);
}

function copySparse(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true });
  // A qcow2 overlay (guests=qemu) is copied flattened, so the copy does not depend on its base.
  if (isQcow2(from)) {
    copyQcow2(from, to);
    return;
  }
  try {
    execFileSync("cp", ["--sparse=always", "--reflink=auto", from, to], { stdio: "ignore" });
  } catch {
    // Without the source bytes (or cp) the copy is at least the right size.
    ensureFile(to, existsSync(from) ? statSync(from).size : 0);
  }
}

function alreadyExists(dir: string, storage: StorageRec, volname: string): PveError {
  const name = parseVolname(storage, volname).name;
  if (storage.type === "dir") return fail(`disk image '${volumeFile(dir, storage, volname)}' already exists`);
  if (storage.type === "zfspool")
    return fail(`zfs error: cannot create '${zfsPool(storage)}/${name}': dataset already exists`);
  const vg = vgName(storage);
  return fail(
    `lvcreate '${vg}/${name}' error:   Logical Volume "${name}" already exists in volume group "${vg}"`,
  );
}

export interface AllocRequest {
  node: string;
  storage: string;
  vmid: number;
  /** Explicit name; omitted = next free `vm-<vmid>-disk-<n>`. */
  name?: string;
  size: number;
  format?: string;
  /** Cloud-init drives and the like are named by the caller and bypass the disk-name rule. */
  base?: string;
  /** Source file to copy bytes from (clones). */
  copyFrom?: string;
  /** guests=qemu linked clones: the new file is a qcow2 overlay backed by this file instead of a copy. */
  overlayOf?: string;
}

/** Allocates a volume and its file, enforcing the plugin's name and format rules. */
export function allocVolume(ctx: Ctx, req: AllocRequest): VolumeRec {
  const { state, dir } = ctx;
  const storage = getStorage(state, req.storage);
  if (!storage.enabled) throw fail(`storage '${storage.id}' is disabled`);
  if (!storage.content.includes("images")) {
    throw fail(`storage '${storage.id}' does not support content-type 'images'`);
  }
  let format =
    req.format ?? (storage.type === "dir" && req.name ? req.name.split(".").pop() : undefined) ?? "raw";
  if (storage.type !== "dir" && format !== "raw") throw fail(`unsupported format '${format}'`);
  if (!["raw", "qcow2", "vmdk"].includes(format)) throw fail(`unsupported format '${format}'`);
  let name = req.name;
  if (name === undefined || name === "") {
    name = freeDiskName(state, req.node, storage, req.vmid, format);
  } else {
    if (!new RegExp(`^(vm|base)-${req.vmid}-`).test(name)) {
      throw fail(`illegal name '${name}' - should be 'vm-${req.vmid}-*'`);
    }
    if (storage.type === "dir") {
      const ext = /\.(raw|qcow2|vmdk|subvol)$/.exec(name);
      if (!ext) throw fail(`unable to parse volume filename '${name}'`);
      if (req.format && ext[1] !== req.format) {
        throw fail(`illegal name '${name}' - wrong extension for format ('${ext[1]} != '${req.format}')`);
      }
      format = ext[1]!;
    } else if (!/^[^/\s]+$/.test(name)) {
      throw fail(`illegal name '${name}' - should be 'vm-${req.vmid}-*'`);
    }
  }
  const volname = volnameFor(storage, req.vmid, name, req.base);
  if (diskNameTaken(state, req.node, storage, name)) throw alreadyExists(dir, storage, volname);
  const file = volumeFile(dir, storage, volname);
  if (req.overlayOf) {
    createOverlay(req.overlayOf, file, req.size);
  } else if (req.copyFrom) {
    copySparse(req.copyFrom, file);
    if (isQcow2(file)) resizeQcow2(file, req.size);
    else if (statSync(file).size < req.size) truncateSync(file, req.size);
  } else {
    ensureFile(file, req.size);
  }
  const rec: VolumeRec = {
    storage: storage.id,
    node: req.node,
    volname,
    vmid: req.vmid,
    format: format as VolumeRec["format"],
    content: "images",
    size: req.size,
    ctime: Math.floor(ctx.now / 1000),
    ...(req.base ? { base: req.base } : {}),
    snapshots: [],
    // New LVs are created active (`lvcreate -aly`); zvols have no such state.
    ...(isLvm(storage) ? { active: true } : {}),
  };
  state.volumes[volKey(req.node, storage.id, volname)] = rec;
  refreshDevice(ctx, rec);
  return rec;
}

/**
 * The ZFS origin of a volume as `<name>@<snap>`: set by `zfs clone`, or `<base>@__base__` for the
 * linked clones PVE makes of template volumes.
 */
export function zfsOrigin(state: SimState, rec: VolumeRec): string | undefined {
  const storage = findStorage(state, rec.storage);
  if (storage?.type !== "zfspool") return undefined;
  if (rec.origin) return rec.origin;
  return rec.base ? `${parseVolname(storage, rec.base).name}@__base__` : undefined;
}

/** The volumes cloned from a snapshot of `rec` (from any of its snapshots when `snap` is omitted). */
export function zfsDependents(state: SimState, rec: VolumeRec, snap?: string): VolumeRec[] {
  const storage = findStorage(state, rec.storage);
  if (storage?.type !== "zfspool") return [];
  const name = parseVolname(storage, rec.volname).name;
  return Object.values(state.volumes).filter((v) => {
    if (v.node !== rec.node || v.storage !== rec.storage) return false;
    const origin = zfsOrigin(state, v);
    if (origin === undefined) return false;
    return snap === undefined ? origin.startsWith(`${name}@`) : origin === `${name}@${snap}`;
  });
}

/**
 * What `zfs destroy` prints when clones depend on the target, and how PVE's run_command reports it:
 * the error is the last stderr line (a dataset name), the lines before it went to the task log.
 */
export function dependentClonesError(
  storage: StorageRec,
  target: string,
  dependents: VolumeRec[],
): CommandError {
  const pool = zfsPool(storage);
  const kind = target.includes("@") ? "snapshot" : "volume";
  const lines = [
    `cannot destroy '${pool}/${target}': ${kind} has dependent clones`,
    "use '-R' to destroy the following datasets:",
    ...dependents.map((d) => `${pool}/${parseVolname(storage, d.volname).name}`),
  ];
  return new CommandError("zfs", lines);
}

export function linkedClonesOf(state: SimState, base: VolumeRec): VolumeRec[] {
  return Object.values(state.volumes).filter(
    (v) => v.node === base.node && v.storage === base.storage && v.base === base.volname,
  );
}

/** Frees a volume: removes its file, its snapshot copies and its record. */
export function freeVolume(ctx: Ctx, node: string, volid: string): void {
  const { state, dir } = ctx;
  const { storage: sid, volname } = splitVolid(volid);
  const storage = getStorage(state, sid);
  const v = parseVolname(storage, volname);
  const rec = state.volumes[volKey(node, sid, volname)];
  if (!rec) {
    if (storage.type === "zfspool")
      throw fail(`zfs error: cannot open '${zfsPool(storage)}/${v.name}': dataset does not exist`);
    if (isLvm(storage)) {
      const vg = vgName(storage);
      throw fail(`lvremove '${vg}/${v.name}' error:   Failed to find logical volume "${vg}/${v.name}"`);
    }
    throw fail(`volume '${volid}' does not exist`);
  }
  if (v.isBase && linkedClonesOf(state, rec).length > 0) {
    throw fail(`base volume '${volid}' is still in use by linked cloned`);
  }
  // `zfs destroy -r` takes the volume's snapshots along, but not clones made from them.
  const dependents = zfsDependents(state, rec);
  if (dependents.length > 0) throw dependentClonesError(storage, v.name, dependents);
  removeDevice(dir, storage, v.name);
  rmSync(volumeFile(dir, storage, volname), { force: true });
  for (const snap of rec.snapshots) rmSync(snapshotFile(dir, storage, rec, snap), { force: true });
  // The files a job guest kept on it as /work (guest-runner.ts) go with the disk.
  rmSync(guestWorkDir(dir, node, volid), { recursive: true, force: true });
  delete state.volumes[volKey(node, sid, volname)];
}

/** Renames `vm-N-disk-M` to `base-N-disk-M` when a VM becomes a template. */
export function convertToBase(ctx: Ctx, rec: VolumeRec): VolumeRec {
  const storage = getStorage(ctx.state, rec.storage);
  const v = parseVolname(storage, rec.volname);
  if (v.isBase) return rec;
  const newName = v.name.replace(/^vm-/, "base-");
  const newVolname = volnameFor(storage, rec.vmid, newName);
  const from = volumeFile(ctx.dir, storage, rec.volname);
  const to = volumeFile(ctx.dir, storage, newVolname);
  if (existsSync(from)) renameSync(from, to);
  removeDevice(ctx.dir, storage, v.name);
  delete ctx.state.volumes[volKey(rec.node, rec.storage, rec.volname)];
  const updated: VolumeRec = { ...rec, volname: newVolname };
  // LVM-thin base volumes are made inactive, read-only and activation-skipped (`lvchange -an -pr -ky`).
  if (isLvm(storage)) {
    updated.active = false;
    updated.activationSkip = true;
  }
  ctx.state.volumes[volKey(rec.node, rec.storage, newVolname)] = updated;
  refreshDevice(ctx, updated);
  return updated;
}

export function resizeVolume(ctx: Ctx, rec: VolumeRec, size: number): void {
  const storage = getStorage(ctx.state, rec.storage);
  const file = volumeFile(ctx.dir, storage, rec.volname);
  if (isQcow2(file)) resizeQcow2(file, size);
  else ensureFile(file, size);
  rec.size = size;
}

function snapshotFile(dir: string, storage: StorageRec, rec: VolumeRec, snap: string): string {
  return join(snapshotRoot(dir, storage.id), `${rec.volname.replaceAll("/", "__")}@${snap}`);
}

/**
 * The file holding the bytes of a volume as they were at a storage snapshot. A qcow2 volume keeps its
 * snapshots inside (internal snapshots): for a reader that needs the bytes (`materialise`, a clone from
 * the snapshot) they are copied out once, flattened, into the place a copy would have.
 */
export function volumeSnapshotFile(ctx: Ctx, rec: VolumeRec, snap: string, materialise = false): string {
  const storage = getStorage(ctx.state, rec.storage);
  const copy = snapshotFile(ctx.dir, storage, rec, snap);
  const file = volumeFile(ctx.dir, storage, rec.volname);
  if (materialise && !existsSync(copy) && isQcow2(file) && listInternalSnapshots(file).includes(snap)) {
    copyQcow2(file, copy, snap);
  }
  return copy;
}

export type VolumeFeature = "snapshot" | "clone" | "copy" | "template";

/**
 * Each plugin's `volume_has_feature` table. The key is `snap` when a snapshot is named, else `base`
 * or `current`: so `copy` with a snapshot (a full clone from a snapshot) works on lvmthin and qcow2
 * on dir, not on zfspool; `clone` (linked) needs a base volume, or a snapshot on lvmthin.
 */
export function volumeHasFeature(
  storage: StorageRec,
  rec: VolumeRec,
  feature: VolumeFeature,
  snapname?: string,
): boolean {
  const info = parseVolname(storage, rec.volname);
  const key = snapname !== undefined ? "snap" : info.isBase ? "base" : "current";
  const fmt = rec.format;
  const table: Record<StorageRec["type"], Record<VolumeFeature, Partial<Record<string, boolean>>>> = {
    zfspool: {
      snapshot: { current: true, snap: true },
      clone: { base: true },
      template: { current: true },
      copy: { base: true, current: true },
    },
    lvmthin: {
      snapshot: { current: true },
      clone: { base: true, snap: true },
      template: { current: true },
      copy: { base: true, current: true, snap: true },
    },
    lvm: {
      snapshot: {},
      clone: {},
      template: {},
      copy: { base: true, current: true },
    },
    dir: {
      snapshot: { current: fmt === "qcow2", snap: fmt === "qcow2" },
      clone: { base: true },
      template: { current: true },
      copy: { base: true, current: true, snap: fmt === "qcow2" },
    },
  };
  return table[storage.type][feature][key] === true;
}

/** Whether the storage can snapshot this volume (zfs, lvmthin; qcow2 only on dir; never thick LVM). */
export function canSnapshot(storage: StorageRec, rec: VolumeRec): boolean {
  return volumeHasFeature(storage, rec, "snapshot");
}

/**
 * A storage snapshot of a volume that no running QEMU has open (snapshots.ts asks QEMU otherwise): a
 * sparse copy of the bytes, or for a qcow2 file an internal snapshot (`qemu-img snapshot -c`).
 */
export function snapshotVolume(ctx: Ctx, rec: VolumeRec, snap: string): void {
  const storage = getStorage(ctx.state, rec.storage);
  const file = volumeFile(ctx.dir, storage, rec.volname);
  if (isQcow2(file)) internalSnapshot(file, "-c", snap);
  else copySparse(file, snapshotFile(ctx.dir, storage, rec, snap));
  rec.snapshots.push(snap);
}

/** ZFS can only roll back to the newest snapshot; returns the error text or undefined. */
export function rollbackBlocker(ctx: Ctx, rec: VolumeRec, snap: string): string | undefined {
  const storage = getStorage(ctx.state, rec.storage);
  if (
    storage.type === "zfspool" &&
    rec.snapshots.length > 0 &&
    rec.snapshots[rec.snapshots.length - 1] !== snap
  ) {
    return `can't rollback, '${snap}' is not most recent snapshot on '${volidOf(rec)}'`;
  }
  return undefined;
}

export function rollbackVolume(ctx: Ctx, rec: VolumeRec, snap: string): void {
  const storage = getStorage(ctx.state, rec.storage);
  const copy = snapshotFile(ctx.dir, storage, rec, snap);
  const file = volumeFile(ctx.dir, storage, rec.volname);
  if (isQcow2(file) && listInternalSnapshots(file).includes(snap)) {
    internalSnapshot(file, "-a", snap);
  } else if (existsSync(copy)) {
    rmSync(file, { force: true });
    copySparse(copy, file);
    rec.size = statSync(file).size;
  }
  // LVM-thin rolls back by `lvremove` + `lvcreate -kn -s`: the new LV is active, without skip flag.
  if (isLvm(storage)) {
    rec.active = true;
    rec.activationSkip = false;
  }
  refreshDevice(ctx, rec);
}

/** Removes a storage snapshot; on ZFS it fails while clones were made from it (`zfs destroy` says so). */
export function deleteVolumeSnapshot(
  ctx: Ctx,
  rec: VolumeRec,
  snap: string,
  /** The running QEMU already removed the internal snapshot (QMP). */
  opts: { qemuDeleted?: boolean } = {},
): void {
  const storage = getStorage(ctx.state, rec.storage);
  const dependents = zfsDependents(ctx.state, rec, snap);
  if (dependents.length > 0) {
    throw dependentClonesError(storage, `${parseVolname(storage, rec.volname).name}@${snap}`, dependents);
  }
  const file = volumeFile(ctx.dir, storage, rec.volname);
  if (!opts.qemuDeleted && isQcow2(file) && listInternalSnapshots(file).includes(snap)) {
    internalSnapshot(file, "-d", snap);
  }
  rmSync(snapshotFile(ctx.dir, storage, rec, snap), { force: true });
  rec.snapshots = rec.snapshots.filter((s) => s !== snap);
}

/** Bytes actually used by the files of a storage on a node (thin provisioning shows here). */
function usedBytes(ctx: Ctx, node: string, storage: StorageRec): number {
  let used = 0;
  for (const v of Object.values(ctx.state.volumes)) {
    if (v.node !== node || v.storage !== storage.id) continue;
    try {
      used += statSync(volumeFile(ctx.dir, storage, v.volname)).blocks * 512;
    } catch {
      // a file removed behind our back counts as empty
    }
  }
  return used;
}

export interface StorageStatus {
  storage: string;
  type: string;
  content: string;
  total: number;
  used: number;
  avail: number;
  active: number;
  enabled: number;
  shared: number;
  used_fraction: number;
}

export function storageStatus(ctx: Ctx, node: string, storage: StorageRec): StorageStatus {
  const used = storage.active ? usedBytes(ctx, node, storage) : 0;
  const total = storage.active ? storage.total : 0;
  return {
    storage: storage.id,
    type: storage.type,
    content: [...storage.content].sort().join(","),
    total,
    used,
    avail: Math.max(0, total - used),
    active: storage.active ? 1 : 0,
    enabled: storage.enabled ? 1 : 0,
    shared: storage.shared ? 1 : 0,
    used_fraction: total > 0 ? used / total : 0,
  };
}

/** Snippets are plain files someone wrote into the directory, so they are listed from disk. */
export function snippetVolumes(ctx: Ctx, node: string, storage: StorageRec): VolumeRec[] {
  if (storage.type !== "dir" || !storage.content.includes("snippets")) return [];
  const root = join(storageRoot(ctx.dir, storage.id), "snippets");
  let names: string[];
  try {
    names = readdirSync(root).sort();
  } catch {
    return [];
  }
  return names.map((name) => {
    const st = statSync(join(root, name));
    return {
      storage: storage.id,
      node,
      volname: `snippets/${name}`,
      vmid: 0,
      format: "raw",
      content: "snippets",
      size: st.size,
      ctime: Math.floor(st.ctimeMs / 1000),
      snapshots: [],
    };
  });
}

export function validateSizeParam(size: string): number {
  // pvesm/API `size`: KiB without suffix, or with M/G.
  const m = /^(\d+)([MG])?$/.exec(size);
  if (!m) throw paramError({ size: "value does not match the regex pattern" });
  const n = Number(m[1]);
  return m[2] === "G" ? n * 1024 ** 3 : m[2] === "M" ? n * 1024 ** 2 : n * 1024;
}
