import { AgentlabError } from "../../protocol/errors.js";
import type { Store } from "../store/db.js";
import type { Sandbox, SandboxPatch, SandboxState } from "../store/sandboxes.js";

/**
 * The sandbox state machine (spec 4.1) as data: from each state, the states it may move to. Every
 * state change in the daemon goes through `transitionSandbox`, so this table is the whole truth.
 */
export const SANDBOX_TRANSITIONS: Readonly<Record<SandboxState, readonly SandboxState[]>> = {
  REQUESTED: ["PROVISIONING", "FAILED", "TIMEOUT", "DESTROYED"],
  PROVISIONING: ["BOOTING", "FAILED", "TIMEOUT", "DESTROYED"],
  BOOTING: ["READY", "FAILED", "TIMEOUT", "DESTROYED"],
  READY: ["RUNNING", "SUSPENDED", "STOPPED", "FAILED", "TIMEOUT", "DESTROYED"],
  RUNNING: ["SUSPENDED", "COMPLETED", "FAILED", "TIMEOUT", "STOPPED", "DESTROYED"],
  SUSPENDED: ["READY", "RUNNING", "STOPPED", "TIMEOUT", "DESTROYED"],
  COMPLETED: ["STOPPED", "DESTROYED"],
  FAILED: ["STOPPED", "DESTROYED"],
  TIMEOUT: ["STOPPED", "DESTROYED"],
  STOPPED: ["DESTROYED", "BOOTING", "READY", "RUNNING"],
  DESTROYED: [],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return SANDBOX_TRANSITIONS[from].includes(to);
}

export function invalidTransition(vmid: number, from: SandboxState, to: SandboxState): AgentlabError {
  return new AgentlabError("INVALID_TRANSITION", `invalid sandbox state transition: ${from} -> ${to}`, {
    details: { vmid, from, to, allowed: SANDBOX_TRANSITIONS[from] },
  });
}

export interface TransitionOptions {
  /** Stored as failure_reason when entering FAILED or TIMEOUT, and carried in the event. */
  reason?: string;
  /** Other columns to change in the same transaction (ip, lease, node, ...). */
  patch?: Omit<SandboxPatch, "state">;
}

/**
 * Move one sandbox to `to`: read, check the table, compare-and-set the row and append the
 * `sandbox.state` event, all in one transaction. Already being in `to` is success (idempotent), so a
 * retried step after a crash does not fail. A concurrent move that got there first makes the
 * compare-and-set miss, which is reported like any illegal move.
 */
export function transitionSandbox(
  store: Store,
  vmid: number,
  to: SandboxState,
  options: TransitionOptions = {},
): Sandbox {
  return store.tx(() => {
    const current = store.sandboxes.get(vmid);
    if (!current) {
      throw new AgentlabError("SANDBOX_NOT_FOUND", `sandbox not found: ${vmid}`, { details: { vmid } });
    }
    if (current.state === to) {
      return options.patch && Object.keys(options.patch).length > 0
        ? (store.sandboxes.update(vmid, options.patch, to) ?? current)
        : current;
    }
    if (!canTransition(current.state, to)) throw invalidTransition(vmid, current.state, to);
    const patch: SandboxPatch = { ...options.patch, state: to };
    if ((to === "FAILED" || to === "TIMEOUT") && options.reason !== undefined)
      patch.failure_reason = options.reason;
    // A sandbox that boots again is no longer failed; the old reason stays in its events only.
    if ((to === "BOOTING" || to === "READY" || to === "RUNNING") && current.failure_reason !== null) {
      patch.failure_reason = null;
    }
    const updated = store.sandboxes.update(vmid, patch, current.state);
    if (!updated) throw invalidTransition(vmid, current.state, to);
    store.events.append({
      kind: "sandbox.state",
      sandbox_vmid: vmid,
      msg: `${current.state} -> ${to}${options.reason ? `: ${options.reason}` : ""}`,
      payload: {
        from_state: current.state,
        to_state: to,
        ...(options.reason ? { reason: options.reason } : {}),
      },
    });
    return updated;
  });
}
