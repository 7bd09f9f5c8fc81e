/**
 * Power operations on a real QEMU (guests=qemu), as qemu-server's `_do_vm_stop` does them
 * (src/PVE/QemuServer.pm:6251-6333): stop = QMP `quit`; shutdown = the guest agent's `guest-shutdown`
 * when the agent is enabled and answers its ping, else QMP `system_powerdown`; then wait for the
 * process to end, up to the timeout (60 s by default), and with force `SIGTERM`, 10 s more, `SIGKILL`.
 * Pause/resume/reset are QMP `stop`/`cont`/`system_reset`.
 *
 * The waits are task polls (tasks.ts `poll`): the state lock is not held while QEMU winds down.
 */
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import { monitorSync } from "./monitor.js";
import { killQemu, qemuPaths, qmp, qmpOrFail, vmQemuPid } from "./qemu.js";
import type { TaskRec, VmRec } from "./types.js";
import { agentEnabled } from "./vmconfig.js";

const POLL_MS = 200;
const TERM_GRACE_MS = 10_000;

/** Whether the VM's running state is a real QEMU process. */
export const isReal = (vm: VmRec): boolean => vm.runtime.qemu !== undefined;

/**
 * Asks QEMU to go: `quit`, or (shutdown) the guest's own power-off. Records in the task what `pollExit`
 * needs: the deadline, and whether to force.
 */
export function requestExit(
  ctx: Ctx,
  task: TaskRec,
  vm: VmRec,
  how: { shutdown: boolean; timeoutS: number | undefined; force: boolean },
): void {
  const peer = `VM ${vm.vmid}`;
  if (how.shutdown) {
    let viaAgent = false;
    if (agentEnabled(vm.config["agent"])) {
      // qga_check_running's 3 s ping, and guest-shutdown sent with it; qemu-ga does not answer
      // guest-shutdown on success, so only its sync answer is awaited.
      const out = monitorSync(
        qemuPaths(ctx.dir, vm.vmid).qga,
        "qga",
        peer,
        { execute: "guest-shutdown" },
        3_000,
        true,
      );
      viaAgent = out.ok;
    }
    if (!viaAgent) qmpOrFail(ctx, vm, { execute: "system_powerdown" });
  } else {
    const out = qmp(ctx, vm, { execute: "quit" });
    if (!out.ok && vmQemuPid(ctx, vm)) {
      if (!how.force) throw fail("VM quit/powerdown failed");
      task.log.push("VM quit/powerdown failed - terminating now with SIGTERM");
      killQemu(ctx, vm, "SIGTERM");
      task.scratch["qemuPhase"] = "term";
    }
  }
  task.scratch["qemuDeadline"] = ctx.now + (how.timeoutS ?? 60) * 1000;
  task.scratch["qemuForce"] = how.force;
}

/** The task poll: QEMU gone → end; past the deadline → fail, or SIGTERM then SIGKILL when forced. */
export function pollExit(ctx: Ctx, task: TaskRec, vm: VmRec | undefined): number | undefined {
  if (!vm || !vmQemuPid(ctx, vm)) return undefined;
  const deadline = Number(task.scratch["qemuDeadline"] ?? 0);
  if (ctx.now < deadline) return ctx.now + POLL_MS;
  const phase = task.scratch["qemuPhase"];
  if (phase === "kill") return ctx.now + POLL_MS;
  if (phase === "term") {
    task.log.push("VM still running - terminating now with SIGKILL");
    killQemu(ctx, vm, "SIGKILL");
    task.scratch["qemuPhase"] = "kill";
    return ctx.now + POLL_MS;
  }
  if (!task.scratch["qemuForce"]) {
    task.failAtEnd = "VM quit/powerdown failed - got timeout";
    return undefined;
  }
  task.log.push("VM still running - terminating now with SIGTERM");
  killQemu(ctx, vm, "SIGTERM");
  task.scratch["qemuPhase"] = "term";
  task.scratch["qemuDeadline"] = ctx.now + TERM_GRACE_MS;
  return ctx.now + POLL_MS;
}

/** Kills the VM's QEMU at once and waits (briefly, synchronously) until it is gone. */
export function killAndWait(ctx: Ctx, vm: VmRec, ms = 5_000): void {
  if (!killQemu(ctx, vm, "SIGKILL")) return;
  const until = Date.now() + ms;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (vmQemuPid(ctx, vm) && Date.now() < until) Atomics.wait(nap, 0, 0, 20);
}
