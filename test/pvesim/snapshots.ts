/** VM snapshots: list, create, rollback, delete, and their tasks, with the parent chain in the config. */
import { type AuthId, checkPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { CommandError, fail, PveError } from "./errors.js";
import { monitorSync } from "./monitor.js";
import { bootVm, haltVm } from "./power.js";
import { isQcow2 } from "./qcow2.js";
import { qemuPaths, qmpOrFail } from "./qemu.js";
import { isReal } from "./qemu-power.js";
import { bool, type Params, str } from "./schema.js";
import {
  canSnapshot,
  deleteVolumeSnapshot,
  findVolume,
  getStorage,
  parseVolname,
  rollbackBlocker,
  rollbackVolume,
  snapshotVolume,
  volumeFile,
} from "./storage.js";
import { createTask, registerTaskKind } from "./tasks.js";
import type { ConfigMap, TaskRec, VmRec, VolumeRec } from "./types.js";
import { agentEnabled, configDigest, isCloudinitVolume, typedConfig, volumeDrives } from "./vmconfig.js";
import { checkLock, getVm, isTemplate } from "./vms.js";

export const SNAPNAME_FORMAT = (v: string): string | undefined =>
  /^[a-zA-Z][a-zA-Z0-9_-]+$/.test(v) && v.length <= 40
    ? undefined
    : `invalid format - invalid configuration ID '${v}'`;

const SNAPSHOT_ONLY_KEYS = ["snaptime", "vmstate", "snapstate", "description"];

export function listSnapshots(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
): Array<Record<string, unknown>> {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Audit"]);
  const vm = getVm(ctx, node, vmid);
  const out: Array<Record<string, unknown>> = Object.entries(vm.snapshots)
    .sort(([, a], [, b]) => Number(a["snaptime"] ?? 0) - Number(b["snaptime"] ?? 0))
    .map(([name, snap]) => {
      const entry: Record<string, unknown> = {
        name,
        snaptime: Number(snap["snaptime"] ?? 0),
        vmstate: snap["vmstate"] ? 1 : 0,
        description: snap["description"] ?? "",
      };
      if (snap["parent"]) entry["parent"] = snap["parent"];
      if (snap["snapstate"]) entry["snapstate"] = snap["snapstate"];
      return entry;
    });
  const current: Record<string, unknown> = {
    name: "current",
    description: "You are here!",
    digest: configDigest(vm),
    running: vm.runtime.status === "running" ? 1 : 0,
  };
  if (vm.config["parent"]) current["parent"] = vm.config["parent"];
  out.push(current);
  return out;
}

export function snapshotConfig(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  snap: string,
): Record<string, unknown> {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Audit"]);
  const vm = getVm(ctx, node, vmid);
  const config = vm.snapshots[snap];
  if (!config) throw fail(`snapshot '${snap}' does not exist`);
  return typedConfig(config);
}

export function updateSnapshotConfig(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  snap: string,
  p: Params,
): null {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Snapshot"]);
  const vm = getVm(ctx, node, vmid);
  const config = vm.snapshots[snap];
  if (!config) throw fail(`snapshot '${snap}' does not exist`);
  const description = str(p, "description");
  if (description !== undefined) config["description"] = description;
  return null;
}

/** The volumes a snapshot covers (no cdroms, no cloud-init drive). */
function snapshotVolumes(ctx: Ctx, vm: VmRec, config: ConfigMap): VolumeRec[] {
  const out: VolumeRec[] = [];
  for (const { key, drive } of volumeDrives(config)) {
    if (key.startsWith("unused") || isCloudinitVolume(drive.file)) continue;
    const rec = findVolume(ctx.state, vm.node, drive.file);
    if (rec) out.push(rec);
  }
  return out;
}

function snapTask(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  type: string,
  kind: string,
  params: TaskRec["op"]["params"],
): TaskRec {
  return createTask(ctx, {
    node,
    type,
    id: String(vmid),
    auth,
    op: { kind, vmid, params },
    locks: [{ vmid, shared: false }],
  });
}

export function createSnapshot(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Snapshot"]);
  getVm(ctx, node, vmid);
  const snapname = str(p, "snapname")!;
  if (snapname === "current" || snapname === "pending") {
    throw fail(`unable to use snapshot name '${snapname}' (reserved name)`);
  }
  return snapTask(ctx, auth, node, vmid, "qmsnapshot", "snapshot", {
    snapname,
    description: str(p, "description"),
    vmstate: bool(p, "vmstate") ?? false,
  });
}

registerTaskKind("snapshot", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    checkLock(ctx, vm);
    if (isTemplate(vm)) throw fail("you can't take a snapshot if it's a template");
    if (vm.snapshots[name]) throw fail(`snapshot name '${name}' already used`);
    const volumes = snapshotVolumes(ctx, vm, vm.config);
    for (const rec of volumes) {
      if (!canSnapshot(getStorage(ctx.state, rec.storage), rec))
        throw fail("snapshot feature is not available");
    }
    const snap: ConfigMap = { ...vm.config };
    delete snap["lock"];
    snap["snaptime"] = String(Math.floor(ctx.now / 1000));
    snap["snapstate"] = "prepare";
    const description = task.op.params["description"];
    if (description !== undefined) snap["description"] = String(description);
    else delete snap["description"];
    if (task.op.params["vmstate"] && vm.runtime.status === "running") {
      snap["vmstate"] = `local-zfs:vm-${vm.vmid}-state-${name}`;
    }
    vm.snapshots[name] = snap;
    vm.config["lock"] = "snapshot";
    for (const rec of volumes) {
      const storage = getStorage(ctx.state, rec.storage);
      task.log.push(`snapshotting 'drive-${driveKeyOf(vm, rec)}' (${rec.storage}:${rec.volname})`);
      if (storage.type === "lvmthin") {
        task.log.push(`  Logical volume "snap_${parseVolname(storage, rec.volname).name}_${name}" created.`);
      }
    }
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    const snap = vm.snapshots[name]!;
    const frozen = freezeGuest(ctx, vm, task, Boolean(snap["vmstate"]));
    try {
      for (const rec of snapshotVolumes(ctx, vm, snap)) {
        if (!runningQemuSnapshot(ctx, vm, rec, name, "create")) snapshotVolume(ctx, rec, name);
      }
    } finally {
      if (frozen) thawGuest(ctx, vm, task);
    }
    delete snap["snapstate"];
    vm.config["parent"] = name;
    if (vm.config["lock"] === "snapshot") delete vm.config["lock"];
  },
  abort(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    if (vm.snapshots[name]?.["snapstate"] === "prepare") delete vm.snapshots[name];
    if (vm.config["lock"] === "snapshot") delete vm.config["lock"];
  },
});

