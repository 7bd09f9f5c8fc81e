/**
 * The states a sandbox and a job can be in, as names: plain constants in a module of their own (no
 * zod), so the CLI completes and checks them without loading every method's schemas (sandbox.ts and
 * job.ts build their enums from these; docs/performance.md, "CLI start").
 */

export const SANDBOX_STATE_NAMES = [
  "REQUESTED",
  "PROVISIONING",
  "BOOTING",
  "READY",
  "RUNNING",
  "SUSPENDED",
  "COMPLETED",
  "FAILED",
  "TIMEOUT",
  "STOPPED",
  "DESTROYED",
] as const;

export const JOB_STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT"] as const;
export const TERMINAL_JOB_STATUSES: readonly string[] = ["COMPLETED", "FAILED", "TIMEOUT"];
