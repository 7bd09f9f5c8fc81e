/** Power operations (start, stop, shutdown, reboot, suspend, resume, reset) and their tasks. */
import { existsSync } from "node:fs";
import { type AuthId, checkPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { findFault, matchesVmid } from "./control.js";
import { activateVolumes } from "./disks.js";
import { fail } from "./errors.js";
import { signalGuestHook, startGuestHook } from "./guest.js";
import { writeStartRunFiles } from "./host-files.js";
import { plugNics } from "./nic-plug.js";
import { guestImage, launchQemu, qemuGone, qemuMode, qmpOrFail } from "./qemu.js";
import { isReal, killAndWait, pollExit, requestExit } from "./qemu-power.js";
import { bool, num, type Params } from "./schema.js";
import { findStorage, parseVolname, splitVolid, volumeFile } from "./storage.js";
import { createTask, failTaskNow, registerTaskKind } from "./tasks.js";
import type { TaskRec, VmRec } from "./types.js";
import {
  agentEnabled,
  DRIVE_KEY,
  isCloudinitVolume,
  mergedConfig,
  parseDrive,
  parseProps,
} from "./vmconfig.js";
import { checkLock, getVm, isTemplate } from "./vms.js";

/**
 * A fresh QEMU process: its NICs are plugged, pending changes apply, the agent comes up after the boot
 * time. With guests=qemu it is a real QEMU (qemu.ts), whose failure to start throws the start failure;
 * `log` gets its task log lines.
 */
export function bootVm(ctx: Ctx, vm: VmRec, log: string[] = []): void {
  const real = qemuMode(ctx.control);
  if (!real) plugNics(ctx, vm);
  activateVolumes(ctx, vm);
  vm.config = mergedConfig(vm);
  vm.pending = {};
  vm.pendingDelete = [];
  const rt = vm.runtime;
  if (real) {
    launchQemu(ctx, vm, log);
    rt.status = "running";
    rt.qmpstatus = "running";
    rt.startedAt = ctx.now;
    // The real agent answers when the guest has started it (routes.ts asks it).
    delete rt.agentReadyAt;
    return;
  }
  delete rt.qemu;
  rt.status = "running";
  rt.qmpstatus = "running";
  rt.pid = 100_000 + (ctx.state.nextPid++ % 3_000_000);
  rt.startedAt = ctx.now;
  if (agentEnabled(vm.config["agent"])) rt.agentReadyAt = ctx.now + ctx.control.agent_ready_ms;
  else delete rt.agentReadyAt;
  signalGuestHook(vm, "SIGTERM");
  startGuestHook(ctx, vm);
}

/** The VM's QEMU is gone (a real one is killed if it is still there: host reboot, rollback). */
export function haltVm(vm: VmRec, ctx?: Ctx): void {
  signalGuestHook(vm, "SIGTERM");
  if (ctx && isReal(vm)) {
    killAndWait(ctx, vm);
    qemuGone(ctx, vm);
  }
  vm.runtime = { status: "stopped", qmpstatus: "stopped" };
}

function clearHibernation(vm: VmRec): void {
  if (vm.config["lock"] === "suspended") delete vm.config["lock"];
  delete vm.config["vmstate"];
}

/** cicustom parts must be existing volumes of `snippets` content. */
function checkSnippets(ctx: Ctx, vm: VmRec): void {
  const cicustom = mergedConfig(vm)["cicustom"];
  if (!cicustom) return;
  for (const { value: volid } of parseProps(cicustom)) {
    const { storage, volname } = splitVolid(volid);
    const s = findStorage(ctx.state, storage);
    if (!s) throw fail(`storage '${storage}' does not exist`);
    let isSnippet = false;
    try {
      isSnippet = s.content.includes("snippets") && parseVolname(s, volname).content === "snippets";
    } catch {
      isSnippet = false;
    }
    if (!isSnippet) throw fail(`${volid} is not in the snippets directory`);
    if (!existsSync(volumeFile(ctx.dir, s, volname))) throw fail(`volume '${volid}' does not exist`);
  }
}

function powerTask(
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

function prepare(ctx: Ctx, auth: AuthId, node: string, vmid: number): VmRec {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.PowerMgmt"]);
  return getVm(ctx, node, vmid);
}

const hasCloudinitDrive = (vm: VmRec): boolean =>
  Object.entries(mergedConfig(vm)).some(
    ([k, v]) => DRIVE_KEY.test(k) && isCloudinitVolume(parseDrive(v).file),
  );

export function startVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  const task = powerTask(ctx, auth, node, vmid, "qmstart", "start", {
    skiplock: bool(p, "skiplock") ?? false,
  });
  // The worker (this process, for pvesh/qm) writes the cloud-init run dir and QEMU's run files (a real
  // QEMU writes its own).
  if (task.phase !== "done" && vm.runtime.status !== "running" && !isTemplate(vm) && !qemuMode(ctx.control)) {
    const failed = writeStartRunFiles(ctx.dir, vmid, hasCloudinitDrive(vm));
    if (failed) failTaskNow(ctx, task, failed.exitstatus, failed.log);
  }
  return task;
}

registerTaskKind("start", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (vm.config["lock"] !== "suspended") checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status === "running") throw fail(`VM ${vm.vmid} already running`);
    if (isTemplate(vm)) throw fail("you can't start a vm if it's a template");
    checkSnippets(ctx, vm);
    if (qemuMode(ctx.control)) {
      guestImage(ctx.control);
      return { durationMs: 0 };
    }
    if (hasCloudinitDrive(vm)) task.log.push("generating cloud-init ISO");
    return { durationMs: ctx.control.start_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    clearHibernation(vm);
    bootVm(ctx, vm, task.log);
  },
  abort() {},
});

