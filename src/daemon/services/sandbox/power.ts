/**
 * A sandbox's power state after provisioning: start (booting), stop, stop --all, pause and resume.
 * Each operation holds the sandbox's lock; bootSandbox and powerOff are the steps revert and stop
 * --all reuse, and expect the caller to hold it.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import type { VmRef } from "../../proxmox/types.js";
import { type TransitionOptions, transitionSandbox } from "../../state/sandbox.js";
import type { SandboxOpKind } from "../../store/sandbox-ops.js";
import type { Sandbox, SandboxState } from "../../store/sandboxes.js";
import { describe, vmRefOf, waitForVmTasks } from "../maintenance-steps.js";
import { mapLimit } from "../map-limit.js";
import type { Operation } from "../operation.js";
import { IDLE_STOP_EVENT } from "./activity.js";
import { requireState, requireVm, type SandboxScope, withSandbox } from "./guards.js";
import { waitForIp } from "./guest-address.js";
import { recorded, reportStep } from "./journal.js";
import { sandboxJson } from "./json.js";
import { networkModeOf } from "./network-binding.js";
import { netMac } from "./vm-config.js";

/** Sandboxes stopped at the same time by stop --all. */
const STOP_ALL_CONCURRENCY = 4;

export interface StopAllResult {
  total: number;
  stopped: number;
  skipped: number;
  failed: number;
  results: Array<{
    vmid: number;
    name: string;
    result: "stopped" | "skipped" | "failed";
    state: SandboxState;
    reason?: string;
  }>;
}

/**
 * STOPPED -> BOOTING, start the VM, wait for the guest's address, READY -> RUNNING. A failure leaves
 * the sandbox FAILED with `<what> failed: <reason>`. The caller holds the VMID's lock.
 */
export async function bootSandbox(
  ctx: DaemonContext,
  vmid: number,
  vm: VmRef,
  op: Operation,
  what: string,
): Promise<Sandbox> {
  // The intent (start, or a revert whose rollback is done) moves to "booting" with the row: from here a
  // restart finishes the boot rather than redoing what came before.
  ctx.store.tx(() => {
    transitionSandbox(ctx.store, vmid, "BOOTING");
    ctx.store.sandboxOps.setStep(vmid, "booting");
  });
  try {
    reportStep(op, vmid, "start", `starting VM ${vmid}`);
    await ctx.network?.beforeStart(vmid);
    await powerCall(ctx, vm, "running", () => ctx.backend.start(vm, { signal: op.signal }));
    reportStep(op, vmid, "wait-guest", "waiting for the guest to report its address");
    const ip = await waitForIp(ctx, vm, ctx.clock.now().getTime() + ctx.config.provisioning_timeout_ms, op);
    const ready = transitionSandbox(ctx.store, vmid, "READY", { patch: { ip } });
    if (ctx.network?.active) {
      const mode = networkModeOf(ctx, ready.profile);
      await ctx.network.bind(vmid, netMac((await ctx.backend.getConfig(vm)).net0), ip, mode);
    }
    return settleSandbox(ctx, vmid, "RUNNING");
  } catch (error) {
    settleSandbox(ctx, vmid, "FAILED", { reason: `${what} failed: ${describe(error)}` });
    throw error;
  }
}

/** How long a failed start or stop waits for the VM's tasks to end before it reads the VM's status. */
const POWER_TASK_WAIT_MS = 60_000;

/**
 * Run a start or stop call and, when it fails, ask the VM whether it was carried out anyway: Proxmox
 * may have run the task while its answer was lost (a 500 or a dropped connection on the task's poll, a
 * task stopped for outliving proxmox_task_timeout after it had done its work). A VM found `want` is the
 * call's success; otherwise, or when the status cannot be read, the call's own error stands. Without
 * this, a stop whose poll failed left the row RUNNING over a stopped VM (and the reconciler later
 * called it "stopped outside agentlab" and FAILED it), a start the row FAILED over a running VM.
 */
