/** `POST /nodes/{node}/qemu/{vmid}/clone` and the `qmclone` task. */
import { randomUUID } from "node:crypto";
import { type AuthId, checkPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { isLvm } from "./devices.js";
import { fail, PveError } from "./errors.js";
import { qemuMode } from "./qemu.js";
import { bool, type Params, str } from "./schema.js";
import {
  allocVolume,
  findVolume,
  freeDiskName,
  freeVolume,
  getStorage,
  parseVolname,
  setActive,
  volidOf,
  volumeFile,
  volumeHasFeature,
  volumeSnapshotFile,
} from "./storage.js";
import { createTask, registerTaskKind, requireFlock } from "./tasks.js";
import type { ConfigMap, TaskRec, VmRec, VolumeRec } from "./types.js";
import {
  DRIVE_KEY,
  formatSize,
  humanSize,
  isCloudinitVolume,
  NET_KEY,
  newVmgenid,
  parseDrive,
  parseNic,
  printDrive,
  printNic,
  randomMac,
  setDriveProp,
  UNUSED_KEY,
  volumeDrives,
} from "./vmconfig.js";
import { checkLock, checkNode, findVm, getVm, isTemplate, vmName } from "./vms.js";

/** Keys a clone never inherits. */
const NOT_COPIED = new Set([
  "template",
  "parent",
  "lock",
  "snaptime",
  "vmstate",
  "snapstate",
  "runningmachine",
  "runningcpu",
]);

export function cloneVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const newid = Number(p["newid"]);
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Clone"]);
  const pool = str(p, "pool");
  if (pool) throw new PveError(403, `Permission check failed (pool '${pool}' does not exist)`);
  checkPriv(ctx.state, auth, `/vms/${newid}`, ["VM.Allocate"]);
  const src = getVm(ctx, node, vmid);
  const full = bool(p, "full") ?? !isTemplate(src);
  const storage = str(p, "storage");
  const format = str(p, "format");
  if (!full && storage !== undefined) throw fail("parameter 'storage' not allowed for linked clones");
  if (!full && format !== undefined) throw fail("parameter 'format' not allowed for linked clones");
  const target = str(p, "target");
  if (target !== undefined && target !== node) {
    checkNode(ctx, target);
    const shared = volumeDrives(src.config).every(({ drive }) => {
      const s = ctx.state.storages.find((x) => x.id === drive.file.split(":")[0]);
      return s?.shared ?? false;
    });
    if (!shared) throw fail(`can't clone VM to node '${target}' (VM uses local storage)`);
  }
  // The source's flock comes first (shared unless it runs, 1 s), then its `lock:` property. The
  // worker takes it (qemu-server API2/Qemu.pm:4738-4749), after fork_worker created the task log.
  requireFlock(ctx, vmid, 1000, src.runtime.status !== "running", true);
  checkLock(ctx, src);
  const existing = findVm(ctx, newid);
  if (existing && existing.node === node)
    throw fail(`unable to create VM ${newid}: config file already exists`);
  const snapname = str(p, "snapname");
  if (snapname && !src.snapshots[snapname]) throw fail(`snapshot '${snapname}' does not exist`);
  if (storage) getStorage(ctx.state, storage);

  const sourceConfig = snapname ? src.snapshots[snapname]! : src.config;
  const storages = new Set<string>();
  for (const { key, drive } of volumeDrives(sourceConfig)) {
    if (UNUSED_KEY.test(key)) continue;
    storages.add(full && storage ? storage : drive.file.split(":")[0]!);
  }
  for (const s of storages) checkPriv(ctx.state, auth, `/storage/${s}`, ["Datastore.AllocateSpace"]);
  for (const [key, value] of Object.entries(sourceConfig)) {
    if (!NET_KEY.test(key)) continue;
    const bridge = /(?:^|,)bridge=([^,]+)/.exec(value)?.[1];
    if (bridge) checkPriv(ctx.state, auth, `/sdn/zones/localnetwork/${bridge}`, ["SDN.Use"]);
  }

  return createTask(ctx, {
    node,
    type: "qmclone",
    id: String(vmid),
    auth,
    op: {
      kind: "clone",
      vmid,
      params: {
        newid,
        name: str(p, "name"),
        description: str(p, "description"),
        full,
        storage,
        format,
        snapname,
        target: target ?? node,
      },
    },
    // The source is shared between concurrent clones unless it runs; both with a 1 s timeout.
    locks: [
      { vmid, shared: src.runtime.status !== "running" },
      { vmid: newid, shared: false },
    ],
    lockTimeoutMs: 1000,
  });
}

