/**
 * Which warm pool member goes (docs/warm-pool.md, "Removing members"): a member no claim can take (its
 * VM stopped, failed, or paused in a pool whose members wait running) is dead weight, and members beyond `warm_pool` (lowered,
 * or the profile removed) are surplus. Pure decisions on database rows: the pool (filler.ts) carries
 * them out one at a time per pool, and asks `stillRemovable` again under the member's lock, so a member
 * a user claimed meanwhile is never destroyed.
 */
import type { Sandbox, SandboxState } from "../../store/sandboxes.js";

/** The event each removal ends with (the member's record goes DESTROYED with it). */
export const REMOVED_EVENT = "sandbox.pool.removed";

/** A pool as the removals see it, read from the profiles when asked. */
export interface PoolSpec {
  profile: string;
  /** warm_pool now, undefined when the profile no longer exists. */
  wanted: number | undefined;
  /** warm_pool_state: paused: members wait SUSPENDED (paused in RAM). */
  paused: boolean;
}

/**
 * Member states a claim takes: RUNNING, and in a paused pool SUSPENDED too (the claim resumes it). A
 * RUNNING member of a paused pool is one not paused yet (the pool pauses it next).
 */
export function claimableStates(paused: boolean): readonly SandboxState[] {
  return paused ? ["RUNNING", "SUSPENDED"] : ["RUNNING"];
}

/**
 * Member states a claim never takes and no fill is working on (those are REQUESTED to READY): such a
 * member only holds a VMID, memory and a place in the pool. SUSPENDED is one in a running pool (an
 * operator's `sandbox pause`, or a pool switched from paused to running).
 */
function isDead(state: SandboxState, paused: boolean): boolean {
  return ["STOPPED", "COMPLETED", "FAILED", "TIMEOUT"].includes(state) || (state === "SUSPENDED" && !paused);
}

export interface Removal {
  vmid: number;
  profile: string;
  kind: "dead" | "surplus";
  /** Why, as the event and the log say it. */
  reason: string;
}

/**
 * The next member of `profile`'s pool to remove, or undefined. Dead members first; then, while more
 * members are RUNNING than wanted, the unhealthiest (no address recorded) and then the oldest. Members
 * still being filled are not counted as surplus: a fill may yet fail, and once RUNNING a surplus one is
 * removed then. `skip` passes over members another operation holds or that wait to be retried.
 */
export function nextRemoval(
  { profile, wanted, paused }: PoolSpec,
  members: readonly Sandbox[],
  skip: (vmid: number) => boolean,
): Removal | undefined {
  const dead = members.find((row) => isDead(row.state, paused) && !skip(row.vmid));
  if (dead) return { vmid: dead.vmid, profile, kind: "dead", reason: deadReason(dead) };
  const ready = members.filter((row) => claimableStates(paused).includes(row.state));
  const want = wanted ?? 0;
  if (ready.length <= want) return undefined;
  const surplus = ready
    .filter((row) => !skip(row.vmid))
    .sort(
      (a, b) =>
        Number(a.ip !== null) - Number(b.ip !== null) || a.created_at.getTime() - b.created_at.getTime(),
    )[0];
  if (!surplus) return undefined;
  const why =
    wanted === undefined
      ? `the profile ${profile} no longer exists`
      : `warm_pool of ${profile} is ${wanted} and ${ready.length} members are ready`;
  return { vmid: surplus.vmid, profile, kind: "surplus", reason: `surplus: ${why}` };
}

function deadReason(row: Sandbox): string {
  const why = row.failure_reason ? ` (${row.failure_reason})` : "";
  return `it is ${row.state}${why}, so no claim can take it`;
}

/**
 * Asked under the member's lock on the row read there, with the pool's members and wanted size as they
 * are now: true when the removal decided earlier still holds. A member claimed since is no member; a
 * surplus one is surplus no more when a claim took another member meanwhile.
 */
export function stillRemovable(
  removal: Removal,
  row: Sandbox,
  members: readonly Sandbox[],
  { wanted, paused }: PoolSpec,
): boolean {
  if (row.pool !== removal.profile) return false;
  if (removal.kind === "dead") return isDead(row.state, paused);
  const ready = claimableStates(paused);
  if (!ready.includes(row.state)) return false;
  return members.filter((member) => ready.includes(member.state)).length > (wanted ?? 0);
}
