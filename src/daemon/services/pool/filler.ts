/**
 * The warm pool (docs/warm-pool.md): for every profile with `warm_pool: N`, keep N sandboxes provisioned
 * ahead (cloned, configured, booted to READY, the `clean` snapshot taken: a normal create with the
 * member flag), so that `sandbox new` can claim one (claim.ts). At most `warm_pool_concurrency` members
 * are provisioned at once, over all profiles.
 *
 * Level-triggered, from the database: a member is a row whose `pool` names its profile, so members
 * survive restarts and a crash mid-fill is settled by start-up recovery like any provisioning (the
 * filler starts only after that first pass). It tops up after each maintenance pass, each claim and
 * each fill that ends. A profile whose fill failed waits before the next try (doubling from 30 s to
 * 10 min), so a missing template does not become a busy loop.
 *
 * It also removes members (removal.ts decides which): dead ones (no claim can take them) are destroyed
 * and replaced, surplus ones (warm_pool lowered, profile removed) destroyed. One removal at a time per
 * pool, each under the member's lock and only if it still holds there (a user's claim wins). With
 * `warm_pool_state: paused` it pauses each member that reached RUNNING (paused.ts), in the same slot.
 */
import type { DaemonContext } from "../../context.js";
import type { SandboxState } from "../../store/sandboxes.js";
import { describe } from "../maintenance-steps.js";
import { backgroundOperation } from "../operation.js";
import type { SandboxService } from "../sandboxes.js";
import { pauseMember } from "./paused.js";
import {
  claimableStates,
  nextRemoval,
  type PoolSpec,
  REMOVED_EVENT,
  type Removal,
  stillRemovable,
} from "./removal.js";

/** One pool's fill, as `agentlab status` shows it. */
export interface PoolFill {
  profile: string;
  /** warm_pool from the profile. */
  wanted: number;
  /** Members free to claim: RUNNING, or paused (SUSPENDED) in a pool with warm_pool_state: paused. */
  ready: number;
  /** Members being provisioned (reserved, cloning, booting). */
  filling: number;
  /** Why the last fill of this pool failed, while it waits to retry. */
  last_error?: string;
}

const FILLING_STATES: readonly SandboxState[] = ["REQUESTED", "PROVISIONING", "BOOTING", "READY"];
const RETRY_MIN_MS = 30_000;
const RETRY_MAX_MS = 10 * 60_000;

export class WarmPool {
  readonly #ctx: DaemonContext;
  readonly #sandboxes: SandboxService;
  readonly #abort = new AbortController();
  /** Fills started whose VMID is not reserved yet, by profile (reserved ones are rows). */
  readonly #unreserved = new Map<string, number>();
  readonly #inFlight = new Set<Promise<void>>();
  readonly #failures = new Map<string, { count: number; retryAt: number; error: string }>();
  /** Profiles with a removal or pause in flight (one at a time per pool), and those in flight. */
  readonly #removing = new Set<string>();
  readonly #removals = new Set<Promise<void>>();
  /** Members whose removal or pause failed, with when to try again (Proxmox down must not busy-loop). */
  readonly #removalRetryAt = new Map<number, number>();
  #started = false;

  constructor(ctx: DaemonContext, sandboxes: SandboxService) {
    this.#ctx = ctx;
    this.#sandboxes = sandboxes;
  }

