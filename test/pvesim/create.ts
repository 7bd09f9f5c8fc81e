/**
 * `POST /nodes/{node}/qemu` (and `qm create`): a new VM and its disks, task `qmcreate`.
 *
 * As in qemu-server's create_vm: the checks and `create_and_lock_config` run before the worker, so a
 * taken VMID is a synchronous `unable to create VM N - VM N already exists on node 'x'` and the new
 * VM is visible at once with nothing but `lock: create`. The worker allocates the disks
 * (`scsi0=<storage>:<GiB>` is a new volume, `scsi0=<volid>` references an existing one) and writes
 * the config; if anything fails it frees the volumes it made and removes the config.
 */
import { type AuthId, checkPriv } from "./access.js";
import { normaliseValue } from "./config-ops.js";
import { optionPrivilege } from "./config-schema.js";
import type { Ctx } from "./context.js";
import { isLvm } from "./devices.js";
import { materialiseDrive } from "./disks.js";
import { fail, PveError } from "./errors.js";
import { bootVm } from "./power.js";
import { bool, type Params, str } from "./schema.js";
import { findStorage, freeVolume, getStorage, parseVolname, volumeFile } from "./storage.js";
import { createTask, registerTaskKind, requireFlock } from "./tasks.js";
import type { ConfigMap, TaskRec, VmRec } from "./types.js";
import {
  DRIVE_KEY,
  isCdrom,
  NET_KEY,
  newSmbios,
  newVmgenid,
  parseDrive,
  printDrive,
  UNUSED_KEY,
} from "./vmconfig.js";
import { checkNode, findVm } from "./vms.js";

/** Parameters of the create call that are not VM options. */
export const CREATE_CONTROL_PARAMS = new Set(["node", "vmid", "pool", "start", "storage"]);

/** `[storage:]size` in a drive value: a new disk of that many GiB (the storage may default). */
const NEW_DISK = /^(?:([a-z][a-z0-9\-_.]*[a-z0-9]):)?(\d+(?:\.\d+)?)$/i;

export function createVm(ctx: Ctx, auth: AuthId, node: string, p: Params): TaskRec {
  const vmid = Number(p["vmid"]);
  checkNode(ctx, node);
  const pool = str(p, "pool");
  if (pool) throw new PveError(403, `Permission check failed (pool '${pool}' does not exist)`);
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Allocate"]);
  const defaultStorage = str(p, "storage");
  if (defaultStorage !== undefined) {
    checkPriv(ctx.state, auth, `/storage/${defaultStorage}`, ["Datastore.AllocateSpace"]);
  }
  const options: Record<string, string> = {};
  for (const [key, value] of Object.entries(p)) {
    if (CREATE_CONTROL_PARAMS.has(key) || value === undefined) continue;
    options[key] = typeof value === "boolean" ? (value ? "1" : "0") : String(value);
  }
  for (const key of Object.keys(options)) checkPriv(ctx.state, auth, `/vms/${vmid}`, [optionPrivilege(key)]);
  for (const [key, value] of Object.entries(options)) {
    if (NET_KEY.test(key)) {
      const bridge = /(?:^|,)bridge=([^,]+)/.exec(value)?.[1];
      if (bridge) checkPriv(ctx.state, auth, `/sdn/zones/localnetwork/${bridge}`, ["SDN.Use"]);
    }
    if (!DRIVE_KEY.test(key)) continue;
    const drive = parseDrive(value);
    const m = NEW_DISK.exec(drive.file);
    if (!m || isCdrom(drive)) continue;
    const sid = m[1] ?? defaultStorage;
    if (!sid) throw fail("no storage ID specified (and no default storage)");
    checkPriv(ctx.state, auth, `/storage/${sid}`, ["Datastore.AllocateSpace"]);
    const storage = findStorage(ctx.state, sid);
    if (!storage) throw fail(`storage '${sid}' does not exist`);
    if (!storage.content.includes("images")) {
      throw new PveError(400, "Parameter verification failed.", {
        errors: { storage: `storage '${sid}' does not support vm images` },
      });
    }
  }

  // create_and_lock_config: the VMID's flock (5 s), the cluster-wide check, then a config holding only the lock.
  requireFlock(ctx, vmid, 5000);
  const existing = findVm(ctx, vmid);
  if (existing) {
    throw fail(`unable to create VM ${vmid} - VM ${vmid} already exists on node '${existing.node}'`);
  }
  ctx.state.vms[String(vmid)] = {
    vmid,
    node,
    config: { lock: "create" },
    pending: {},
    pendingDelete: [],
    snapshots: {},
    runtime: { status: "stopped", qmpstatus: "stopped" },
    createdAt: ctx.now,
  };
  return createTask(ctx, {
    node,
    type: "qmcreate",
    id: String(vmid),
    auth,
    op: {
      kind: "create",
      vmid,
      params: {
        options: JSON.stringify(options),
        storage: defaultStorage,
        start: bool(p, "start") ?? false,
      },
    },
    locks: [{ vmid, shared: false }],
    // The worker takes the new VM's flock with a 1 s timeout.
    lockTimeoutMs: 1000,
  });
}

