/**
 * The node's own storage layer as host tools see it: ZFS datasets (`zfs clone/list/get/destroy`),
 * logical volumes and their activation (`lvs`, `lvchange`), and a host reboot. Everything acts on the
 * same state and files as the Proxmox API, so a `zfs clone` shows up in the content listing and a
 * deactivated LV loses its /dev link.
 */
import { statSync } from "node:fs";
import type { Ctx } from "./context.js";
import { isLvm, vgName, zfsPool } from "./devices.js";
import { CommandError } from "./errors.js";
import { haltVm } from "./power.js";
import {
  allocVolume,
  deleteVolumeSnapshot,
  freeVolume,
  parseVolname,
  setActive,
  volidOf,
  volumeFile,
  volumeSnapshotFile,
  zfsDependents,
  zfsOrigin,
} from "./storage.js";
import type { StorageRec, VmRec, VolumeRec } from "./types.js";
import { mergedConfig, volumeDrives } from "./vmconfig.js";

/** A failure of a host tool: its stderr lines and exit code (zfs exits 1, LVM 5). */
export class HostToolError extends Error {
  constructor(
    readonly lines: string[],
    readonly exitCode: number,
  ) {
    super(lines.join("\n"));
    this.name = "HostToolError";
  }
}

const zfsFail = (...lines: string[]): HostToolError => new HostToolError(lines, 1);
const lvmFail = (...lines: string[]): HostToolError => new HostToolError(lines, 5);

function nodeVolumes(ctx: Ctx, node: string, storage: StorageRec): VolumeRec[] {
  return Object.values(ctx.state.volumes).filter(
    (v) => v.node === node && v.storage === storage.id && v.content === "images",
  );
}

const nameOf = (storage: StorageRec, rec: VolumeRec): string => parseVolname(storage, rec.volname).name;

/** VMs on the node that are running with this volume in their config (their QEMU holds it open). */
function openBy(ctx: Ctx, node: string, rec: VolumeRec): VmRec | undefined {
  const volid = volidOf(rec);
  return Object.values(ctx.state.vms).find(
    (vm) =>
      vm.node === node &&
      vm.runtime.status === "running" &&
      volumeDrives(mergedConfig(vm)).some(({ drive }) => drive.file === volid),
  );
}

// ---- ZFS ----

export type ZfsType = "filesystem" | "volume" | "snapshot";

export interface ZfsDataset {
  name: string;
  type: ZfsType;
  storage?: StorageRec;
  rec?: VolumeRec;
  snap?: string;
}

/** Every dataset of the node's zfspool storages: the pool filesystems, zvols and their snapshots. */
export function zfsDatasets(ctx: Ctx, node: string): ZfsDataset[] {
  const out: ZfsDataset[] = [];
  const filesystems = new Set<string>();
  for (const storage of ctx.state.storages) {
    if (storage.type !== "zfspool") continue;
    const parts = zfsPool(storage).split("/");
    for (let i = 1; i <= parts.length; i++) filesystems.add(parts.slice(0, i).join("/"));
    for (const rec of nodeVolumes(ctx, node, storage)) {
      const name = `${zfsPool(storage)}/${nameOf(storage, rec)}`;
      out.push({ name, type: "volume", storage, rec });
      // Template volumes carry the `__base__` snapshot their linked clones come from.
      const snaps = parseVolname(storage, rec.volname).isBase
        ? ["__base__", ...rec.snapshots]
        : rec.snapshots;
      for (const snap of snaps) out.push({ name: `${name}@${snap}`, type: "snapshot", storage, rec, snap });
    }
  }
  for (const name of filesystems) out.push({ name, type: "filesystem" });
  // Hierarchy order: a dataset, then its snapshots (in creation order), then its children.
  const key = (d: ZfsDataset): string =>
    d.type === "snapshot" ? d.name.slice(0, d.name.indexOf("@")) : d.name;
  return out
    .map((d, i) => ({ d, i }))
    .sort((a, b) => {
      const ka = key(a.d);
      const kb = key(b.d);
      if (ka !== kb) return ka < kb ? -1 : 1;
      if (a.d.type !== b.d.type) return a.d.type === "snapshot" ? 1 : -1;
      return a.i - b.i;
    })
    .map(({ d }) => d);
}