/** The feature check of clone_vm, in its words: `Full|Linked clone feature is not supported for ...`. */
function requireFeature(
  ctx: Ctx,
  key: string,
  volid: string,
  rec: VolumeRec,
  full: boolean,
  snapname?: string,
): void {
  const storage = getStorage(ctx.state, rec.storage);
  if (volumeHasFeature(storage, rec, full ? "copy" : "clone", snapname)) return;
  const what = `clone feature is not supported for${snapname !== undefined ? " a snapshot of" : ""} '${volid}' (${key})`;
  throw fail(`${full ? "Full" : "Linked"} ${what}`);
}

function cloneDisks(ctx: Ctx, task: TaskRec, src: VmRec, newConfig: ConfigMap, created: string[]): void {
  const { params } = task.op;
  const newid = Number(params["newid"]);
  const full = Boolean(params["full"]);
  const node = String(params["target"]);
  const snapname = params["snapname"] !== undefined ? String(params["snapname"]) : undefined;
  const sourceConfig = snapname !== undefined ? src.snapshots[snapname]! : src.config;
  const drives = volumeDrives(sourceConfig).filter(({ key }) => DRIVE_KEY.test(key));
  const sources = drives.map(({ key, drive }) => {
    const srcRec = findVolume(ctx.state, src.node, drive.file);
    if (!srcRec) throw fail(`volume '${drive.file}' does not exist`);
    return { key, drive, srcRec, cloudinit: isCloudinitVolume(drive.file) };
  });
  // Every drive is checked before anything is copied, in key order as clone_vm does.
  for (const { key, drive, srcRec, cloudinit } of [...sources].sort((a, b) => (a.key < b.key ? -1 : 1))) {
    requireFeature(ctx, key, drive.file, srcRec, full || cloudinit, snapname);
  }
  // PVE activates the source volumes of a stopped VM for the copy; only base and snapshot LVs are
  // deactivated again afterwards, so the source's own LVs stay active.
  if (src.runtime.status !== "running" && snapname === undefined) {
    for (const { srcRec } of sources) {
      if (!parseVolname(getStorage(ctx.state, srcRec.storage), srcRec.volname).isBase)
        setActive(ctx, srcRec, true);
    }
  }
  for (const { key, drive, srcRec, cloudinit } of sources) {
    const srcStorage = getStorage(ctx.state, srcRec.storage);
    // A clone from a snapshot reads the bytes the volume had then (the cloud-init drive is never snapshotted).
    const fromSnapshot = snapname !== undefined && srcRec.snapshots.includes(snapname);
    const srcFile = fromSnapshot
      ? volumeSnapshotFile(ctx, srcRec, snapname, true)
      : volumeFile(ctx.dir, srcStorage, srcRec.volname);
    let newDrive = parseDrive(sourceConfig[key]!);
    if (cloudinit || full) {
      const storage = getStorage(
        ctx.state,
        full && params["storage"] ? String(params["storage"]) : srcRec.storage,
      );
      const fmt =
        storage.type === "dir"
          ? String(params["format"] ?? (srcRec.format === "raw" ? "raw" : srcRec.format))
          : "raw";
      const name = cloudinit
        ? `vm-${newid}-cloudinit${storage.type === "dir" ? ".qcow2" : ""}`
        : freeDiskName(ctx.state, node, storage, newid, fmt);
      task.log.push(`create full clone of drive ${key} (${drive.file})`);
      const rec = allocVolume(ctx, {
        node,
        storage: storage.id,
        vmid: newid,
        name,
        size: srcRec.size,
        format: cloudinit && storage.type === "dir" ? "qcow2" : fmt,
        copyFrom: srcFile,
      });
      created.push(volidOf(rec));
      if (!cloudinit) {
        task.log.push(`transferred 0.0 B of ${humanSize(rec.size)} (0.00%)`);
        task.log.push(`transferred ${humanSize(rec.size)} of ${humanSize(rec.size)} (100.00%)`);
      }
      newDrive = { ...newDrive, file: volidOf(rec) };
    } else {
      const name = freeDiskName(ctx.state, node, srcStorage, newid, srcRec.format);
      task.log.push(`create linked clone of drive ${key} (${drive.file})`);
      const base = parseVolname(srcStorage, srcRec.volname).isBase;
      const rec = allocVolume(ctx, {
        node,
        storage: srcStorage.id,
        vmid: newid,
        name,
        size: srcRec.size,
        format: srcRec.format,
        // Only clones of base volumes carry the base in their volid; LVM-thin snapshot clones have plain names.
        ...(base ? { base: srcRec.volname } : {}),
        // Real guests: a linked clone shares its base's bytes, as a ZFS clone or thin snapshot does.
        ...(qemuMode(ctx.control) ? { overlayOf: srcFile } : { copyFrom: srcFile }),
      });
      if (!base && snapname !== undefined) {
        rec.origin = `snap_${parseVolname(srcStorage, srcRec.volname).name}_${snapname}`;
      }
      created.push(volidOf(rec));
      if (isLvm(srcStorage)) task.log.push(`  Logical volume "${name}" created.`);
      newDrive = { ...newDrive, file: volidOf(rec) };
    }
    if (!cloudinit) setDriveProp(newDrive, "size", formatSize(srcRec.size));
    newConfig[key] = printDrive(newDrive);
  }
}