export async function powerCall(
  ctx: DaemonContext,
  vm: VmRef,
  want: "running" | "stopped",
  call: () => Promise<void>,
): Promise<void> {
  try {
    await call();
  } catch (error) {
    // The task may still be running (its poll is what failed, as soon as it was sent): let the VM's
    // tasks end before asking, for at most a minute (a start or stop whose answer was lost is at or near
    // its end); if that cannot be learned, the call's error stands.
    const waitMs = Math.min(ctx.config.proxmox_task_timeout_ms, POWER_TASK_WAIT_MS);
    const now = await waitForVmTasks(ctx.backend, vm, {
      waitMs,
      sleep: (ms, signal) => sleep(ms, undefined, { signal }),
      signal: AbortSignal.timeout(waitMs + 5_000),
    })
      .then(() => ctx.backend.status(vm))
      .catch(() => undefined);
    if (now?.state !== want) throw error;
    ctx.log.warn(
      { vmid: vm.vmid, err: error },
      `the call failed, but VM ${vm.vmid} is ${want}: it was carried out (${describe(error)})`,
    );
  }
}

/** Move the sandbox and close its operation's intent in one transaction (the operation's last commit). */
export function settleSandbox(
  ctx: DaemonContext,
  vmid: number,
  to: SandboxState,
  options: TransitionOptions = {},
): Sandbox {
  return ctx.store.tx(() => {
    const moved = transitionSandbox(ctx.store, vmid, to, options);
    ctx.store.sandboxOps.finish(vmid);
    return moved;
  });
}

/** Run `work` after recording `kind`'s intent; a failure closes the intent (the caller sees it). */
export async function withIntent<T>(
  ctx: DaemonContext,
  vmid: number,
  kind: SandboxOpKind,
  params: Record<string, unknown>,
  work: () => Promise<T>,
): Promise<T> {
  ctx.store.sandboxOps.begin(vmid, kind, params);
  try {
    return await work();
  } catch (error) {
    ctx.store.sandboxOps.finish(vmid);
    throw error;
  }
}

/** Hard-stop the VM and mark the sandbox STOPPED, with events. The caller holds the VMID's lock. */
async function powerOff(ctx: DaemonContext, row: Sandbox, op: Operation, progress = ""): Promise<Sandbox> {
  reportStep(op, row.vmid, "stop", `stopping VM ${row.vmid}${progress}`);
  return withIntent(ctx, row.vmid, "stop", {}, async () => {
    const vm = vmRefOf(ctx, row);
    await recorded(ctx, row.vmid, "sandbox.stop", "stopped", () =>
      powerCall(ctx, vm, "stopped", () => ctx.backend.stop(vm, { signal: op.signal })),
    );
    return settleSandbox(ctx, row.vmid, "STOPPED");
  });
}

export function startSandbox(
  { ctx, locks }: SandboxScope,
  vmid: number,
  op: Operation,
): Promise<SandboxJson> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    if (row.state === "RUNNING" || row.state === "READY") return sandboxJson(row);
    if (row.state !== "STOPPED") {
      throw new AgentlabError(
        "INVALID_STATE",
        `cannot start sandbox in ${row.state} state. Valid states: STOPPED`,
        {
          details: { vmid, state: row.state, valid: ["STOPPED"] },
        },
      );
    }
    return sandboxJson(
      await withIntent(ctx, vmid, "start", {}, () => bootSandbox(ctx, vmid, vmRefOf(ctx, row), op, "start")),
    );
  });
}

export function stopSandbox({ ctx, locks }: SandboxScope, vmid: number, op: Operation): Promise<SandboxJson> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    if (row.state === "STOPPED") return sandboxJson(row);
    requireState(row, "stop", ["READY", "RUNNING", "SUSPENDED"]);
    return sandboxJson(await powerOff(ctx, row, op));
  });
}

/**
 * The idle stopper's stop (../idle-stop.ts): under the sandbox's lock, a RUNNING sandbox that `stillIdle`
 * still finds idle (it returns the event's payload) is stopped as `sandbox stop` stops it: STOPPED, its
 * lease kept. The `sandbox.idle_stop` event goes first, so a stop a crash interrupts (finished by
 * start-up recovery) is still explained. A sandbox another operation holds is left for the next pass.
 * Undefined when nothing was stopped.
 */
export function idleStopSandbox(
  { ctx, locks }: SandboxScope,
  vmid: number,
  op: Operation,
  stillIdle: (row: Sandbox) => { msg: string; payload: Record<string, unknown> } | undefined,
): Promise<Sandbox | undefined> {
  if (locks.isBusy(String(vmid))) return Promise.resolve(undefined);
  return locks.run(String(vmid), async () => {
    const row = ctx.store.sandboxes.get(vmid);
    if (row?.state !== "RUNNING") return undefined;
    const idle = stillIdle(row);
    if (!idle) return undefined;
    ctx.store.events.append({ kind: IDLE_STOP_EVENT, sandbox_vmid: vmid, ...idle });
    return powerOff(ctx, row, op);
  });
}

