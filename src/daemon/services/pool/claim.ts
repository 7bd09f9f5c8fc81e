/**
 * `sandbox new` from the warm pool (docs/warm-pool.md): a RUNNING member of the profile's pool becomes
 * the caller's sandbox in one transaction (name, tags, keepalive, lease, the `pool_claim` intent and
 * the event), so two claims can never get the same member and a kill -9 leaves it either in the pool or
 * claimed, never both. The VM's name and tags in Proxmox follow under the sandbox's lock; the intent
 * makes start-up recovery set them if the daemon died first (sandbox/recovery/pool-claim.ts).
 */
import type { Profile } from "../../../config/profiles.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import type { Sandbox } from "../../store/sandboxes.js";
import { describe, vmRefOf } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { SandboxScope } from "../sandbox/guards.js";
import { recordEvent, reportStep } from "../sandbox/journal.js";
import { sandboxJson } from "../sandbox/json.js";
import type { CreateParams, WorkspacePlan } from "../sandbox/provision.js";
import { sandboxTags, vmTags } from "../sandbox/vm-config.js";

export const CLAIMED_EVENT = "sandbox.pool.claimed";

/**
 * Why this request cannot be served by a pool member (undefined: it can). A member was cloned, booted
 * and snapshotted already, so what must happen before the first boot or at the clone cannot be given.
 */
export function poolRefusal(params: CreateParams, plan: WorkspacePlan | undefined): string | undefined {
  if (params.pool !== undefined) return "it provisions a pool member";
  if (plan !== undefined || params.workspace !== undefined)
    return "a workspace is attached before the first boot";
  if (params.vmid !== undefined) return "an explicit VMID was asked for";
  if (params.jobId !== undefined) return "a job's runner is installed at the first boot";
  return undefined;
}

/**
 * Claim a RUNNING member of `profile`'s pool for this request, or undefined when none is free (the
 * caller then creates one the usual way). Members another operation holds (the reconciler, a destroy)
 * are passed over.
 */
export function claimPoolMember(
  { ctx, locks }: SandboxScope,
  profile: Profile,
  params: CreateParams,
  op: Operation,
): SandboxJson | undefined {
  const ttl = params.ttl_minutes ?? profile.behavior.ttl_minutes_default;
  const tags = sandboxTags(params.tags ?? []);
  const claimed = ctx.store.tx((): Sandbox | undefined => {
    const member = ctx.store.sandboxes
      .list({ poolOf: profile.name, state: "RUNNING" })
      .find((row) => !locks.isBusy(String(row.vmid)) && !ctx.store.sandboxOps.get(row.vmid));
    if (!member) return undefined;
    const now = ctx.clock.now();
    const name = params.name ?? member.name;
    const row = ctx.store.sandboxes.update(
      member.vmid,
      {
        pool: null,
        name,
        tags,
        keepalive: params.keepalive ?? profile.behavior.keepalive_default,
        lease_expires_at: ttl !== undefined && ttl > 0 ? new Date(now.getTime() + ttl * 60_000) : null,
        last_used_at: now,
      },
      "RUNNING",
    );
    if (!row) return undefined;
    ctx.store.sandboxOps.begin(row.vmid, "pool_claim", { name, tags });
    recordEvent(ctx, row.vmid, CLAIMED_EVENT, `claimed from the warm pool of profile ${profile.name}`, {
      profile: profile.name,
      name,
      tags,
      waited_in_pool_ms: now.getTime() - member.updated_at.getTime(),
    });
    return row;
  });
  if (!claimed) return undefined;
  reportStep(
    op,
    claimed.vmid,
    "claim",
    `claimed sandbox ${claimed.vmid} from the warm pool of ${profile.name}: running at ${claimed.ip ?? "an unknown address"}`,
  );
  // Taken now, before anything can await: no other operation gets the VM before its identity is set.
  void locks.run(String(claimed.vmid), () => applyClaimedIdentity(ctx, claimed, op));
  return { ...sandboxJson(claimed), from_pool: true };
}

/**
 * Give the claimed VM its name and tags in Proxmox, as a cold create's clone and `qm set` would have,
 * and close the intent. A failure is recorded on the sandbox and logged, and the intent closed: the
 * sandbox works, only Proxmox shows the member's name and no tags (`sandbox show` has the event).
 * Runs holding the sandbox's lock; exported for start-up recovery.
 */
export async function applyClaimedIdentity(ctx: DaemonContext, row: Sandbox, op: Operation): Promise<void> {
  try {
    await ctx.backend.setConfig(vmRefOf(ctx, row), { name: row.name, tags: vmTags(row.tags) });
    ctx.store.sandboxOps.finish(row.vmid);
  } catch (error) {
    op.log.warn(
      { vmid: row.vmid, err: error },
      `claimed sandbox ${row.vmid}: could not set its name and tags in Proxmox: ${describe(error)}`,
    );
    ctx.store.tx(() => {
      recordEvent(
        ctx,
        row.vmid,
        "sandbox.pool.identity_failed",
        `could not set the VM's name and tags in Proxmox after the claim: ${describe(error)}; the sandbox works, Proxmox shows its pool name`,
        { error: describe(error) },
      );
      ctx.store.sandboxOps.finish(row.vmid);
    });
  }
}