/**
 * Before a running real guest's disks are snapshotted without its RAM, its file systems are frozen
 * through the guest agent and thawed afterwards, as qemu-server does when the agent is enabled and
 * answers (QemuConfig.pm `__snapshot_check_freeze_needed` / `__snapshot_freeze`: guest-fsfreeze-freeze,
 * guest-fsfreeze-thaw; a failure is a warning in the task log, not an error). Without it the snapshot
 * holds what the guest had written back so far: files cloud-init wrote a moment before (sshd's host
 * keys) came back empty after a rollback. Returns whether the guest was frozen.
 */
function freezeGuest(ctx: Ctx, vm: VmRec, task: TaskRec, vmstate: boolean): boolean {
  if (vmstate || !isReal(vm) || vm.runtime.status !== "running") return false;
  if (!agentEnabled(vm.config["agent"])) return false;
  const qga = qemuPaths(ctx.dir, vm.vmid).qga;
  const peer = `VM ${vm.vmid}`;
  // qga_check_running: a guest-ping first; a silent agent means no freeze, as on Proxmox.
  if (!monitorSync(qga, "qga", peer, { execute: "guest-ping" }).ok) return false;
  const out = monitorSync(qga, "qga", peer, { execute: "guest-fsfreeze-freeze" });
  if (!out.ok || out.answer.error) {
    task.log.push(`guest-fsfreeze-freeze problems - ${out.ok ? out.answer.error?.desc : out.message}`);
    return false;
  }
  return true;
}