  /** Profiles that have a pool, with their wanted size. */
  #wanted(): Array<{ profile: string; wanted: number }> {
    return this.#ctx.profiles
      .filter((p) => p.warm_pool > 0)
      .map((p) => ({ profile: p.name, wanted: p.warm_pool }));
  }

  /** Each pool's fill now: every profile with warm_pool > 0, and any profile that still has members. */
  fill(): PoolFill[] {
    const wanted = new Map(this.#wanted().map((w) => [w.profile, w.wanted]));
    const rows = this.#ctx.store.sandboxes.list().filter((row) => row.pool !== null);
    for (const row of rows) if (row.pool !== null && !wanted.has(row.pool)) wanted.set(row.pool, 0);
    return [...wanted.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([profile, n]) => {
        const members = rows.filter((row) => row.pool === profile);
        const failure = this.#failures.get(profile);
        return {
          profile,
          wanted: n,
          ready: members.filter((row) => claimableStates(this.#spec(profile).paused).includes(row.state))
            .length,
          filling:
            members.filter((row) => FILLING_STATES.includes(row.state)).length +
            (this.#unreserved.get(profile) ?? 0),
          ...(failure ? { last_error: failure.error } : {}),
        };
      });
  }

  /** Start filling (after start-up recovery settled what the last process left). Idempotent. */
  start(): void {
    this.#started = true;
    this.kick();
  }

  /**
   * Start the next removal of each pool that has one to do, and as many fills as the pools lack and the
   * budget allows. Cheap: database reads only.
   */
  kick(): void {
    if (!this.#started || this.#abort.signal.aborted) return;
    const now = this.#ctx.clock.now().getTime();
    for (const pool of this.fill()) {
      this.#removeNext(pool.profile, now);
      const failure = this.#failures.get(pool.profile);
      if (failure && failure.retryAt > now) continue;
      let lacking = pool.wanted - pool.ready - pool.filling;
      while (lacking > 0 && this.#inFlight.size < this.#ctx.config.warm_pool_concurrency) {
        this.#launch(pool.profile);
        lacking--;
        // One try at a time while a pool is failing: its outcome decides the next.
        if (failure) break;
      }
    }
  }

  /** The pool as its profile says now (a reload may have changed or removed it). */
  #spec(profile: string): PoolSpec {
    const found = this.#ctx.profiles.find((p) => p.name === profile);
    return { profile, wanted: found?.warm_pool, paused: found?.warm_pool_state === "paused" };
  }

  #members(profile: string) {
    return this.#ctx.store.sandboxes.list({ poolOf: profile });
  }

  #removeNext(profile: string, now: number): void {
    if (this.#removing.has(profile)) return;
    const spec = this.#spec(profile);
    const members = this.#members(profile);
    const skip = (vmid: number) =>
      this.#sandboxes.isBusy(vmid) ||
      this.#ctx.store.sandboxOps.get(vmid) !== undefined ||
      (this.#removalRetryAt.get(vmid) ?? 0) > now;
    const removal = nextRemoval(spec, members, skip);
    if (removal) {
      this.#remove(removal);
      return;
    }
    const unpaused = spec.paused && members.find((row) => row.state === "RUNNING" && !skip(row.vmid));
    if (unpaused) this.#pause(profile, unpaused.vmid);
  }

  #pause(profile: string, vmid: number): void {
    const log = this.#ctx.log.child({ task: "warm-pool", profile });
    const op = backgroundOperation(log, this.#abort.signal);
    this.#track(
      profile,
      this.#sandboxes
        .exclusive(vmid, () => pauseMember(this.#ctx, vmid, profile, op))
        .then(
          () => this.#removalRetryAt.delete(vmid),
          (error) => {
            this.#removalRetryAt.set(vmid, this.#ctx.clock.now().getTime() + RETRY_MIN_MS);
            log.warn(
              { vmid, err: error },
              `warm pool of ${profile}: could not pause sandbox ${vmid}: ${describe(error)}; retrying in ${RETRY_MIN_MS / 1000}s`,
            );
          },
        ),
    );
  }

  /** Hold the pool's upkeep slot until `work` ends, then look again. */
  #track(profile: string, work: Promise<unknown>): void {
    this.#removing.add(profile);
    const done = work
      .then(() => undefined)
      .finally(() => {
        this.#removing.delete(profile);
        this.#removals.delete(done);
        this.kick();
      });
    this.#removals.add(done);
  }

  #remove(removal: Removal): void {
    const { profile, vmid, reason } = removal;
    const log = this.#ctx.log.child({ task: "warm-pool", profile });
    const op = backgroundOperation(log, this.#abort.signal);
    const message = `removed from the warm pool of ${profile}: ${reason}`;
    const removed = this.#sandboxes
      .destroyIf(vmid, op, {
        ifStill: (row) => stillRemovable(removal, row, this.#members(profile), this.#spec(profile)),
        record: { kind: REMOVED_EVENT, message, payload: { profile, kind: removal.kind, reason } },
      })
      .then(
        (destroyed) => {
          this.#removalRetryAt.delete(vmid);
          if (destroyed) log.info({ vmid, reason }, `warm pool of ${profile}: sandbox ${vmid} ${message}`);
        },
        (error) => {
          this.#removalRetryAt.set(vmid, this.#ctx.clock.now().getTime() + RETRY_MIN_MS);
          log.warn(
            { vmid, err: error },
            `warm pool of ${profile}: could not remove sandbox ${vmid} (${reason}): ${describe(error)}; retrying in ${RETRY_MIN_MS / 1000}s`,
          );
        },
      );
    this.#track(profile, removed);
  }

  #launch(profile: string): void {
    this.#unreserved.set(profile, (this.#unreserved.get(profile) ?? 0) + 1);
    let reserved = false;
    const release = () => {
      if (reserved) return;
      reserved = true;
      this.#unreserved.set(profile, (this.#unreserved.get(profile) ?? 1) - 1);
    };
    const log = this.#ctx.log.child({ task: "warm-pool", profile });
    const op = backgroundOperation(log, this.#abort.signal);
    const fill = this.#sandboxes
      .create({ profile, pool: { onReserved: release } }, op)
      .then(
        (row) => {
          this.#failures.delete(profile);
          log.info({ vmid: row.vmid }, `warm pool of ${profile}: sandbox ${row.vmid} is ready to claim`);
        },
        (error) => {
          if (this.#abort.signal.aborted) return;
          const previous = this.#failures.get(profile)?.count ?? 0;
          const waitMs = Math.min(RETRY_MIN_MS * 2 ** previous, RETRY_MAX_MS);
          this.#failures.set(profile, {
            count: previous + 1,
            retryAt: this.#ctx.clock.now().getTime() + waitMs,
            error: describe(error),
          });
          log.warn(
            { err: error, retry_in_ms: waitMs },
            `warm pool of ${profile}: could not provision a member: ${describe(error)}; retrying in ${Math.round(waitMs / 1000)}s`,
          );
        },
      )
      .finally(() => {
        release();
        this.#inFlight.delete(fill);
        this.kick();
      });
    this.#inFlight.add(fill);
  }

  /**
   * No more fills or removals; the fills in flight are cancelled (their provisioning rolls back like a
   * cancelled `sandbox new`), and they and the removals in flight waited for up to `graceMs`. True
   * when they all ended in time.
   */
  async stop(graceMs: number): Promise<boolean> {
    this.#abort.abort(new Error("the daemon is stopping"));
    const running = [...this.#inFlight, ...this.#removals];
    if (running.length === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    try {
      return await Promise.race([Promise.all(running).then(() => true), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
