/**
 * `sandbox new` from the warm pool (docs/warm-pool.md): a RUNNING member of the profile's pool becomes
 * the caller's sandbox in one transaction (name, tags, keepalive, lease, the `pool_claim` intent and
 * the event), so two claims can never get the same member and a kill -9 leaves it either in the pool or
 * claimed, never both. Before that transaction one status read makes sure its VM still runs. The VM's name and tags in Proxmox follow under the sandbox's lock; the intent
 * makes start-up recovery set them if the daemon died first (sandbox/recovery/pool-claim.ts).
 */
import type { Profile } from "../../../config/profiles.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import { transitionSandbox } from "../../state/sandbox.js";
import type { Sandbox } from "../../store/sandboxes.js";
import { describe, isVmNotFound, vmRefOf } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { SandboxScope } from "../sandbox/guards.js";
import { recordEvent, reportStep } from "../sandbox/journal.js";
import { sandboxJson } from "../sandbox/json.js";
import type { CreateParams, WorkspacePlan } from "../sandbox/provision.js";
import { sandboxTags, vmTags } from "../sandbox/vm-config.js";
import { claimableStates } from "./removal.js";

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
 * caller then creates one the usual way). Members another operation holds (the reconciler, a removal)
 * are passed over. Each member tried is first checked in Proxmox (one status read, under its lock): a
 * member whose VM does not run is marked FAILED (the pool then removes and replaces it) and the next
 * one is tried.
 */
export async function claimPoolMember(
  scope: SandboxScope,
  profile: Profile,
  params: CreateParams,
  op: Operation,
): Promise<SandboxJson | undefined> {
  const { ctx, locks } = scope;
  const tried = new Set<number>();
  const claimable = claimableStates(profile.warm_pool_state === "paused");
  for (;;) {
    const member = ctx.store.sandboxes
      .list({ poolOf: profile.name })
      .find(
        (row) =>
          claimable.includes(row.state) &&
          !tried.has(row.vmid) &&
          !locks.isBusy(String(row.vmid)) &&
          !ctx.store.sandboxOps.get(row.vmid),
      );
    if (!member) return undefined;
    tried.add(member.vmid);
    const outcome = await claimHeld(scope, member.vmid, profile, params, op);
    if (outcome.kind === "claimed") return { ...sandboxJson(outcome.row), from_pool: true };
    if (outcome.kind === "unchecked") {
      // Proxmox did not answer the one read: the next member would fare no better, and a cold create
      // reports Proxmox's trouble with its own retries and hints.
      op.step(
        "pool",
        `could not check sandbox ${member.vmid} of the warm pool of ${profile.name} in Proxmox (${outcome.error}): provisioning one`,
      );
      return undefined;
    }
    if (outcome.kind === "not_running")
      op.step(
        "pool",
        `sandbox ${member.vmid} of the warm pool of ${profile.name} is not running in Proxmox (${outcome.state}): trying the next`,
      );
  }
}

type ClaimOutcome =
  | { kind: "claimed"; row: Sandbox }
  /** Claimed or removed by someone else between the pick and the lock. */
  | { kind: "taken" }
  | { kind: "not_running"; state: string }
  | { kind: "unchecked"; error: string };

/**
 * Take the member's lock (synchronously, before anything awaits: no other claim or removal picks it
 * from here on), check its VM runs, and claim it in one transaction. The lock is kept after the answer
 * until the VM's name and tags are set in Proxmox, so no other operation on it runs first; the caller
 * has its answer as soon as the claim commits.
 */
function claimHeld(
  { ctx, locks }: SandboxScope,
  vmid: number,
  profile: Profile,
  params: CreateParams,
  op: Operation,
): Promise<ClaimOutcome> {
  return new Promise<ClaimOutcome>((resolve) => {
    void locks.run(String(vmid), async () => {
      let outcome: ClaimOutcome;
      try {
        outcome = await verifyAndClaim(ctx, vmid, profile, params, op);
      } catch (error) {
        outcome = { kind: "unchecked", error: describe(error) };
      }
      if (outcome.kind === "claimed")
        reportStep(
          op,
          vmid,
          "claim",
          `claimed sandbox ${vmid} from the warm pool of ${profile.name}: running at ${outcome.row.ip ?? "an unknown address"}`,
        );
      resolve(outcome);
      if (outcome.kind === "claimed") await applyClaimedIdentity(ctx, outcome.row, op);
    });
  });
}