export function stopVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  prepare(ctx, auth, node, vmid);
  return powerTask(ctx, auth, node, vmid, "qmstop", "stop", {
    skiplock: bool(p, "skiplock") ?? false,
    timeout: num(p, "timeout"),
  });
}

/** The task poll of the power operations that wait for a real QEMU to end. */
const pollQemuExit = (ctx: Ctx, task: TaskRec): number | undefined =>
  pollExit(ctx, task, ctx.state.vms[String(task.op.vmid)]);

registerTaskKind("stop", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (vm.config["lock"] !== "suspended") checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status === "running" && isReal(vm)) {
      const timeout = task.op.params["timeout"];
      requestExit(ctx, task, vm, {
        shutdown: false,
        timeoutS: timeout === undefined ? undefined : Number(timeout),
        force: true,
      });
      return { durationMs: 0 };
    }
    return { durationMs: vm.runtime.status === "running" ? ctx.control.stop_ms : ctx.control.fail_ms };
  },
  poll: pollQemuExit,
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    clearHibernation(vm);
    haltVm(vm, ctx);
  },
  abort() {},
});

export function shutdownVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  const forceStop = bool(p, "forceStop") ?? false;
  if (vm.runtime.qmpstatus === "paused" && !forceStop) throw fail("VM is paused - cannot shutdown");
  return powerTask(ctx, auth, node, vmid, "qmshutdown", "shutdown", {
    forceStop,
    timeout: num(p, "timeout"),
    skiplock: bool(p, "skiplock") ?? false,
  });
}

registerTaskKind("shutdown", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status !== "running") return { durationMs: ctx.control.fail_ms };
    if (isReal(vm)) {
      const timeout = task.op.params["timeout"];
      requestExit(ctx, task, vm, {
        shutdown: true,
        timeoutS: timeout === undefined ? undefined : Number(timeout),
        force: Boolean(task.op.params["forceStop"]),
      });
      return { durationMs: 0 };
    }
    const ignored = findFault(ctx.state, ctx.control, "shutdown_timeout", (a) => matchesVmid(a, vm.vmid), {
      consume: true,
      now: ctx.now,
    });
    if (ignored) {
      const timeout = task.op.params["timeout"];
      const duration = timeout !== undefined ? Number(timeout) * 1000 : ctx.control.shutdown_ms;
      if (task.op.params["forceStop"]) {
        task.scratch["forced"] = true;
        return { durationMs: duration };
      }
      return { durationMs: duration, failAtEnd: "VM quit/powerdown failed - got timeout" };
    }
    return { durationMs: ctx.control.shutdown_ms };
  },
  poll: pollQemuExit,
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (task.scratch["forced"]) task.log.push("VM quit/powerdown failed - terminating now with SIGTERM");
    haltVm(vm, ctx);
  },
  abort() {},
});

export function rebootVm(ctx: Ctx, auth: AuthId, node: string, vmid: number): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  if (vm.runtime.status !== "running") throw fail(`VM ${vmid} not running`);
  if (vm.runtime.qmpstatus === "paused") throw fail("VM is paused - cannot shutdown");
  return powerTask(ctx, auth, node, vmid, "qmreboot", "reboot", {});
}

