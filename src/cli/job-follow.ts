/**
 * Follow a job until it ends: poll job.show, hand each new event to `onEvent` (the CLI prints them as
 * progress), and return the final job. Used by `job run --wait`, `job show --wait` and the init smoke test.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AgentlabError } from "../protocol/errors.js";
import type { JobDetail } from "../protocol/job.js";
import type { SandboxEvent } from "../protocol/sandbox.js";
import { TERMINAL_JOB_STATUSES } from "../protocol/states.js";
import { jobShow } from "../protocol/wire.js";
import type { CommandContext } from "./context.js";

export interface FollowOptions {
  /** Give up after this long (DAEMON_TIMEOUT, the job keeps running). */
  timeoutMs: number;
  /** Between polls; default 2 s. */
  intervalMs?: number;
  onEvent?: (event: SandboxEvent) => void;
  signal?: AbortSignal;
}

export async function followJob(ctx: CommandContext, id: string, options: FollowOptions): Promise<JobDetail> {
  const deadline = Date.now() + options.timeoutMs;
  let lastEvent = 0;
  for (;;) {
    const job = await ctx.call(jobShow, { id, events_tail: 200 });
    for (const event of job.events ?? []) {
      if (event.id > lastEvent) {
        lastEvent = event.id;
        options.onEvent?.(event);
      }
    }
    if (TERMINAL_JOB_STATUSES.includes(job.status)) return job;
    if (Date.now() >= deadline) {
      throw new AgentlabError(
        "DAEMON_TIMEOUT",
        `job ${id} is still ${job.status} after ${Math.round(options.timeoutMs / 1000)} s`,
        {
          hint: `it keeps running; check it with agentlab job show ${id}`,
          details: { job_id: id, status: job.status },
        },
      );
    }
    await sleep(options.intervalMs ?? 2_000, undefined, options.signal ? { signal: options.signal } : {});
  }
}