registerTaskKind("clone", {
  begin(ctx, task) {
    const { params } = task.op;
    const newid = Number(params["newid"]);
    const node = String(params["target"]);
    const src = getVm(ctx, task.node, task.op.vmid);
    const other = findVm(ctx, newid);
    if (other) {
      if (other.node === node) throw fail(`unable to create VM ${newid}: config file already exists`);
      throw fail(
        `close (rename) atomic file '/etc/pve/nodes/${node}/qemu-server/${newid}.conf' failed: File exists`,
      );
    }
    const sourceConfig = params["snapname"] ? src.snapshots[String(params["snapname"])]! : src.config;
    const config: ConfigMap = {};
    for (const [key, value] of Object.entries(sourceConfig)) {
      if (NOT_COPIED.has(key) || UNUSED_KEY.test(key) || DRIVE_KEY.test(key)) continue;
      config[key] = value;
    }
    // Drives that are not volumes (cdrom images, `none`) are copied as they are.
    for (const [key, value] of Object.entries(sourceConfig)) {
      if (DRIVE_KEY.test(key) && !volumeDrives({ [key]: value }).length) config[key] = value;
    }
    for (const key of Object.keys(config)) {
      if (!NET_KEY.test(key)) continue;
      const nic = parseNic(config[key]!, key);
      if (typeof nic !== "string") config[key] = printNic({ ...nic, mac: randomMac() });
    }
    config["smbios1"] = (config["smbios1"] ?? "uuid=x").replace(/uuid=[^,]*/, `uuid=${randomUUID()}`);
    if (config["vmgenid"] !== undefined) config["vmgenid"] = newVmgenid();
    config["name"] = params["name"] !== undefined ? String(params["name"]) : `Copy-of-VM-${vmName(src)}`;
    if (params["description"] !== undefined) config["description"] = String(params["description"]);
    const created: string[] = [];
    try {
      cloneDisks(ctx, task, src, config, created);
    } catch (err) {
      for (const volid of created) freeVolume(ctx, node, volid);
      if (err instanceof PveError && /^(Linked|Full) clone feature/.test(err.message)) throw err;
      throw fail(`clone failed: ${(err as Error).message}`);
    }
    config["lock"] = "clone";
    ctx.state.vms[String(newid)] = {
      vmid: newid,
      node,
      config,
      pending: {},
      pendingDelete: [],
      snapshots: {},
      runtime: { status: "stopped", qmpstatus: "stopped" },
      createdAt: ctx.now,
    };
    task.scratch["created"] = created;
    return { durationMs: params["full"] ? ctx.control.full_clone_ms : ctx.control.clone_ms };
  },
  finish(ctx, task) {
    const vm = findVm(ctx, Number(task.op.params["newid"]));
    if (vm && vm.config["lock"] === "clone") delete vm.config["lock"];
  },
  abort(ctx, task) {
    const newid = Number(task.op.params["newid"]);
    const vm = findVm(ctx, newid);
    const created = (task.scratch["created"] as string[] | undefined) ?? [];
    for (const volid of created) {
      try {
        freeVolume(ctx, String(task.op.params["target"]), volid);
      } catch {
        // already gone
      }
    }
    if (vm && vm.config["lock"] === "clone") delete ctx.state.vms[String(newid)];
    if (task.scratch["interrupted"]) {
      // The copy runs under its own TERM handler; the error path frees the new disks, removes the
      // firewall and the config, and dies (qemu-server API2/Qemu.pm:4623-4624, 4716-4727).
      task.failAtEnd = "clone failed: interrupted by signal";
    } else if (task.failAtEnd && !/^(clone failed|(Linked|Full) clone feature)/.test(task.failAtEnd)) {
      task.failAtEnd = `clone failed: ${task.failAtEnd}`;
    }
  },
});
