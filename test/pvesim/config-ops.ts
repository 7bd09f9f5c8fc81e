/** Reading and changing VM configuration: GET/PUT/POST config, pending, unlink, resize. */
import { type AuthId, checkPriv, parseAuthId } from "./access.js";
import { optionPrivilege, optionSpec } from "./config-schema.js";
import type { Ctx } from "./context.js";
import { addUnused, detachDrive, materialiseDrive, ownsVolume } from "./disks.js";
import { fail, paramError } from "./errors.js";
import { hotplugDrive, unplugDrive } from "./qemu-hotplug.js";
import { bool, type Params, str } from "./schema.js";
import { findVolume, resizeVolume } from "./storage.js";
import { createTask, registerTaskKind, requireFlock } from "./tasks.js";
import type { TaskRec } from "./types.js";
import {
  configDigest,
  DRIVE_KEY,
  formatSize,
  isCdrom,
  isHotpluggable,
  mergedConfig,
  NET_KEY,
  normaliseTags,
  parseDrive,
  parseNic,
  parseSize,
  printDrive,
  printNic,
  propsGet,
  randomMac,
  setDriveProp,
  typedConfig,
  UNUSED_KEY,
} from "./vmconfig.js";
import { checkLock, getVm } from "./vms.js";
import { checkVolumeAccess } from "./volume-access.js";

export const CONFIG_CONTROL_PARAMS = new Set([
  "node",
  "vmid",
  "delete",
  "revert",
  "digest",
  "skiplock",
  "force",
  "background_delay",
]);

export function getConfig(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
  p: Params,
): Record<string, unknown> {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Audit"]);
  const vm = getVm(ctx, node, vmid);
  const snapname = str(p, "snapshot");
  if (snapname && bool(p, "current")) {
    const reason = "cannot use 'snapshot' parameter with 'current'";
    throw paramError({ snapshot: reason, current: reason });
  }
  let config: Record<string, string>;
  if (snapname) {
    const snap = vm.snapshots[snapname];
    if (!snap) throw fail(`snapshot '${snapname}' does not exist`);
    config = { ...snap };
  } else {
    config = bool(p, "current") ? { ...vm.config } : mergedConfig(vm);
  }
  if (config["cipassword"] !== undefined) config["cipassword"] = "**********";
  return { ...typedConfig(config), digest: configDigest(vm) };
}

export function getPending(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  vmid: number,
): Array<Record<string, unknown>> {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Audit"]);
  const vm = getVm(ctx, node, vmid);
  const keys = new Set([...Object.keys(vm.config), ...Object.keys(vm.pending), ...vm.pendingDelete]);
  return [...keys].sort().map((key) => {
    const entry: Record<string, unknown> = { key };
    if (vm.config[key] !== undefined) entry["value"] = typedConfig({ [key]: vm.config[key]! })[key];
    if (vm.pending[key] !== undefined) entry["pending"] = typedConfig({ [key]: vm.pending[key]! })[key];
    if (vm.pendingDelete.includes(key)) entry["delete"] = 1;
    return entry;
  });
}

export interface UpdateResult {
  /** `update VM 101: -cores 4` as the CLIs print it. */
  summary: string;
  warnings: string[];
}

interface UpdateRequest {
  node: string;
  vmid: number;
  set: Record<string, string>;
  del: string[];
  revert: string[];
  force: boolean;
  skiplock: boolean;
  digest?: string;
  summary: string;
}