export function findDataset(ctx: Ctx, node: string, name: string): ZfsDataset | undefined {
  return zfsDatasets(ctx, node).find((d) => d.name === name);
}

function fileBytes(path: string): number {
  try {
    return statSync(path).blocks * 512;
  } catch {
    return 0;
  }
}

function fileCtime(path: string): number {
  try {
    return Math.floor(statSync(path).ctimeMs / 1000);
  } catch {
    return 0;
  }
}

export const ZFS_PROPERTIES = [
  "name",
  "type",
  "origin",
  "clones",
  "volsize",
  "used",
  "referenced",
  "available",
  "creation",
  "mountpoint",
  "refquota",
] as const;
export type ZfsProperty = (typeof ZFS_PROPERTIES)[number];

const ALIASES: Record<string, ZfsProperty> = { refer: "referenced", avail: "available" };

export function zfsProperty(name: string): ZfsProperty | undefined {
  if ((ZFS_PROPERTIES as readonly string[]).includes(name)) return name as ZfsProperty;
  return ALIASES[name];
}

/** A property value: a number of bytes/seconds, a string, or undefined for `-`. */
export function zfsValue(
  ctx: Ctx,
  node: string,
  d: ZfsDataset,
  prop: ZfsProperty,
): number | string | undefined {
  const { storage, rec } = d;
  switch (prop) {
    case "name":
      return d.name;
    case "type":
      return d.type;
    case "origin": {
      if (d.type !== "volume" || !storage || !rec) return undefined;
      const origin = zfsOrigin(ctx.state, rec);
      return origin ? `${zfsPool(storage)}/${origin}` : undefined;
    }
    case "clones": {
      if (d.type !== "snapshot" || !storage || !rec || !d.snap) return undefined;
      return zfsDependents(ctx.state, rec, d.snap)
        .map((c) => `${zfsPool(storage)}/${nameOf(storage, c)}`)
        .join(",");
    }
    case "volsize":
      return d.type === "volume" ? rec?.size : undefined;
    case "used":
    case "referenced": {
      if (!storage || !rec) return 0;
      if (d.type === "snapshot") {
        return d.snap === "__base__" ? 0 : fileBytes(volumeSnapshotFile(ctx, rec, d.snap!));
      }
      return fileBytes(volumeFile(ctx.dir, storage, rec.volname));
    }
    case "available": {
      if (d.type === "snapshot") return undefined;
      const pool =
        d.storage ?? ctx.state.storages.find((s) => s.type === "zfspool" && zfsPool(s).startsWith(d.name));
      if (!pool) return 0;
      const used = nodeVolumes(ctx, node, pool).reduce(
        (sum, v) => sum + fileBytes(volumeFile(ctx.dir, pool, v.volname)),
        0,
      );
      return Math.max(0, pool.total - used);
    }
    case "creation": {
      if (!storage || !rec) return Math.floor(ctx.state.createdAt / 1000);
      if (d.type === "snapshot" && d.snap !== "__base__")
        return fileCtime(volumeSnapshotFile(ctx, rec, d.snap!));
      return rec.ctime;
    }
    case "mountpoint":
      return d.type === "filesystem" ? `/${d.name}` : undefined;
    case "refquota":
      return d.type === "filesystem" ? "none" : undefined;
  }
}

/**
 * `zfs clone <pool>/<vol>@<snap> <pool>/<name>`: a new zvol whose bytes start as the snapshot's
 * (a sparse copy here, copy-on-write on real ZFS), with the snapshot as its origin.
 */