function thawGuest(ctx: Ctx, vm: VmRec, task: TaskRec): void {
  const out = monitorSync(qemuPaths(ctx.dir, vm.vmid).qga, "qga", `VM ${vm.vmid}`, {
    execute: "guest-fsfreeze-thaw",
  });
  if (!out.ok || out.answer.error) {
    task.log.push(`guest-fsfreeze-thaw problems - ${out.ok ? out.answer.error?.desc : out.message}`);
  }
}

/**
 * A snapshot of a disk that a real, running QEMU has open goes through QEMU, as qemu-server's
 * `qemu_volume_snapshot`/`qemu_volume_snapshot_delete` (QemuServer.pm:4385-4440) do for qcow2:
 * `blockdev-snapshot-internal-sync` / `blockdev-snapshot-delete-internal-sync` on `drive-<key>`. A raw
 * file (the storage's own snapshot on ZFS/LVM) is copied while the guest is paused, so the copy is
 * not torn. Returns whether QEMU did the qcow2 part (the caller then only records it).
 */
function runningQemuSnapshot(
  ctx: Ctx,
  vm: VmRec,
  rec: VolumeRec,
  name: string,
  what: "create" | "delete",
): boolean {
  if (!isReal(vm) || vm.runtime.status !== "running") return false;
  const file = volumeFile(ctx.dir, getStorage(ctx.state, rec.storage), rec.volname);
  if (isQcow2(file)) {
    const device = `drive-${driveKeyOf(vm, rec)}`;
    if (what === "create") {
      qmpOrFail(ctx, vm, { execute: "blockdev-snapshot-internal-sync", arguments: { device, name } });
      rec.snapshots.push(name);
    } else {
      qmpOrFail(ctx, vm, { execute: "blockdev-snapshot-delete-internal-sync", arguments: { device, name } });
    }
    return true;
  }
  if (what === "create" && vm.runtime.qmpstatus === "running") {
    qmpOrFail(ctx, vm, { execute: "stop" });
    try {
      snapshotVolume(ctx, rec, name);
    } finally {
      qmpOrFail(ctx, vm, { execute: "cont" });
    }
    return true;
  }
  return false;
}

function driveKeyOf(vm: VmRec, rec: VolumeRec): string {
  for (const { key, drive } of volumeDrives(vm.config)) {
    if (drive.file === `${rec.storage}:${rec.volname}`) return key;
  }
  return "unknown";
}

export function rollbackSnapshot(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  snap: string,
  p: Params,
): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Snapshot", "VM.Snapshot.Rollback"], true);
  const start = bool(p, "start") ?? false;
  if (start) checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.PowerMgmt"]);
  getVm(ctx, node, vmid);
  return snapTask(ctx, auth, node, vmid, "qmrollback", "rollback", { snapname: snap, start });
}

registerTaskKind("rollback", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    const snap = vm.snapshots[name];
    if (!snap) throw fail(`snapshot '${name}' does not exist`);
    checkLock(ctx, vm);
    for (const rec of snapshotVolumes(ctx, vm, snap)) {
      const blocker = rollbackBlocker(ctx, rec, name);
      if (blocker) throw fail(blocker);
    }
    vm.config["lock"] = "rollback";
    if (vm.runtime.status === "running") haltVm(vm, ctx);
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    const snap = vm.snapshots[name]!;
    for (const rec of snapshotVolumes(ctx, vm, snap)) rollbackVolume(ctx, rec, name);
    vm.config = rolledBackConfig(vm.config, snap, name);
    vm.pending = {};
    vm.pendingDelete = [];
    if (task.op.params["start"] || snap["vmstate"]) bootVm(ctx, vm, task.log);
  },
  abort(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (vm.config["lock"] === "rollback") delete vm.config["lock"];
  },
});

/**
 * The config after a rollback, as AbstractConfig::snapshot_rollback writes it: a volume the current
 * config uses but the snapshot does not becomes an unusedN entry first (__snapshot_rollback_get_unused:
 * cdroms, so the cloud-init drive too, skipped; add_unused_volume: lowest free index, no duplicates, no
 * owner check: a disk of another VM is listed too), then __snapshot_apply_config keeps the current
 * unusedN entries and description and copies the snapshot's keys over them.
 */
