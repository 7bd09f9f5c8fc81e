/**
 * How a sandbox operation gets hold of its sandbox (the row, under the sandbox's operation lock), and
 * the refusals operations share, checked before anything is changed: the sandbox must exist, be in a
 * state the operation accepts, and (for operations on its VM) have a VM at all.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { KeyedMutex } from "../../locks.js";
import type { Sandbox, SandboxState } from "../../store/sandboxes.js";

/** States whose VM agentlab has finished setting up: everything but provisioning and DESTROYED. */
export const SETTLED_STATES: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "SUSPENDED",
  "STOPPED",
  "COMPLETED",
  "FAILED",
  "TIMEOUT",
];

/** The sandbox's row, or SANDBOX_NOT_FOUND. */
export function getSandbox(ctx: DaemonContext, vmid: number): Sandbox {
  const row = ctx.store.sandboxes.get(vmid);
  if (!row) {
    throw new AgentlabError("SANDBOX_NOT_FOUND", `sandbox not found: ${vmid}`, {
      hint: "list sandboxes with agentlab sandbox list --all",
      details: { vmid },
    });
  }
  return row;
}

/**
 * What an operation on a sandbox works with: the daemon's context and the per-VM operation locks, the
 * ones SandboxService owns and maintenance passes take too.
 */
export interface SandboxScope {
  ctx: DaemonContext;
  locks: KeyedMutex;
}

/**
 * Run `work` holding the sandbox's operation lock, on its row as read once the lock is held: a row read
 * earlier could be stale by the time the operation before it lets go.
 */
export function withSandbox<T>(
  ctx: DaemonContext,
  locks: KeyedMutex,
  vmid: number,
  work: (row: Sandbox) => Promise<T>,
): Promise<T> {
  return locks.run(String(vmid), () => work(getSandbox(ctx, vmid)));
}

/**
 * Refuse an operation outside its valid states, in upstream's wording. `accepted`, when given, is the
 * wider set really let through (the message still names only `valid`).
 */
export function requireState(
  row: Sandbox,
  verb: string,
  valid: readonly SandboxState[],
  options: { hint?: string; accepted?: readonly SandboxState[] } = {},
): void {
  if ((options.accepted ?? valid).includes(row.state)) return;
  throw new AgentlabError(
    "INVALID_STATE",
    `cannot ${verb} sandbox in ${row.state} state. Valid states: ${valid.join(", ")}`,
    {
      ...(options.hint ? { hint: options.hint } : {}),
      details: { vmid: row.vmid, state: row.state, valid: options.accepted ?? valid },
    },
  );
}

/** Refuse an operation on a sandbox whose provisioning failed before its VM was cloned. */
export function requireVm(row: Sandbox, verb: string): void {
  if (row.vm_created) return;
  throw new AgentlabError(
    "INVALID_STATE",
    `cannot ${verb} sandbox ${row.vmid}: it has no VM (its provisioning failed before the clone)`,
    {
      hint: `clear the entry with agentlab sandbox destroy --force ${row.vmid}`,
      details: { vmid: row.vmid, state: row.state },
    },
  );
}
