/**
 * `sandbox lease renew`: pushing back when the lease reaper takes a running sandbox away.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
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
          hint:
            row.state === "STOPPED" || row.state === "SUSPENDED"
              ? `bring it back first (agentlab sandbox ${row.state === "STOPPED" ? "start" : "resume"} ${vmid}), then renew`
              : `a ${row.state} sandbox cannot be renewed: agentlab sandbox destroy --force ${vmid}, then agentlab sandbox new --profile ${row.profile} --ttl <ttl>`,
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