export function rolledBackConfig(current: ConfigMap, snap: ConfigMap, name: string): ConfigMap {
  const inSnapshot = new Set(
    volumeDrives(snap)
      .filter(({ key, drive }) => !key.startsWith("unused") && !isCloudinitVolume(drive.file))
      .map(({ drive }) => drive.file),
  );
  const withUnused: ConfigMap = { ...current };
  for (const { key, drive } of volumeDrives(current)) {
    if (key.startsWith("unused") || isCloudinitVolume(drive.file) || inSnapshot.has(drive.file)) continue;
    addUnusedVolume(withUnused, drive.file);
  }
  const restored: ConfigMap = {};
  for (const [key, value] of Object.entries(withUnused)) {
    if (/^unused\d+$/.test(key) || key === "description") restored[key] = value;
  }
  for (const [key, value] of Object.entries(snap)) {
    if (!SNAPSHOT_ONLY_KEYS.includes(key)) restored[key] = value;
  }
  restored["parent"] = name;
  return restored;
}

/** AbstractConfig::add_unused_volume: the lowest free unusedN (of 256), nothing if already listed. */
function addUnusedVolume(config: ConfigMap, volid: string): void {
  let free: string | undefined;
  for (let i = 255; i >= 0; i--) {
    const key = `unused${i}`;
    if (config[key] === undefined) free = key;
    else if (config[key] === volid) return;
  }
  if (free === undefined) throw fail("Too many unused volumes - please delete them first.");
  config[free] = volid;
}

export function deleteSnapshot(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  snap: string,
  p: Params,
): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Snapshot"]);
  getVm(ctx, node, vmid);
  return snapTask(ctx, auth, node, vmid, "qmdelsnapshot", "delsnapshot", {
    snapname: snap,
    force: bool(p, "force") ?? false,
  });
}

registerTaskKind("delsnapshot", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    const snap = vm.snapshots[name];
    if (!snap) throw fail(`snapshot '${name}' does not exist`);
    // `--force` gets past the lock a failed delete left behind, not past other locks.
    if (!(task.op.params["force"] && vm.config["lock"] === "snapshot-delete")) checkLock(ctx, vm);
    if (isTemplate(vm)) throw fail("you can't delete a snapshot if vm is a template");
    vm.config["lock"] = "snapshot-delete";
    snap["snapstate"] = "delete";
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const name = String(task.op.params["snapname"]);
    const snap = vm.snapshots[name]!;
    for (const rec of snapshotVolumes(ctx, vm, snap)) {
      if (!rec.snapshots.includes(name)) continue;
      try {
        const qemuDeleted = runningQemuSnapshot(ctx, vm, rec, name, "delete");
        deleteVolumeSnapshot(ctx, rec, name, { qemuDeleted });
      } catch (err) {
        if (!(err instanceof PveError)) throw err;
        if (err instanceof CommandError) task.log.push(...err.output);
        if (!task.op.params["force"]) {
          // The worker dies here: the config keeps `lock: snapshot-delete` and `snapstate: delete`
          // (`qm delsnapshot --force` or `qm unlock` is the way out), as after a real failed delete.
          task.scratch["keepLock"] = true;
          throw err;
        }
        // With force the storage error is only a warning, and the snapshot leaves the config anyway.
        task.log.push(`WARN: ${err.message}`);
        task.scratch["warnings"] = Number(task.scratch["warnings"] ?? 0) + 1;
      }
    }
    const parent = snap["parent"];
    const reparent = (config: ConfigMap): void => {
      if (config["parent"] !== name) return;
      if (parent) config["parent"] = parent;
      else delete config["parent"];
    };
    for (const other of Object.values(vm.snapshots)) reparent(other);
    reparent(vm.config);
    delete vm.snapshots[name];
    if (vm.config["lock"] === "snapshot-delete") delete vm.config["lock"];
  },
  abort(ctx, task) {
    if (task.scratch["keepLock"]) return;
    const vm = getVm(ctx, task.node, task.op.vmid);
    const snap = vm.snapshots[String(task.op.params["snapname"])];
    if (snap) delete snap["snapstate"];
    if (vm.config["lock"] === "snapshot-delete") delete vm.config["lock"];
  },
});
