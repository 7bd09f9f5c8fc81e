/**
 * What the idle stopper (../idle-stop.ts) needs to know about a sandbox's use: the idle window its
 * profile and the daemon give it, and the use that goes through agentlab: `sandbox exec` calls in
 * flight (in memory, they end with the daemon) and the last use recorded in `last_used_at` (kept across
 * restarts), which exec and `agentlab ssh` (sandbox.touch, also while its session lasts) set.
 */

import { profileIdleStopMs } from "../../../config/profiles.js";
import type { DaemonContext } from "../../context.js";
import { ACTIVE_JOB_STATUSES } from "../../store/jobs.js";
import type { Sandbox } from "../../store/sandboxes.js";
import { getSandbox } from "./guards.js";

/** The event recorded when idle stop stops a sandbox (upstream's kind). */
export const IDLE_STOP_EVENT = "sandbox.idle_stop";

/** How idle stop applies to one sandbox: after `windowMs` of idleness, or not at all and why. */
export type IdlePolicy = { windowMs: number } | { windowMs: 0; off: string };

export function idlePolicy(ctx: DaemonContext, row: Sandbox): IdlePolicy {
  if (!ctx.config.idle_stop_enabled) return { windowMs: 0, off: "idle_stop_enabled is false" };
  // A warm pool member waits, unused, for its claim: stopping it would only empty the pool.
  if (row.pool) return { windowMs: 0, off: `warm pool member of ${row.pool} (kept running for a claim)` };
  const profile = ctx.profiles.find((p) => p.name === row.profile);
  const own = profile ? profileIdleStopMs(profile) : undefined;
  const windowMs = own ?? ctx.config.idle_stop_minutes_default * 60_000;
  if (windowMs <= 0) {
    return {
      windowMs: 0,
      off: own === undefined ? "idle_stop_minutes_default is 0" : "the profile turns it off",
    };
  }
  if (row.keepalive && !profile?.idle_stop_keepalive) {
    return { windowMs: 0, off: "keepalive sandbox (the profile's idle_stop_keepalive is not set)" };
  }
  return { windowMs };
}

/** Whether the sandbox's latest job is still queued or running: a job's sandbox is never idle. */
export function hasActiveJob(ctx: DaemonContext, vmid: number): boolean {
  const job = ctx.store.jobs.latestForSandbox(vmid);
  return job !== undefined && ACTIVE_JOB_STATUSES.includes(job.status);
}

export class SandboxActivity {
  private readonly sessions = new Map<number, number>();

  constructor(private readonly ctx: DaemonContext) {}

  /** Record a use now (sandbox.touch, the start and end of an exec). SANDBOX_NOT_FOUND for an unknown VMID. */
  touch(vmid: number): Sandbox {
    getSandbox(this.ctx, vmid);
    const row = this.ctx.store.sandboxes.update(vmid, { last_used_at: this.ctx.clock.now() });
    return row ?? getSandbox(this.ctx, vmid);
  }

  /** Run `work` as a session in the sandbox: the sandbox is in use from its start to its end. */
  async during<T>(vmid: number, work: () => Promise<T>): Promise<T> {
    this.sessions.set(vmid, (this.sessions.get(vmid) ?? 0) + 1);
    this.touchQuietly(vmid);
    try {
      return await work();
    } finally {
      const left = (this.sessions.get(vmid) ?? 1) - 1;
      if (left > 0) this.sessions.set(vmid, left);
      else this.sessions.delete(vmid);
      this.touchQuietly(vmid);
    }
  }

  /** Whether a session through the daemon (exec) is open in the sandbox now. */
  inSession(vmid: number): boolean {
    return this.sessions.has(vmid);
  }

  private touchQuietly(vmid: number): void {
    try {
      this.touch(vmid);
    } catch (error) {
      // The session's own call reports what is wrong with the sandbox; a missed touch only shortens idleness.
      this.ctx.log.debug({ vmid, err: error }, "could not record the sandbox's use");
    }
  }
}
