import { z } from "zod";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";
import { SandboxStateName } from "./sandbox.js";
import * as wire from "./wire.js";

/**
 * Drift between the database and Proxmox, as `sandbox inventory` and `sandbox reconcile` report it.
 * Codes are part of the contract: add new ones, never rename them.
 */
export const DRIFT_CODES = [
  "missing_in_proxmox",
  "stopped_while_marked_running",
  "running_while_marked_stopped",
  "stuck_before_ready",
  "unmanaged_proxmox_vm",
  "missing_agent_ip",
  "vm_left_behind",
] as const;
export const DriftCode = z.enum(DRIFT_CODES);
export type DriftCode = z.infer<typeof DriftCode>;

export const DRIFT_SEVERITIES = ["error", "warning"] as const;

export const DriftFinding = z.object({
  code: DriftCode,
  severity: z
    .enum(DRIFT_SEVERITIES)
    .describe("error: the record is wrong about its VM; warning: worth a look, nothing is lost"),
  vmid: z.number().int(),
  name: z.string().optional().describe("the sandbox's name, or the VM's for an unmanaged VM"),
  state: SandboxStateName.optional().describe(
    "the database's state; absent when no live sandbox has the VMID",
  ),
  proxmox: z.string().describe("what Proxmox reports: running, stopped, paused, unknown, or missing"),
  message: z.string(),
  fix: z.string().describe("the command that fixes it"),
  reconcile: z
    .string()
    .optional()
    .describe("what sandbox reconcile --apply does about it now; absent when it leaves it alone"),
});
export type DriftFinding = z.infer<typeof DriftFinding>;

export const Inventory = z.object({
  checked_at: z.string().describe("RFC 3339"),
  sandboxes: z.number().int().describe("live (not DESTROYED) sandboxes compared"),
  proxmox_vms: z.number().int().describe("VMs in the cluster (templates included)"),
  busy: z
    .array(z.number().int())
    .describe("sandboxes left out because an operation on them is in flight; they are checked next time"),
  findings: z.array(DriftFinding),
});
export type Inventory = z.infer<typeof Inventory>;

export const RECONCILE_ACTIONS = ["destroyed", "failed", "ready", "running", "ip", "adopted"] as const;

export const ReconcileChange = z.object({
  vmid: z.number().int(),
  action: z.enum(RECONCILE_ACTIONS),
  from: SandboxStateName.optional(),
  to: SandboxStateName.optional(),
  ip: z.string().optional(),
  message: z.string(),
});
export type ReconcileChange = z.infer<typeof ReconcileChange>;

export const ReconcileResult = Inventory.extend({
  applied: z.boolean().describe("false: a dry run; findings say what --apply would do"),
  changes: z.array(ReconcileChange).describe("what the pass changed (empty for a dry run)"),
  errors: z
    .array(z.object({ vmid: z.number().int(), message: z.string() }))
    .describe("sandboxes the pass could not fix; the background reconciler retries them every 30 s"),
});
export type ReconcileResult = z.infer<typeof ReconcileResult>;

export const sandboxInventory = defineMethod(wire.sandboxInventory, {
  summary:
    "Compare the database with one cluster-wide Proxmox VM list and report drift, each finding with its severity and the command that fixes it. Read-only.",
  params: z.object({}).strict(),
  result: Inventory,
});

export const sandboxReconcile = defineMethod(wire.sandboxReconcile, {
  summary:
    "The inventory plus what a reconciler pass would change; with apply, run one pass now (the daemon also runs one every 30 s) and return what it changed.",
  params: z
    .object({
      apply: z.boolean().optional().describe("make the changes instead of only reporting them"),
      progress_token: progressToken,
    })
    .strict(),
  result: ReconcileResult,
});

/** The steps of `agentlab maintenance run`, in the order they run. */
export const HOUSEKEEPING_STEPS = ["prune", "tokens", "snippets", "artifacts", "events", "vacuum"] as const;

export const HousekeepingStep = z.object({
  step: z.enum(HOUSEKEEPING_STEPS),
  count: z.number().int().describe("what the step removed (or would remove, in a dry run)"),
  freed_bytes: z.number().int().describe("disk space the step gave back (estimated in a dry run)"),
  summary: z.string().describe("one line for people"),
  items: z.array(z.string()).describe("what was removed: VMIDs, files, job ids"),
  errors: z.array(z.string()).describe("what could not be done, each naming the thing and the reason"),
});
export type HousekeepingStep = z.infer<typeof HousekeepingStep>;

export const HousekeepingResult = z.object({
  dry_run: z.boolean(),
  started_at: z.string().describe("RFC 3339"),
  steps: z.array(HousekeepingStep),
  freed_bytes: z.number().int(),
  ok: z.boolean().describe("false when any step could not do all it had to; the CLI exits 1"),
});
export type HousekeepingResult = z.infer<typeof HousekeepingResult>;

export const maintenanceRun = defineMethod(wire.maintenanceRun, {
  summary:
    "Housekeeping for a long-lived host: prune orphaned and never-created FAILED sandboxes, retire expired tokens and ended jobs' credentials, delete leftover snippets, delete artifacts past artifact_retention_days and events past event_retention_days (never those of live sandboxes, jobs or workspaces), and compact the database when worth it. With dry_run, report what would go and change nothing.",
  params: z
    .object({
      dry_run: z.boolean().optional().describe("report what would be removed; change nothing"),
      progress_token: progressToken,
    })
    .strict(),
  result: HousekeepingResult,
});
