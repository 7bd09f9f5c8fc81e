/** Destroying VMs, turning them into templates, and removing them "behind the daemon's back". */
import { type AuthId, checkPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { isLvm } from "./devices.js";
import { referencedVolumes, tryFree } from "./disks.js";
import { CommandError, fail, PveError } from "./errors.js";
import { signalGuestHook } from "./guest.js";
import { haltVm } from "./power.js";
import { forgetQemu } from "./qemu.js";
import { bool, type Params } from "./schema.js";
import {
  convertToBase,
  findVolume,
  freeVolume,
  getStorage,
  linkedClonesOf,
  parseVolname,
  volidOf,
} from "./storage.js";
import { createTask, registerTaskKind } from "./tasks.js";
import type { TaskRec, VmRec } from "./types.js";
import { DRIVE_KEY, isCloudinitVolume, parseDrive, printDrive, volumeDrives } from "./vmconfig.js";
import { checkLock, findVm, getVm, isTemplate } from "./vms.js";

export function destroyVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Allocate"]);
  const vm = getVm(ctx, node, vmid);
  if (vm.runtime.status === "running") throw fail(`VM ${vmid} is running - destroy failed`);
  if (vm.config["protection"] === "1") throw fail(`can't remove VM ${vmid} - protection mode enabled`);
  return createTask(ctx, {
    node,
    type: "qmdestroy",
    id: String(vmid),
    auth,
    op: {
      kind: "destroy",
      vmid,
      params: {
        purge: bool(p, "purge") ?? false,
        unreferenced: bool(p, "destroy-unreferenced-disks") ?? false,
        skiplock: bool(p, "skiplock") ?? false,
      },
    },
    locks: [{ vmid, shared: false }],
  });
}

function ownedVolumes(ctx: Ctx, vm: VmRec, unreferenced: boolean): string[] {
  const volids = new Set(
    referencedVolumes(ctx, vm)
      .filter((v) => v.vmid === vm.vmid)
      .map(volidOf),
  );
  if (unreferenced) {
    for (const v of Object.values(ctx.state.volumes)) {
      if (v.node === vm.node && v.vmid === vm.vmid && v.content === "images") volids.add(volidOf(v));
    }
  }
  // Linked clones before their bases, so a template's own chain never blocks itself.
  return [...volids].sort((a, b) => Number(a.includes("base-")) - Number(b.includes("base-")));
}

registerTaskKind("destroy", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status === "running") throw fail(`VM ${vm.vmid} is running - destroy failed`);
    for (const volid of ownedVolumes(ctx, vm, Boolean(task.op.params["unreferenced"]))) {
      const rec = findVolume(ctx.state, vm.node, volid);
      if (!rec) continue;
      const info = parseVolname(getStorage(ctx.state, rec.storage), rec.volname);
      if (info.isBase && linkedClonesOf(ctx.state, rec).length > 0) {
        throw fail(`base volume '${volid}' is still in use by linked cloned`);
      }
    }
    vm.config["lock"] = "destroyed";
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    let warnings = 0;
    for (const volid of ownedVolumes(ctx, vm, Boolean(task.op.params["unreferenced"]))) {
      const rec = findVolume(ctx.state, vm.node, volid);
      if (!rec) continue;
      const storage = getStorage(ctx.state, rec.storage);
      try {
        freeVolume(ctx, vm.node, volid);
      } catch (err) {
        if (!(err instanceof PveError)) throw err;
        // destroy_vm only warns: the volume stays, the config goes anyway (`eval { vdisk_free }; warn`).
        if (err instanceof CommandError) task.log.push(...err.output);
        task.log.push(`WARN: Could not remove disk '${volid}', check manually: ${err.message}`);
        warnings++;
        continue;
      }
      if (isLvm(storage)) {
        task.log.push(`  Logical volume "${parseVolname(storage, rec.volname).name}" successfully removed.`);
      }
    }
    task.scratch["warnings"] = warnings;
    signalGuestHook(vm, "SIGTERM");
    forgetQemu(ctx, vm);
    delete ctx.state.vms[String(vm.vmid)];
  },
  abort(ctx, task) {
    const vm = findVm(ctx, task.op.vmid);
    if (vm?.config["lock"] === "destroyed") delete vm.config["lock"];
  },
});

export function templateVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Allocate"]);
  getVm(ctx, node, vmid);
  return createTask(ctx, {
    node,
    type: "qmtemplate",
    id: String(vmid),
    auth,
    op: { kind: "template", vmid, params: { disk: p["disk"] === undefined ? undefined : String(p["disk"]) } },
    locks: [{ vmid, shared: false }],
  });
}

/** Converts the VM's disks to base volumes and marks it a template. */
export function makeTemplate(ctx: Ctx, vm: VmRec, onlyDisk?: string, log: string[] = []): void {
  for (const { key, drive } of volumeDrives(vm.config)) {
    if (!DRIVE_KEY.test(key) || isCloudinitVolume(drive.file)) continue;
    if (onlyDisk && key !== onlyDisk) continue;
    const rec = findVolume(ctx.state, vm.node, drive.file);
    if (!rec) continue;
    const storage = getStorage(ctx.state, rec.storage);
    const before = parseVolname(storage, rec.volname).name;
    const updated = convertToBase(ctx, rec);
    if (storage.type === "lvmthin" && updated.volname !== rec.volname) {
      log.push(
        `  Renamed "${before}" to "${parseVolname(storage, updated.volname).name}" in volume group "pve"`,
      );
    }
    const d = parseDrive(vm.config[key]!);
    d.file = volidOf(updated);
    vm.config[key] = printDrive(d);
  }
  vm.config["template"] = "1";
}

registerTaskKind("template", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm);
    if (isTemplate(vm)) throw fail("you can't convert a template to a template");
    if (vm.runtime.status === "running") throw fail("you can't convert a VM to template if VM is running");
    if (Object.keys(vm.snapshots).length > 0)
      throw fail("unable to create template, because VM contains snapshots");
    return { durationMs: ctx.control.task_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const disk = task.op.params["disk"];
    makeTemplate(ctx, vm, disk === undefined ? undefined : String(disk), task.log);
  },
  abort() {},
});

/** A VM that vanishes without any Proxmox operation (someone ran `qm destroy` by hand). */
export function removeVmBehindBack(ctx: Ctx, vmid: number): boolean {
  const vm = findVm(ctx, vmid);
  if (!vm) return false;
  const warnings: string[] = [];
  // The VM vanishes with its process: a real QEMU must not keep writing to freed files.
  if (vm.runtime.qemu) haltVm(vm, ctx);
  for (const volid of ownedVolumes(ctx, vm, true)) tryFree(ctx, vm, volid, warnings);
  signalGuestHook(vm, "SIGTERM");
  forgetQemu(ctx, vm);
  delete ctx.state.vms[String(vmid)];
  return true;
}