export function zfsClone(ctx: Ctx, node: string, source: string, target: string): VolumeRec {
  if (!source.includes("@")) {
    throw zfsFail(`cannot open '${source}': operation not applicable to datasets of this type`);
  }
  const src = findDataset(ctx, node, source);
  if (!src?.storage || !src.rec || !src.snap)
    throw zfsFail(`cannot open '${source}': dataset does not exist`);
  if (target.includes("@")) throw zfsFail(`cannot create '${target}': invalid character '@' in name`);
  if (source.split("/")[0] !== target.split("/")[0]) {
    throw zfsFail(`cannot create '${target}': source and target pools differ`);
  }
  if (findDataset(ctx, node, target)) throw zfsFail(`cannot create '${target}': dataset already exists`);
  const slash = target.lastIndexOf("/");
  const parent = target.slice(0, slash);
  const name = target.slice(slash + 1);
  const storage = ctx.state.storages.find((s) => s.type === "zfspool" && zfsPool(s) === parent);
  if (!storage) throw zfsFail(`cannot create '${target}': parent does not exist`);
  const m = /^(vm|base)-(\d+)-\S+$/.exec(name);
  if (!m) {
    // Proxmox lists only such names; the simulator keeps volumes only in that shape.
    throw zfsFail(
      `pvesim: cannot create '${target}': the simulator models only Proxmox volume names (vm-<vmid>-... or base-<vmid>-...)`,
    );
  }
  const snapFile =
    src.snap === "__base__"
      ? volumeFile(ctx.dir, src.storage, src.rec.volname)
      : volumeSnapshotFile(ctx, src.rec, src.snap, true);
  let size = src.rec.size;
  try {
    size = statSync(snapFile).size;
  } catch {
    // the snapshot's bytes are gone: the clone still gets the volume's size
  }
  const rec = allocVolume(ctx, {
    node,
    storage: storage.id,
    vmid: Number(m[2]),
    name,
    size,
    format: "raw",
    copyFrom: snapFile,
  });
  rec.origin = `${nameOf(src.storage, src.rec)}@${src.snap}`;
  return rec;
}

/** `zfs destroy [-r] <dataset>` with zfs's refusals (children, dependent clones, busy zvols). */
export function zfsDestroy(ctx: Ctx, node: string, target: string, recursive: boolean): void {
  const d = findDataset(ctx, node, target);
  if (!d) throw zfsFail(`cannot open '${target}': dataset does not exist`);
  if (d.type === "filesystem") {
    throw zfsFail(`pvesim: destroying the pool dataset '${target}' is not modelled`);
  }
  const { storage, rec } = d as Required<Pick<ZfsDataset, "storage" | "rec">> & ZfsDataset;
  const pool = zfsPool(storage);
  if (d.type === "snapshot") {
    const dependents = zfsDependents(ctx.state, rec, d.snap);
    if (dependents.length > 0) {
      throw zfsFail(
        `cannot destroy '${target}': snapshot has dependent clones`,
        "use '-R' to destroy the following datasets:",
        ...dependents.map((c) => `${pool}/${nameOf(storage, c)}`),
      );
    }
    if (d.snap === "__base__")
      throw zfsFail(`pvesim: destroying the __base__ snapshot of a template is not modelled`);
    deleteVolumeSnapshot(ctx, rec, d.snap!);
    return;
  }
  const children = parseVolname(storage, rec.volname).isBase ? ["__base__", ...rec.snapshots] : rec.snapshots;
  if (!recursive && children.length > 0) {
    throw zfsFail(
      `cannot destroy '${target}': volume has children`,
      "use '-r' to destroy the following datasets:",
      ...children.map((s) => `${target}@${s}`),
    );
  }
  const dependents = zfsDependents(ctx.state, rec);
  if (dependents.length > 0) {
    throw zfsFail(
      `cannot destroy '${target}': volume has dependent clones`,
      "use '-R' to destroy the following datasets:",
      ...dependents.map((c) => `${pool}/${nameOf(storage, c)}`),
    );
  }
  if (openBy(ctx, node, rec)) throw zfsFail(`cannot destroy '${target}': dataset is busy`);
  try {
    freeVolume(ctx, node, volidOf(rec));
  } catch (err) {
    if (err instanceof CommandError) throw zfsFail(...err.stderr);
    throw err;
  }
}

// ---- LVM ----

export interface LogicalVolume {
  vg: string;
  name: string;
  kind: "thin" | "thick" | "pool";
  storage: StorageRec;
  rec?: VolumeRec;
  size: number;
  active: boolean;
  skip: boolean;
  open: boolean;
  readonly: boolean;
  pool?: string;
  origin?: string;
}

