/** The storage endpoints under /nodes/{node}/storage and the `imgdel` task. */
import { statSync } from "node:fs";
import { type AuthId, checkPriv, hasPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { DEFAULT_THINPOOL, isLvm, vgName, zfsPool } from "./devices.js";
import { PveError } from "./errors.js";
import { storageRoot } from "./paths.js";
import { num, type Params, str } from "./schema.js";
import {
  allocVolume,
  findStorage,
  findVolume,
  freeVolume,
  parseVolname,
  snippetVolumes,
  splitVolid,
  storageStatus,
  validateSizeParam,
  volidOf,
  volumeFile,
  volumePath,
  zfsOrigin,
} from "./storage.js";
import { createTask, registerTaskKind } from "./tasks.js";
import type { StorageRec, TaskRec, VolumeRec } from "./types.js";
import { checkNode } from "./vms.js";
import { checkVolumeAccess } from "./volume-access.js";

function storageOr400(ctx: Ctx, id: string): StorageRec {
  const s = findStorage(ctx.state, id);
  if (!s) throw new PveError(400, "No such storage.", { errors: { storage: "No such storage." } });
  return s;
}

const canSee = (ctx: Ctx, auth: AuthId, id: string): boolean =>
  hasPriv(ctx.state, auth, `/storage/${id}`, ["Datastore.Audit", "Datastore.AllocateSpace"], true);

export function listStorages(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  p: Params,
): Array<Record<string, unknown>> {
  checkNode(ctx, node);
  const only = str(p, "storage");
  const content = str(p, "content");
  return ctx.state.storages
    .filter(
      (s) => (!only || s.id === only) && (!content || s.content.includes(content)) && canSee(ctx, auth, s.id),
    )
    .map((s) => ({ ...storageStatus(ctx, node, s) }));
}

export function getStorageStatus(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  storage: string,
): Record<string, unknown> {
  checkNode(ctx, node);
  const s = storageOr400(ctx, storage);
  checkPriv(ctx.state, auth, `/storage/${storage}`, ["Datastore.Audit", "Datastore.AllocateSpace"], true);
  const { storage: _id, used_fraction: _f, ...rest } = storageStatus(ctx, node, s);
  return rest;
}

function contentEntry(ctx: Ctx, s: StorageRec, v: VolumeRec): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    volid: volidOf(v),
    format: v.format,
    size: v.size,
    ctime: v.ctime,
    content: v.content,
  };
  if (v.content === "images") {
    entry["vmid"] = v.vmid;
    try {
      entry["used"] = statSync(volumeFile(ctx.dir, s, v.volname)).blocks * 512;
    } catch {
      entry["used"] = 0;
    }
  }
  // ZFS reports the origin snapshot of clones (linked clones of templates and `zfs clone`s alike).
  const parent = s.type === "zfspool" ? zfsOrigin(ctx.state, v) : v.base ? `${v.base}@__base__` : undefined;
  if (parent) entry["parent"] = parent;
  return entry;
}

export function listContent(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  storage: string,
  p: Params,
): Array<Record<string, unknown>> {
  checkNode(ctx, node);
  const s = storageOr400(ctx, storage);
  if (!canSee(ctx, auth, storage)) return [];
  const content = str(p, "content");
  const vmid = num(p, "vmid");
  const volumes = [
    ...Object.values(ctx.state.volumes).filter((v) => v.node === node && v.storage === storage),
    ...snippetVolumes(ctx, node, s),
  ];
  return volumes
    .filter((v) => (!content || v.content === content) && (vmid === undefined || v.vmid === vmid))
    .sort((a, b) => volidOf(a).localeCompare(volidOf(b)))
    .map((v) => contentEntry(ctx, s, v));
}

export function allocContent(ctx: Ctx, auth: AuthId, node: string, storage: string, p: Params): string {
  checkNode(ctx, node);
  checkPriv(ctx.state, auth, `/storage/${storage}`, ["Datastore.AllocateSpace"]);
  storageOr400(ctx, storage);
  const size = validateSizeParam(str(p, "size") ?? "");
  const filename = str(p, "filename") ?? "";
  const format = str(p, "format");
  const rec = allocVolume(ctx, {
    node,
    storage,
    vmid: Number(p["vmid"]),
    ...(filename ? { name: filename } : {}),
    size,
    ...(format ? { format } : {}),
  });
  return volidOf(rec);
}