/** Everything that can be checked before the config lock: parameters and permissions. */
function prepareUpdate(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): UpdateRequest {
  const set: Record<string, string> = {};
  for (const [key, value] of Object.entries(p)) {
    if (CONFIG_CONTROL_PARAMS.has(key) || value === undefined) continue;
    set[key] = typeof value === "boolean" ? (value ? "1" : "0") : String(value);
  }
  const del = (str(p, "delete") ?? "").split(/[,;\s]+/).filter(Boolean);
  const revert = (str(p, "revert") ?? "").split(/[,;\s]+/).filter(Boolean);
  const skiplock = bool(p, "skiplock") ?? false;
  if (skiplock && !(auth.user === "root@pam" && !auth.tokenid)) {
    throw paramError({ skiplock: "Only root may use this option." });
  }
  if (Object.keys(set).length === 0 && del.length === 0 && revert.length === 0)
    throw fail("no options specified");
  const errors: Record<string, string> = {};
  for (const key of del) {
    if (set[key] !== undefined)
      errors["delete"] = `you can't use '-${key}' and -delete ${key}' at the same time`;
    else if (!optionSpec(key)) errors["delete"] = `invalid configuration key '${key}'`;
  }
  for (const key of revert) {
    if (set[key] !== undefined || del.includes(key))
      errors["revert"] = `you can't use '-${key}' and -revert ${key}' at the same time`;
  }
  if (Object.keys(errors).length > 0) throw paramError(errors);

  const path = `/vms/${vmid}`;
  for (const key of [...Object.keys(set), ...del, ...revert])
    checkPriv(ctx.state, auth, path, [optionPrivilege(key)]);
  for (const [key, value] of Object.entries(set)) {
    if (NET_KEY.test(key)) {
      const bridge = /(?:^|,)bridge=([^,]+)/.exec(value)?.[1];
      if (bridge) checkPriv(ctx.state, auth, `/sdn/zones/localnetwork/${bridge}`, ["SDN.Use"]);
    }
    if (DRIVE_KEY.test(key)) {
      // qemu-server API2/Qemu.pm:163-200 ($check_storage_access): a new disk needs space on its
      // storage, a reference to an existing volume passes check_volume_access.
      const m = /^([a-z][a-z0-9\-_.]*[a-z0-9]):(\d+(?:\.\d+)?|cloudinit)(,|$)/i.exec(value);
      if (m) checkPriv(ctx.state, auth, `/storage/${m[1]}`, ["Datastore.AllocateSpace"]);
      else {
        let file: string | undefined;
        try {
          file = parseDrive(value).file;
        } catch {
          file = undefined; // a malformed drive is refused by the schema check that follows
        }
        if (file && !["none", "cdrom", "cloudinit"].includes(file) && !/:cloudinit$/.test(file))
          checkVolumeAccess(ctx, auth, file, vmid);
      }
    }
  }
  const args = [
    ...Object.entries(set).map(([k, v]) => `-${k} ${v}`),
    ...(del.length ? [`-delete ${del.join(",")}`] : []),
    ...(revert.length ? [`-revert ${revert.join(",")}`] : []),
  ];
  const digest = str(p, "digest");
  return {
    node,
    vmid,
    set,
    del,
    revert,
    force: bool(p, "force") ?? false,
    skiplock,
    ...(digest ? { digest } : {}),
    summary: `update VM ${vmid}: ${args.join(" ")}`,
  };
}

/** A value as the config API stores it: tags normalised, `current=` dropped from memory, NICs with a MAC. */
export function normaliseValue(key: string, value: string, current: Record<string, string>): string {
  if (key === "tags") {
    const r = normaliseTags(value);
    return "tags" in r ? r.tags : value;
  }
  if (key === "memory") return value.replace(/^current=/, "");
  if (NET_KEY.test(key)) {
    const nic = parseNic(value, key);
    if (typeof nic === "string") throw paramError({ [key]: nic });
    if (!nic.mac) {
      // Re-setting a NIC keeps its MAC; only a new NIC gets a fresh one.
      const old = current[key] ? parseNic(current[key]!, key) : undefined;
      nic.mac = old && typeof old !== "string" && old.mac ? old.mac : randomMac();
    }
    return printNic(nic);
  }
  return value;
}

/** The update itself, under the VM's config flock (PUT: synchronously; POST: inside a task). */
function applyUpdate(ctx: Ctx, req: UpdateRequest): UpdateResult {
  const vm = getVm(ctx, req.node, req.vmid);
  checkLock(ctx, vm, req.skiplock);
  if (req.digest && req.digest !== configDigest(vm))
    throw fail("checksum mismatch (file change by other user?)");
  const warnings: string[] = [];
  const running = vm.runtime.status === "running";
  const merged = mergedConfig(vm);

  // check_protection: with `protection: 1` no disk may leave the config (checked before anything changes).
  if (vm.config["protection"] === "1") {
    for (const key of req.del) {
      const value = merged[key];
      if (value === undefined) continue;
      if (UNUSED_KEY.test(key)) {
        throw fail(`can't remove unused disk '${parseDrive(value).file}' - protection mode enabled`);
      }
      if (DRIVE_KEY.test(key)) throw fail(`can't remove drive '${key}' - protection mode enabled`);
    }
  }

  for (const key of req.del) {
    if (merged[key] === undefined) {
      warnings.push(`cannot delete '${key}' - not set in current configuration!`);
      continue;
    }
    if (running && !isHotpluggable(key)) {
      delete vm.pending[key];
      if (!vm.pendingDelete.includes(key)) vm.pendingDelete.push(key);
      continue;
    }
    delete vm.pending[key];
    vm.pendingDelete = vm.pendingDelete.filter((k) => k !== key);
    if (DRIVE_KEY.test(key)) unplugDrive(ctx, vm, key);
    if (DRIVE_KEY.test(key) || UNUSED_KEY.test(key)) detachDrive(ctx, vm, key, req.force, warnings);
    else delete vm.config[key];
  }

  for (const key of Object.keys(req.set).sort()) {
    let value = normaliseValue(key, req.set[key]!, merged);
    if (DRIVE_KEY.test(key) || UNUSED_KEY.test(key)) {
      value = materialiseDrive(ctx, vm, key, value);
      const old = vm.config[key];
      if (old !== undefined && DRIVE_KEY.test(key)) {
        const oldDrive = parseDrive(old);
        const newFile = parseDrive(value).file;
        if (oldDrive.file !== newFile && !isCdrom(oldDrive) && ownsVolume(ctx, vm.vmid, oldDrive.file)) {
          addUnused(vm, oldDrive.file);
        }
      }
    }
    vm.pendingDelete = vm.pendingDelete.filter((k) => k !== key);
    if (running && !isHotpluggable(key)) {
      vm.pending[key] = value;
    } else {
      if (running && DRIVE_KEY.test(key) && vm.config[key] !== value) hotplugDrive(ctx, vm, key, value);
      delete vm.pending[key];
      vm.config[key] = value;
    }
  }

  for (const key of req.revert) {
    delete vm.pending[key];
    vm.pendingDelete = vm.pendingDelete.filter((k) => k !== key);
  }
  return { summary: req.summary, warnings };
}