/**
 * Stop every READY and RUNNING sandbox (warm pool members aside), a few at a time. Each stop takes its VMID's lock and looks
 * again: a sandbox that left READY/RUNNING meanwhile is skipped, a failed stop is reported and the
 * others go on.
 */
export async function stopAllSandboxes({ ctx, locks }: SandboxScope, op: Operation): Promise<StopAllResult> {
  // Warm pool members are nobody's sandboxes: a stopped one could not be claimed (docs/warm-pool.md).
  const candidates = ctx.store.sandboxes
    .list({ excludePool: true })
    .filter((row) => row.state === "READY" || row.state === "RUNNING");
  const total = candidates.length;
  ctx.store.events.append({
    kind: "sandbox.stop_all",
    msg: `stopping ${total} sandbox${total === 1 ? "" : "es"}`,
    payload: { total, vmids: candidates.map((row) => row.vmid) },
  });
  const results = await mapLimit(candidates, STOP_ALL_CONCURRENCY, (candidate, index) =>
    locks.run(String(candidate.vmid), async (): Promise<StopAllResult["results"][number]> => {
      const row = ctx.store.sandboxes.get(candidate.vmid) ?? candidate;
      const entry = { vmid: row.vmid, name: row.name };
      if (row.state !== "READY" && row.state !== "RUNNING") {
        return { ...entry, result: "skipped", state: row.state, reason: `it is ${row.state} now` };
      }
      try {
        const stopped = await powerOff(ctx, row, op, ` (${index + 1}/${total})`);
        return { ...entry, result: "stopped", state: stopped.state };
      } catch (error) {
        const state = ctx.store.sandboxes.get(row.vmid)?.state ?? row.state;
        return { ...entry, result: "failed", state, reason: describe(error) };
      }
    }),
  );
  const count = (result: string) => results.filter((r) => r.result === result).length;
  const summary = { total, stopped: count("stopped"), skipped: count("skipped"), failed: count("failed") };
  ctx.store.events.append({
    kind: "sandbox.stop_all.result",
    msg: `stopped ${summary.stopped} of ${total} (${summary.skipped} skipped, ${summary.failed} failed)`,
    payload: { ...summary, results },
  });
  return { ...summary, results };
}

/** Suspend to RAM: READY or RUNNING -> SUSPENDED. Memory, processes and the address are kept. */
export function pauseSandbox(
  { ctx, locks }: SandboxScope,
  vmid: number,
  op: Operation,
): Promise<SandboxJson> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    const hint = `it is paused already; resume it with agentlab sandbox resume ${vmid}`;
    requireState(row, "pause", ["READY", "RUNNING"], row.state === "SUSPENDED" ? { hint } : {});
    requireVm(row, "pause");
    reportStep(op, vmid, "suspend", `suspending VM ${vmid} to RAM`);
    await recorded(ctx, vmid, "sandbox.pause", "suspended to RAM", () =>
      ctx.backend.suspend(vmRefOf(ctx, row), { signal: op.signal }),
    );
    return sandboxJson(transitionSandbox(ctx.store, vmid, "SUSPENDED"));
  });
}

/** Resume from RAM: SUSPENDED -> RUNNING, where the guest carries on with the same address. */
export function resumeSandbox(
  { ctx, locks }: SandboxScope,
  vmid: number,
  op: Operation,
): Promise<SandboxJson> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    const hint = `a stopped sandbox is started, not resumed: agentlab sandbox start ${vmid}`;
    requireState(row, "resume", ["SUSPENDED"], row.state === "STOPPED" ? { hint } : {});
    requireVm(row, "resume");
    reportStep(op, vmid, "resume", `resuming VM ${vmid}`);
    await recorded(ctx, vmid, "sandbox.resume", "resumed", () =>
      ctx.backend.resume(vmRefOf(ctx, row), { signal: op.signal }),
    );
    return sandboxJson(transitionSandbox(ctx.store, vmid, "RUNNING"));
  });
}
