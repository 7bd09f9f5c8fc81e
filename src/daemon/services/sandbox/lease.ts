/**
 * `sandbox lease renew`: pushing back when the lease reaper takes a running sandbox away.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { SandboxState } from "../../store/sandboxes.js";
import { getSandbox } from "./guards.js";
import { recordEvent } from "./journal.js";

/**
 * Set a RUNNING sandbox's lease to end `ttlMinutes` from now. Check and write share one transaction
 * (and the write is conditional on RUNNING), so no lock is needed against a concurrent state change.
 */
export function renewLease(
  ctx: DaemonContext,
  vmid: number,
  ttlMinutes: number,
): { vmid: number; lease_expires_at: string } {
  const expires = new Date(ctx.clock.now().getTime() + ttlMinutes * 60_000);
  const updated = ctx.store.tx(() => {
    const row = getSandbox(ctx, vmid);
    if (row.state !== "RUNNING") {
      throw new AgentlabError(
        "LEASE_NOT_RENEWABLE",
        `sandbox lease not renewable: cannot renew lease in ${row.state} state. Valid states: RUNNING`,
        {
          hint: renewHint(row.state, vmid, row.profile),
          details: { vmid, state: row.state, valid: ["RUNNING"] },
        },
      );
    }
    const next = ctx.store.sandboxes.update(vmid, { lease_expires_at: expires }, "RUNNING");
    if (!next) throw new AgentlabError("CONFLICT", `sandbox ${vmid} changed state while renewing its lease`);
    recordEvent(ctx, vmid, "sandbox.lease", `lease renewed until ${expires.toISOString()}`, {
      expires_at: expires.toISOString(),
    });
    return next;
  });
  return { vmid, lease_expires_at: (updated.lease_expires_at ?? expires).toISOString() };
}

/** What to do instead of renewing: bring it back, wait for it, or start over (a gone one needs no destroy). */
function renewHint(state: SandboxState, vmid: number, profile: string): string {
  const fresh = `agentlab sandbox new --profile ${profile} --ttl <ttl>`;
  switch (state) {
    case "STOPPED":
      return `bring it back first (agentlab sandbox start ${vmid}), then renew`;
    case "SUSPENDED":
      return `bring it back first (agentlab sandbox resume ${vmid}), then renew`;
    case "REQUESTED":
    case "PROVISIONING":
    case "BOOTING":
    case "READY":
      return `it is still starting: renew once it is RUNNING (agentlab sandbox show ${vmid})`;
    case "DESTROYED":
      return `sandbox ${vmid} no longer exists; for a new one: ${fresh}`;
    default:
      return `a ${state} sandbox cannot be renewed: agentlab sandbox destroy --force ${vmid}, then ${fresh}`;
  }
}