/**
 * Under the member's lock: one status read (a paused pool's member: its resume), then the claim's
 * transaction, or the member settled FAILED.
 */
async function verifyAndClaim(
  ctx: DaemonContext,
  vmid: number,
  profile: Profile,
  params: CreateParams,
  op: Operation,
): Promise<ClaimOutcome> {
  const claimable = claimableStates(profile.warm_pool_state === "paused");
  const isFree = (row: Sandbox | undefined): row is Sandbox =>
    row?.pool === profile.name && claimable.includes(row.state) && !ctx.store.sandboxOps.get(vmid);
  const seen = ctx.store.sandboxes.get(vmid);
  if (!isFree(seen)) return { kind: "taken" };
  const readState = async (): Promise<string> => {
    try {
      return (await ctx.backend.status(vmRefOf(ctx, seen))).state;
    } catch (error) {
      if (!isVmNotFound(error)) throw error;
      return "missing";
    }
  };
  let state: string;
  if (profile.warm_pool_state === "paused") {
    // Paused by the pool (paused.ts; its row may still say RUNNING if a crash came between the pause
    // and its record): resumed, the guest carries on with its address and network binding. Resumed
    // without a status read first, one Proxmox round trip less on the claim: qemu-server's resume
    // refuses a VM that does not run ("VM N not running") and returns at once for one that already
    // runs (vm_resume: query-status "running", "job done"). Only when it fails is the status read,
    // to tell a dead member from a failed resume.
    reportStep(op, vmid, "resume", `resuming sandbox ${vmid} of the warm pool of ${profile.name}`);
    try {
      await ctx.backend.resume(vmRefOf(ctx, seen), { signal: op.signal });
      state = "running";
    } catch (error) {
      state = await readState();
      if (state === "paused") throw error;
    }
  } else {
    state = await readState();
  }
  if (state !== "running") {
    // Nobody's sandbox: no confirming pass is needed, and FAILED makes the pool remove and replace it.
    const reason =
      state === "missing"
        ? "its VM no longer exists in Proxmox (found by a claim)"
        : `its VM was found ${state} by a claim`;
    ctx.store.tx(() => {
      const row = ctx.store.sandboxes.get(vmid);
      if (!isFree(row)) return;
      // A paused member (SUSPENDED) may not become FAILED (spec 4.1): STOPPED, what its VM is, and the
      // pool removes a stopped member just the same.
      transitionSandbox(ctx.store, vmid, row.state === "SUSPENDED" ? "STOPPED" : "FAILED", { reason });
    });
    op.log.warn({ vmid, state }, `warm pool of ${profile.name}: sandbox ${vmid} ${reason}`);
    return { kind: "not_running", state };
  }
  const ttl = params.ttl_minutes ?? profile.behavior.ttl_minutes_default;
  const tags = sandboxTags(params.tags ?? []);
  const claimed = ctx.store.tx((): Sandbox | undefined => {
    const member = ctx.store.sandboxes.get(vmid);
    if (!isFree(member)) return undefined;
    const now = ctx.clock.now();
    const name = params.name ?? member.name;
    const patch = {
      pool: null,
      name,
      tags,
      keepalive: params.keepalive ?? profile.behavior.keepalive_default,
      lease_expires_at: ttl !== undefined && ttl > 0 ? new Date(now.getTime() + ttl * 60_000) : null,
      last_used_at: now,
    };
    // A paused member was resumed above (or by a claim a crash interrupted): its VM runs.
    const row =
      member.state === "SUSPENDED"
        ? transitionSandbox(ctx.store, vmid, "RUNNING", { patch })
        : ctx.store.sandboxes.update(vmid, patch, "RUNNING");
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
  return claimed ? { kind: "claimed", row: claimed } : { kind: "taken" };
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