/** `PUT .../config`: synchronous, returns null. */
export function putConfig(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): UpdateResult {
  const req = prepareUpdate(ctx, auth, node, vmid, p);
  getVm(ctx, node, vmid);
  requireFlock(ctx, vmid);
  return applyUpdate(ctx, req);
}

/** `POST .../config`: the same update inside a `qmconfig` task. */
export function postConfig(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const req = prepareUpdate(ctx, auth, node, vmid, p);
  getVm(ctx, node, vmid);
  return createTask(ctx, {
    node,
    type: "qmconfig",
    id: String(vmid),
    auth,
    op: { kind: "config", vmid, params: { request: JSON.stringify(req) } },
    locks: [{ vmid, shared: false }],
  });
}

registerTaskKind("config", {
  begin(ctx, task) {
    const req = JSON.parse(String(task.op.params["request"])) as UpdateRequest;
    const result = applyUpdate(ctx, req);
    task.log.push(result.summary, ...result.warnings);
    task.scratch["warnings"] = result.warnings.length;
    return { durationMs: ctx.control.task_ms };
  },
  finish() {},
  abort() {},
});

/** `PUT .../unlink`: like `delete=` for disks. */
export function unlinkDisks(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): UpdateResult {
  const idlist = str(p, "idlist") ?? "";
  const params: Params = { delete: idlist };
  if (p["force"] !== undefined) params["force"] = p["force"];
  return putConfig(ctx, auth, node, vmid, params);
}

// ---- resize ----

export function resizeDisk(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Config.Disk"]);
  getVm(ctx, node, vmid);
  return createTask(ctx, {
    node,
    type: "resize",
    id: String(vmid),
    auth,
    op: {
      kind: "resize",
      vmid,
      params: { disk: str(p, "disk"), size: str(p, "size"), skiplock: bool(p, "skiplock") ?? false },
    },
    locks: [{ vmid, shared: false }],
  });
}

registerTaskKind("resize", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    const disk = String(task.op.params["disk"]);
    const value = vm.config[disk];
    if (value === undefined) throw fail(`disk '${disk}' does not exist`);
    const drive = parseDrive(value);
    if (isCdrom(drive)) throw fail("you can't resize a cdrom");
    // Checked inside the worker, after the config is loaded (qemu-server API2/Qemu.pm:6023-6025).
    const storage = /^([^:/]+):/.exec(drive.file)?.[1];
    const who = parseAuthId(task.user);
    if (storage && who) checkPriv(ctx.state, who, `/storage/${storage}`, ["Datastore.AllocateSpace"]);
    const rec = findVolume(ctx.state, vm.node, drive.file);
    if (!rec) throw fail(`volume '${drive.file}' does not exist`);
    const m = /^(\+)?(.+)$/.exec(String(task.op.params["size"]))!;
    const amount = parseSize(m[2]!)!;
    const newSize = m[1] ? rec.size + amount : amount;
    if (newSize < rec.size) throw fail("shrinking disks is not supported");
    task.scratch["newSize"] = newSize;
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const disk = String(task.op.params["disk"]);
    const drive = parseDrive(vm.config[disk]!);
    const rec = findVolume(ctx.state, vm.node, drive.file);
    if (!rec) throw fail(`volume '${drive.file}' does not exist`);
    const newSize = Number(task.scratch["newSize"]);
    if (newSize === rec.size) return;
    resizeVolume(ctx, rec, newSize);
    setDriveProp(drive, "size", formatSize(newSize));
    vm.config[disk] = printDrive(drive);
    if (propsGet(drive.pairs, "format") === "qcow2" || rec.format === "qcow2")
      task.log.push("Image resized.");
  },
  abort() {},
});