registerTaskKind("reboot", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm);
    if (vm.runtime.status === "running" && isReal(vm)) {
      requestExit(ctx, task, vm, { shutdown: true, timeoutS: undefined, force: false });
      return { durationMs: 0 };
    }
    return { durationMs: ctx.control.shutdown_ms + ctx.control.start_ms };
  },
  poll: pollQemuExit,
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    haltVm(vm, ctx);
    bootVm(ctx, vm, task.log);
  },
  abort() {},
});

export function resetVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  if (vm.runtime.status !== "running") throw fail(`VM ${vmid} not running`);
  return powerTask(ctx, auth, node, vmid, "qmreset", "reset", { skiplock: bool(p, "skiplock") ?? false });
}

registerTaskKind("reset", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    return { durationMs: ctx.control.fail_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (isReal(vm)) {
      qmpOrFail(ctx, vm, { execute: "system_reset" });
      vm.runtime.startedAt = ctx.now;
      return;
    }
    // A reset keeps the QEMU process (and its config) but the guest boots again.
    const rt = vm.runtime;
    rt.startedAt = ctx.now;
    rt.qmpstatus = "running";
    if (rt.agentReadyAt !== undefined) rt.agentReadyAt = ctx.now + ctx.control.agent_ready_ms;
    signalGuestHook(vm, "SIGTERM");
    startGuestHook(ctx, vm);
  },
  abort() {},
});

export function suspendVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  if (vm.runtime.status !== "running") throw fail(`VM ${vmid} not running`);
  const todisk = bool(p, "todisk") ?? false;
  return powerTask(ctx, auth, node, vmid, todisk ? "qmsuspend" : "qmpause", "suspend", {
    todisk,
    skiplock: bool(p, "skiplock") ?? false,
    statestorage: p["statestorage"] === undefined ? undefined : String(p["statestorage"]),
  });
}

registerTaskKind("suspend", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status !== "running") throw fail(`VM ${vm.vmid} not running`);
    if (task.op.params["todisk"] && isReal(vm)) {
      throw fail("pvesim: suspend to disk is not modelled for real guests (guests=qemu); pause instead");
    }
    if (task.op.params["todisk"]) vm.config["lock"] = "suspending";
    return { durationMs: task.op.params["todisk"] ? ctx.control.stop_ms : ctx.control.fail_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (task.op.params["todisk"]) {
      const storage = String(task.op.params["statestorage"] ?? "local-zfs");
      const stamp = new Date(ctx.now).toISOString().slice(0, 10);
      haltVm(vm, ctx);
      vm.config["lock"] = "suspended";
      vm.config["vmstate"] = `${storage}:vm-${vm.vmid}-state-suspend-${stamp}`;
    } else {
      if (isReal(vm)) qmpOrFail(ctx, vm, { execute: "stop" });
      vm.runtime.qmpstatus = "paused";
      signalGuestHook(vm, "SIGSTOP");
    }
  },
  abort(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (vm.config["lock"] === "suspending") delete vm.config["lock"];
  },
});

export function resumeVm(ctx: Ctx, auth: AuthId, node: string, vmid: number, p: Params): TaskRec {
  const vm = prepare(ctx, auth, node, vmid);
  const hibernated = vm.config["lock"] === "suspended";
  if (vm.runtime.status !== "running" && !hibernated) throw fail(`VM ${vmid} not running`);
  return powerTask(ctx, auth, node, vmid, "qmresume", "resume", { skiplock: bool(p, "skiplock") ?? false });
}

registerTaskKind("resume", {
  begin(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    const hibernated = vm.config["lock"] === "suspended";
    if (!hibernated) checkLock(ctx, vm, Boolean(task.op.params["skiplock"]));
    if (vm.runtime.status !== "running" && !hibernated) throw fail(`VM ${vm.vmid} not running`);
    return { durationMs: hibernated ? ctx.control.start_ms : ctx.control.fail_ms };
  },
  finish(ctx, task) {
    const vm = getVm(ctx, task.node, task.op.vmid);
    if (vm.config["lock"] === "suspended") {
      clearHibernation(vm);
      bootVm(ctx, vm, task.log);
      return;
    }
    if (isReal(vm)) qmpOrFail(ctx, vm, { execute: "cont" });
    vm.runtime.qmpstatus = "running";
    signalGuestHook(vm, "SIGCONT");
  },
  abort() {},
});