/** The `volume` path parameter may be a whole volid or just the volname on that storage. */
function resolveVolid(storage: string, volume: string): string {
  try {
    const { storage: sid } = splitVolid(volume);
    if (sid === storage) return volume;
  } catch {
    // not a volid
  }
  return `${storage}:${volume}`;
}

export function volumeAttributes(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  storage: string,
  volume: string,
): Record<string, unknown> {
  checkNode(ctx, node);
  const s = storageOr400(ctx, storage);
  const volid = resolveVolid(storage, volume);
  // "You need read access for the volume" (pve-storage API2/Storage/Content.pm:308-310, 369).
  checkVolumeAccess(ctx, auth, volid);
  const { volname } = splitVolid(volid);
  const info = parseVolname(s, volname);
  const rec = findVolume(ctx.state, node, volid);
  const file = volumeFile(ctx.dir, s, volname);
  if (!rec && info.content === "images") throw new PveError(500, `volume '${volid}' does not exist`);
  let size = rec?.size ?? 0;
  let used = 0;
  try {
    const st = statSync(file);
    if (!rec) size = st.size;
    used = st.blocks * 512;
  } catch {
    if (!rec) throw new PveError(500, `volume '${volid}' does not exist`);
  }
  return { path: volumePath(ctx.dir, s, volname), size, used, format: rec?.format ?? "raw" };
}

export function deleteContent(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  storage: string,
  volume: string,
): TaskRec {
  checkNode(ctx, node);
  const s = storageOr400(ctx, storage);
  const volid = resolveVolid(storage, volume);
  const info = parseVolname(s, splitVolid(volid).volname);
  checkPriv(ctx.state, auth, `/storage/${storage}`, ["Datastore.Allocate"]);
  return createTask(ctx, {
    node,
    type: "imgdel",
    id: `${info.vmid}@${storage}`,
    auth,
    op: { kind: "imgdel", vmid: info.vmid, params: { volid } },
    locks: [],
  });
}

registerTaskKind("imgdel", {
  begin(ctx) {
    return { durationMs: ctx.control.fail_ms };
  },
  finish(ctx, task) {
    const volid = String(task.op.params["volid"]);
    freeVolume(ctx, task.node, volid);
    task.log.push(`Removed volume '${volid}'`);
  },
  abort() {},
});

/** The storage.cfg section of a storage, as `GET /storage` lists and `GET /storage/{storage}` reads it. */
export function storageConfigEntry(ctx: Ctx, s: StorageRec): Record<string, unknown> {
  const entry: Record<string, unknown> = {
    storage: s.id,
    type: s.type,
    content: [...s.content].sort().join(","),
    digest: "0".repeat(40),
  };
  if (s.type === "dir") {
    // The directory the simulator really keeps this storage's files in (images/<vmid>/..., snippets/).
    entry["path"] = storageRoot(ctx.dir, s.id);
    entry["shared"] = s.shared ? 1 : 0;
  }
  if (s.type === "zfspool") {
    entry["pool"] = zfsPool(s);
    entry["sparse"] = 1;
  }
  if (isLvm(s)) entry["vgname"] = vgName(s);
  if (s.type === "lvmthin") entry["thinpool"] = s.thinpool ?? DEFAULT_THINPOOL;
  if (s.type === "lvm") entry["shared"] = s.shared ? 1 : 0;
  if (!s.enabled) entry["disable"] = 1;
  return entry;
}

/** `GET /storage`: every storage the caller may audit; `type=` filters. */
export function listStorageConfig(ctx: Ctx, auth: AuthId, p: Params): Array<Record<string, unknown>> {
  const type = str(p, "type");
  return ctx.state.storages
    .filter((s) => (!type || s.type === type) && canSee(ctx, auth, s.id))
    .map((s) => storageConfigEntry(ctx, s));
}

/** `GET /storage/{storage}`: reading a storage's configuration needs Datastore.Allocate on it. */
export function readStorageConfig(ctx: Ctx, auth: AuthId, storage: string): Record<string, unknown> {
  checkPriv(ctx.state, auth, `/storage/${storage}`, ["Datastore.Allocate"]);
  const s = findStorage(ctx.state, storage);
  if (!s) throw new PveError(500, `storage '${storage}' does not exist`);
  return storageConfigEntry(ctx, s);
}
