/**
 * How the simulator's call log is read as "calls per operation": the realistic timings the count is
 * taken at, and the split between task-status polls (their number follows how long tasks take) and the
 * other calls (fixed per operation). Shared by test/integration/proxmox-calls.test.ts, which bounds
 * them, and bench/calls.ts, which reports them.
 */
import type { CallStats } from "../pvesim/call-log.js";

/** The route of a task-status poll, as `callStats` keys it. */
export const TASK_POLL = "GET /nodes/{node}/tasks/{upid}/status";

/** A real host's pace: 50 ms per call, a 2 s linked clone, 1 s for every other task and the guest's boot. */
export const REALISTIC_KNOBS = {
  call_latency_ms: 50,
  clone_ms: 2000,
  start_ms: 1000,
  stop_ms: 1000,
  shutdown_ms: 1000,
  task_ms: 1000,
  agent_ready_ms: 1000,
};

/** Calls that are not task-status polls, polls, and the calls that start a task (POST/PUT/DELETE). */
export function splitCalls(stats: Pick<CallStats, "total" | "byRoute">): {
  other: number;
  polls: number;
  writes: number;
} {
  const polls = stats.byRoute[TASK_POLL] ?? 0;
  const writes = Object.entries(stats.byRoute)
    .filter(([route]) => !route.startsWith("GET "))
    .reduce((sum, [, n]) => sum + n, 0);
  return { other: stats.total - polls, polls, writes };
}
