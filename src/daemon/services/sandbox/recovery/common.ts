/**
 * What the recovery of every interrupted sandbox operation shares: the scope it runs in, its outcome,
 * reading the VM's state (or learning that it is gone), and the ends every kind can reach (the VM is
 * gone; the sandbox settles in a state, with the `sandbox.recovered` event in the same transaction).
 */
import type { DaemonContext } from "../../../context.js";
import type { VmRef, VmStatus } from "../../../proxmox/types.js";
import { type TransitionOptions, transitionSandbox } from "../../../state/sandbox.js";
import type { SandboxOp, SandboxOpKind } from "../../../store/sandbox-ops.js";
import type { Sandbox, SandboxState } from "../../../store/sandboxes.js";
import { isVmNotFound } from "../../maintenance-steps.js";
import type { Operation } from "../../operation.js";
import { JOB_VM_MISSING_REASON, recordDestroyed } from "../destroy.js";
import { recordEvent } from "../journal.js";

export type OpOutcome =
  /** The operation was carried to its end: the row says what the user asked for, as Proxmox shows. */
  | "finished"
  /** The operation was undone or had not started in Proxmox: the row says what Proxmox shows. */
  | "undone"
  /** The VM no longer exists: the row is DESTROYED. */
  | "vm_gone";

export interface OpRecoveryResult {
  outcome: OpOutcome;
  message: string;
}

/** Everything a kind's recovery gets; it runs holding the sandbox's operation lock. */
export interface OpRecoveryScope {
  ctx: DaemonContext;
  op: Operation;
  intent: SandboxOp;
  row: Sandbox;
  vm: VmRef;
  /** Wait for Proxmox tasks still running on the VM (a dead daemon's stop, rollback, destroy...). */
  waitForTasks(): Promise<void>;
}

export type OpRecoverer = (scope: OpRecoveryScope) => Promise<OpRecoveryResult>;

/** The event every settled intent records, with the op kind and the outcome in its payload. */
export const RECOVERED_EVENT = "sandbox.recovered";

export function recoveredPayload(
  kind: SandboxOpKind | "vm_check",
  outcome: OpOutcome,
): Record<string, unknown> {
  return { op_kind: kind, outcome };
}

/** The VM's live status, or undefined when Proxmox says it does not exist. */
export async function liveStatus(ctx: DaemonContext, vm: VmRef): Promise<VmStatus | undefined> {
  try {
    return await ctx.backend.status(vm);
  } catch (error) {
    if (isVmNotFound(error)) return undefined;
    throw error;
  }
}

/**
 * The VM is gone: the record follows (DESTROYED, jobs FAILED, the workspace detached intact, the intent
 * closed), with the event saying why. Safe to repeat: recordDestroyed is.
 */
export async function settleVmGone(
  ctx: DaemonContext,
  row: Sandbox,
  why: string,
  kind: SandboxOpKind | "vm_check",
): Promise<OpRecoveryResult> {
  const message = `${row.state} -> DESTROYED: its VM no longer exists in Proxmox (${why})`;
  await recordDestroyed(ctx, row, message, RECOVERED_EVENT, {
    payload: recoveredPayload(kind, "vm_gone"),
    jobReason: JOB_VM_MISSING_REASON,
  });
  return { outcome: "vm_gone", message };
}

/**
 * Move the row to `to` (unless it is there already), record the recovery event and close the intent,
 * in one transaction.
 */
export function settleIntent(
  scope: OpRecoveryScope,
  to: SandboxState | undefined,
  result: OpRecoveryResult,
  options: TransitionOptions = {},
): OpRecoveryResult {
  const { ctx, row, intent } = scope;
  ctx.store.tx(() => {
    if (to !== undefined) transitionSandbox(ctx.store, row.vmid, to, options);
    recordEvent(
      ctx,
      row.vmid,
      RECOVERED_EVENT,
      result.message,
      recoveredPayload(intent.kind, result.outcome),
    );
    ctx.store.sandboxOps.finish(row.vmid);
  });
  return result;
}