/** `boot: order=` as PVE defaults it: the first disk, the first cdrom, the first NIC. */
function defaultBoot(config: ConfigMap): string | undefined {
  const order = ["ide", "sata", "scsi", "virtio"];
  const drives = Object.keys(config)
    .filter((k) => DRIVE_KEY.test(k) && !/^(efidisk|tpmstate)/.test(k))
    .sort((a, b) => {
      const [, pa = "", na = "0"] = /^([a-z]+)(\d+)$/.exec(a) ?? [];
      const [, pb = "", nb = "0"] = /^([a-z]+)(\d+)$/.exec(b) ?? [];
      return order.indexOf(pa) - order.indexOf(pb) || Number(na) - Number(nb);
    });
  const disk = drives.find((k) => !isCdrom(parseDrive(config[k]!)));
  const cdrom = drives.find((k) => isCdrom(parseDrive(config[k]!)));
  const net = Object.keys(config)
    .filter((k) => NET_KEY.test(k))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))[0];
  const devices = [disk, cdrom, net].filter((d): d is string => d !== undefined);
  return devices.length > 0 ? `order=${devices.join(";")}` : undefined;
}

/** Frees what a failed create allocated and removes its config, as the qmcreate worker does. */
function undoCreate(ctx: Ctx, vm: VmRec | undefined, volids: string[]): void {
  for (const volid of volids) {
    try {
      if (vm) freeVolume(ctx, vm.node, volid);
    } catch {
      // already gone
    }
  }
  if (vm && vm.config["lock"] === "create") delete ctx.state.vms[String(vm.vmid)];
}

registerTaskKind("create", {
  begin(ctx, task) {
    const vmid = task.op.vmid;
    const prefix = `unable to create VM ${vmid} -`;
    const vm = findVm(ctx, vmid);
    if (!vm || vm.node !== task.node || vm.config["lock"] !== "create") {
      throw fail(`${prefix} Configuration file 'nodes/${task.node}/qemu-server/${vmid}.conf' does not exist`);
    }
    const options = JSON.parse(String(task.op.params["options"])) as Record<string, string>;
    const defaultStorage = task.op.params["storage"];
    const before = new Set(Object.keys(ctx.state.volumes));
    const created = (): string[] =>
      Object.keys(ctx.state.volumes)
        .filter((k) => !before.has(k))
        .map((k) => k.slice(k.indexOf("/") + 1));
    const config: ConfigMap = {};
    try {
      for (const key of Object.keys(options).sort()) {
        let value = options[key]!;
        if (DRIVE_KEY.test(key) || UNUSED_KEY.test(key)) {
          const drive = parseDrive(value);
          const m = NEW_DISK.exec(drive.file);
          if (m && !m[1] && DRIVE_KEY.test(key)) {
            drive.file = `${String(defaultStorage)}:${m[2]}`;
            value = printDrive(drive);
          }
          const known = new Set(Object.keys(ctx.state.volumes));
          value = materialiseDrive(ctx, vm, key, value);
          for (const k of Object.keys(ctx.state.volumes)) {
            if (known.has(k)) continue;
            const rec = ctx.state.volumes[k]!;
            const storage = getStorage(ctx.state, rec.storage);
            if (isLvm(storage)) {
              task.log.push(`  Logical volume "${parseVolname(storage, rec.volname).name}" created.`);
            } else if (storage.type === "dir" && rec.format === "qcow2") {
              task.log.push(
                `Formatting '${volumeFile(ctx.dir, storage, rec.volname)}', fmt=qcow2 cluster_size=65536 extended_l2=off preallocation=metadata compression_type=zlib size=${rec.size} lazy_refcounts=off refcount_bits=16`,
              );
            }
          }
        } else {
          value = normaliseValue(key, value, config);
        }
        config[key] = value;
      }
    } catch (err) {
      undoCreate(ctx, vm, created());
      if (err instanceof PveError) throw fail(`${prefix} ${err.message}`);
      throw err;
    }
    config["meta"] = `creation-qemu=9.2.0,ctime=${Math.floor(ctx.now / 1000)}`;
    if (config["smbios1"] === undefined) config["smbios1"] = newSmbios();
    if (config["vmgenid"] === undefined || config["vmgenid"] === "1") config["vmgenid"] = newVmgenid();
    if (config["boot"] === undefined) {
      const boot = defaultBoot(config);
      if (boot) config["boot"] = boot;
    }
    task.scratch["config"] = config;
    task.scratch["created"] = created();
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = findVm(ctx, task.op.vmid);
    if (!vm) throw fail(`unable to create VM ${task.op.vmid} - VM vanished during the create`);
    vm.config = task.scratch["config"] as ConfigMap;
    if (task.op.params["start"]) {
      task.log.push("Execute autostart");
      bootVm(ctx, vm, task.log);
    }
  },
  abort(ctx, task) {
    undoCreate(ctx, findVm(ctx, task.op.vmid), (task.scratch["created"] as string[] | undefined) ?? []);
    const prefix = `unable to create VM ${task.op.vmid} -`;
    if (task.failAtEnd && !task.failAtEnd.startsWith(prefix)) task.failAtEnd = `${prefix} ${task.failAtEnd}`;
  },
  discard(ctx, task) {
    undoCreate(ctx, findVm(ctx, task.op.vmid), []);
    const prefix = `unable to create VM ${task.op.vmid} -`;
    if (task.failAtEnd && !task.failAtEnd.startsWith(prefix)) task.failAtEnd = `${prefix} ${task.failAtEnd}`;
  },
});