/** The LVs of the node's LVM storages: each thin pool, then its volumes; thick volumes. */
export function logicalVolumes(ctx: Ctx, node: string): LogicalVolume[] {
  const out: LogicalVolume[] = [];
  for (const storage of ctx.state.storages) {
    if (!isLvm(storage)) continue;
    const vg = vgName(storage);
    const thin = storage.type === "lvmthin";
    if (thin) {
      const pool = storage.thinpool ?? "data";
      out.push({
        vg,
        name: pool,
        kind: "pool",
        storage,
        size: storage.total,
        active: true,
        skip: false,
        open: true,
        readonly: false,
      });
    }
    for (const rec of nodeVolumes(ctx, node, storage)) {
      const info = parseVolname(storage, rec.volname);
      const lv: LogicalVolume = {
        vg,
        name: info.name,
        kind: thin ? "thin" : "thick",
        storage,
        rec,
        size: rec.size,
        active: rec.active !== false,
        skip: rec.activationSkip === true,
        open: openBy(ctx, node, rec) !== undefined,
        readonly: info.isBase,
      };
      if (thin) lv.pool = storage.thinpool ?? "data";
      const origin = rec.origin ?? (rec.base ? parseVolname(storage, rec.base).name : undefined);
      if (thin && origin) lv.origin = origin;
      out.push(lv);
    }
  }
  return out.sort((a, b) => (a.vg === b.vg ? (a.name < b.name ? -1 : 1) : a.vg < b.vg ? -1 : 1));
}

/** Resolves `vg/lv` (or a bare VG for listings) the way LVM reports failures. */
export function findLv(ctx: Ctx, node: string, spec: string): LogicalVolume {
  const [vg, lv] = spec.replace(/^\/dev\//, "").split("/");
  const all = logicalVolumes(ctx, node);
  if (!all.some((l) => l.vg === vg)) {
    throw lvmFail(`  Volume group "${vg}" not found`, `  Cannot process volume group ${vg}`);
  }
  const found = all.find((l) => l.vg === vg && l.name === lv);
  if (!found) throw lvmFail(`  Failed to find logical volume "${vg}/${lv ?? ""}"`);
  return found;
}

/**
 * `lvchange -ay [-K]` / `lvchange -an`. Without `-K` an LV flagged activation-skip stays inactive,
 * silently, as LVM does; an LV that a running VM holds open cannot be deactivated.
 */
export function lvChange(ctx: Ctx, node: string, spec: string, activate: boolean, ignoreSkip: boolean): void {
  const lv = findLv(ctx, node, spec);
  if (lv.kind === "pool" || !lv.rec) return;
  if (activate) {
    if (lv.skip && !ignoreSkip) return;
    setActive(ctx, lv.rec, true);
    return;
  }
  if (lv.open) throw lvmFail(`  Logical volume ${lv.vg}/${lv.name} in use.`);
  setActive(ctx, lv.rec, false);
}

/**
 * A reboot of nodes: every VM on them is stopped (power loss for the guests) and every LV is inactive
 * afterwards, since PVE 9 creates LVs with autoactivation off. Refused while tasks run there, because
 * their workers would die mid-way, which the simulator does not model.
 */
export function hostReboot(ctx: Ctx, nodes: string[]): void {
  const busy = ctx.state.tasks.filter((t) => nodes.includes(t.node) && t.phase !== "done");
  if (busy.length > 0) {
    throw new Error(
      `tasks are running (${busy.map((t) => `${t.type} on ${t.node}`).join(", ")}): wait for them before a host reboot`,
    );
  }
  for (const vm of Object.values(ctx.state.vms)) {
    if (nodes.includes(vm.node) && vm.runtime.status === "running") haltVm(vm, ctx);
  }
  for (const rec of Object.values(ctx.state.volumes)) {
    if (!nodes.includes(rec.node)) continue;
    const storage = ctx.state.storages.find((s) => s.id === rec.storage);
    if (storage && isLvm(storage)) setActive(ctx, rec, false);
  }
}
