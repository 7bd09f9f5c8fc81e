/**
 * What a sandbox operation leaves behind as it goes: events in the store (what `sandbox logs` and
 * `sandbox show` read later) and steps for whoever started it (progress and the daemon log).
 */
import type { DaemonContext } from "../../context.js";
import { describe } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";

/** Append one event about a sandbox. */
export function recordEvent(
  ctx: DaemonContext,
  vmid: number,
  kind: string,
  msg: string,
  payload?: Record<string, unknown>,
): void {
  ctx.store.events.append({ kind, sandbox_vmid: vmid, msg, ...(payload ? { payload } : {}) });
}

/**
 * Report a step to the caller (progress) and to the log, with the sandbox it is about. The log line is
 * at debug unless `level` says otherwise: a `sandbox new` has eight steps, and each line at info was
 * a synchronous write to the journal per step (issue 15: the daemon's own time per create), saying what
 * the caller's progress and the sandbox's events (`sandbox logs`) already say. The lines that record a
 * change an operator may look for later (a sandbox running, a VM destroyed, a disk rolled back) pass
 * "info".
 */
export function reportStep(
  op: Operation,
  vmid: number,
  step: string,
  message: string,
  level: "debug" | "info" = "debug",
): void {
  op.step(step, message);
  op.log[level]({ vmid, step }, message);
}

/** Run one timed Proxmox-side action and record `<kind>.completed` or `<kind>.failed`. */
export async function recorded<T>(
  ctx: DaemonContext,
  vmid: number,
  kind: string,
  done: string,
  work: () => Promise<T>,
  payload: Record<string, unknown> = {},
): Promise<T> {
  const started = ctx.clock.now().getTime();
  try {
    const result = await work();
    recordEvent(ctx, vmid, `${kind}.completed`, done, {
      ...payload,
      duration_ms: ctx.clock.now().getTime() - started,
    });
    return result;
  } catch (error) {
    recordEvent(ctx, vmid, `${kind}.failed`, describe(error), {
      ...payload,
      duration_ms: ctx.clock.now().getTime() - started,
      error: describe(error),
    });
    throw error;
  }
}
