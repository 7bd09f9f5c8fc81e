import { z } from "zod";
import { CheckedAt } from "./checked-at.js";
import { boundedArray, boundedString, LIMITS, numberLimit } from "./limits.js";
import { defineMethod } from "./method.js";
import { DNS_NAME_RE, DNS_NAME_RULE } from "./names.js";
import { progressToken } from "./progress.js";
import { snapshotNameProblem } from "./snapshot-names.js";
import { SANDBOX_STATE_NAMES } from "./states.js";
import * as wire from "./wire.js";

export { CLEAN_SNAPSHOT_NAME, SNAPSHOT_NAME_MAX, snapshotNameProblem } from "./snapshot-names.js";
export { SANDBOX_STATE_NAMES } from "./states.js";

export const SandboxStateName = z.enum(SANDBOX_STATE_NAMES);

const vmid = z.number().int().min(100).max(999_999_999).describe("Proxmox VMID of the sandbox");
/** A VM tag as Proxmox accepts it; the daemon stores and applies tags lower-cased. */
export const SandboxTag = boundedString(LIMITS.TAG).regex(
  /^[a-z0-9_][a-z0-9_+.-]*$/i,
  "tags use letters, digits and _ + . - (Proxmox's tag rule)",
);
const tag = SandboxTag;
/** A sandbox name: it becomes the VM's name (Proxmox's dns-name) and the guest's hostname (at most 63). */
export const SandboxName = boundedString(LIMITS.NAME).regex(DNS_NAME_RE, DNS_NAME_RULE);
/** A profile name as the daemon's profile loader accepts it. */
export const ProfileName = boundedString(LIMITS.PROFILE).min(1, "profile must not be empty");
/** ttl_minutes of any request: positive whole minutes, at most a year. */
export const TtlMinutes = z
  .number()
  .int()
  .positive("ttl_minutes must be positive")
  .max(LIMITS.TTL_MINUTES.max, numberLimit(LIMITS.TTL_MINUTES));

export const Sandbox = z.object({
  vmid: z.number().int(),
  name: z.string(),
  profile: z.string(),
  state: SandboxStateName,
  node: z.string().optional(),
  ip: z.string().optional(),
  workspace_id: z.string().optional(),
  keepalive: z.boolean(),
  lease_expires_at: z.string().optional().describe("RFC 3339; absent: the sandbox never expires"),
  tags: z.array(z.string()),
  failure_reason: z.string().optional().describe("why the sandbox is FAILED or TIMEOUT"),
  ssh_host_keys: z
    .array(z.string())
    .optional()
    .describe(
      'the guest\'s SSH host keys as "type base64", from its ready report; absent when it reported none',
    ),
  created_at: z.string(),
  updated_at: z.string(),
  last_used_at: z.string().optional(),
  pool: z
    .string()
    .optional()
    .describe("a warm pool member of this profile, not yet claimed (sandbox list shows them only with all)"),
  from_pool: z
    .boolean()
    .optional()
    .describe("sandbox.create only: true when the sandbox was claimed from its profile's warm pool"),
});
export type Sandbox = z.infer<typeof Sandbox>;

export const SandboxEvent = z.object({
  id: z.number().int(),
  ts: z.string(),
  kind: z.string(),
  msg: z.string().optional(),
  payload: z.unknown().optional(),
});
export type SandboxEvent = z.infer<typeof SandboxEvent>;

export const SandboxDetail = Sandbox.extend({
  lease_remaining_seconds: z
    .number()
    .int()
    .optional()
    .describe("seconds until the lease expires; 0 when past"),
  proxmox: z
    .object({
      found: z.boolean().describe("false when the VM no longer exists in Proxmox"),
      status: z.string().optional(),
      lock: z.string().optional(),
      cores: z.number().optional(),
      memory_mb: z.number().optional(),
      error: z.string().optional().describe("why live data could not be read"),
      checked_at: CheckedAt,
    })
    .describe("live view from Proxmox"),
  idle_stop: z
    .object({
      after_ms: z
        .number()
        .int()
        .describe(
          "how long the sandbox may sit idle while RUNNING before it is stopped; 0 when idle stop is off for it",
        ),
      off: z.string().optional().describe("why idle stop does not apply to this sandbox"),
      last: z
        .object({
          at: z.string(),
          idle_for_minutes: z.number(),
          cpu_usage: z.number(),
        })
        .optional()
        .describe("the last time idle stop stopped this sandbox"),
    })
    .describe("idle stop as it applies to this sandbox (docs/runbook.md)"),
  events: z.array(SandboxEvent).describe("most recent events, oldest first"),
});
export type SandboxDetail = z.infer<typeof SandboxDetail>;

export const sandboxCreate = defineMethod(wire.sandboxCreate, {
  summary:
    "Provision a sandbox: reserve a VMID, clone the profile's template, configure and start it, wait for the guest, take the clean snapshot. Blocks until RUNNING or FAILED; reports each step as progress; cancellation rolls back.",
  params: z
    .object({
      profile: ProfileName.describe("profile name (the CLI resolves +modifiers to one)"),
      name: SandboxName.optional(),
      ttl_minutes: TtlMinutes.optional(),
      keepalive: z.boolean().optional(),
      vmid: vmid.optional(),
      tags: boundedArray(tag, LIMITS.TAGS).optional(),
      workspace: boundedString(LIMITS.REF)
        .min(1)
        .optional()
        .describe(
          "workspace name or id to attach as scsi1 before the first boot (after the clean snapshot, so revert never covers it)",
        ),
      progress_token: progressToken,
    })
    .strict(),
  result: Sandbox,
});

export const sandboxList = defineMethod(wire.sandboxList, {
  summary: "Sandboxes from the database, by VMID. DESTROYED ones only with all (or state DESTROYED).",
  params: z
    .object({
      state: SandboxStateName.optional(),
      profile: boundedString(LIMITS.PROFILE).optional(),
      all: z.boolean().optional(),
    })
    .strict(),
  result: z.object({ sandboxes: z.array(Sandbox) }),
});

export const sandboxShow = defineMethod(wire.sandboxShow, {
  summary: "One sandbox: its record, live Proxmox status and config, lease remaining, and its last events.",
  params: z.object({ vmid, events: z.number().int().min(0).max(1000).optional() }).strict(),
  result: SandboxDetail,
});

export const sandboxDestroy = defineMethod(wire.sandboxDestroy, {
  summary:
    "Stop and destroy the sandbox's VM (with purge) and mark it DESTROYED. force also clears sandboxes whose VM is already gone or whose Proxmox calls fail.",
  params: z.object({ vmid, force: z.boolean().optional(), progress_token: progressToken }).strict(),
  result: Sandbox,
});

export const sandboxPrune = defineMethod(wire.sandboxPrune, {
  summary:
    "Remove orphaned entries: TIMEOUT sandboxes, sandboxes whose VM no longer exists in Proxmox and FAILED sandboxes whose VM was never created are destroyed and marked DESTROYED. Those that could not be removed are listed in failed with the reason.",
  params: z.object({}).strict(),
  result: z.object({
    count: z.number().int().describe("sandboxes removed"),
    vmids: z.array(z.number().int()).describe("the sandboxes removed"),
    failed: z
      .array(
        z.object({
          vmid: z.number().int(),
          state: SandboxStateName,
          message: z.string(),
          hint: z.string().optional(),
        }),
      )
      .describe("sandboxes that could not be removed, each with the reason; the CLI exits 1 when any"),
  }),
});

export const sandboxStart = defineMethod(wire.sandboxStart, {
  summary: "Start a STOPPED sandbox and re-discover its IP.",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
});

export const sandboxStop = defineMethod(wire.sandboxStop, {
  summary: "Stop (power off) a READY, RUNNING or SUSPENDED sandbox.",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
});

export const sandboxLeaseRenew = defineMethod(wire.sandboxLeaseRenew, {
  summary: "Set a RUNNING sandbox's lease to expire ttl_minutes from now.",
  params: z.object({ vmid, ttl_minutes: TtlMinutes }).strict(),
  result: z.object({ vmid: z.number().int(), lease_expires_at: z.string() }),
});

export const sandboxTouch = defineMethod(wire.sandboxTouch, {
  summary:
    "Record that the sandbox is in use now (its last_used_at), so idle stop leaves it running: agentlab ssh calls it when a session opens and while it lasts. Returns the idle window to touch within (0: idle stop does not apply).",
  params: z.object({ vmid }).strict(),
  result: z.object({
    vmid: z.number().int(),
    last_used_at: z.string(),
    idle_stop_after_ms: z
      .number()
      .int()
      .describe(
        "how long the sandbox may sit unused before idle stop stops it; 0 when idle stop does not apply",
      ),
  }),
});

export const sandboxLogs = defineMethod(wire.sandboxLogs, {
  summary: "A sandbox's events: the last `tail` (default 50), or those after `after_id` for following.",
  params: z
    .object({
      vmid,
      tail: z.number().int().min(1).max(1000).optional(),
      after_id: z.number().int().min(0).max(LIMITS.OFFSET.max, numberLimit(LIMITS.OFFSET)).optional(),
    })
    .strict(),
  result: z.object({ events: z.array(SandboxEvent), last_id: z.number().int() }),
});

export const sandboxPause = defineMethod(wire.sandboxPause, {
  summary: "Suspend a READY or RUNNING sandbox's VM to RAM (SUSPENDED); its memory and address are kept.",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
});

export const sandboxResume = defineMethod(wire.sandboxResume, {
  summary: "Resume a SUSPENDED sandbox's VM from RAM (RUNNING).",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
});

/** Fields of sandbox.update that change something; at least one must be given. */
export const SANDBOX_UPDATE_FIELDS = ["cores", "memory_mb", "tags"] as const;

export const sandboxUpdate = defineMethod(wire.sandboxUpdate, {
  summary:
    "Change a sandbox's cores, memory and tags. tags replaces the whole list (empty clears it; the managed agentlab tag stays on the VM). A running VM gets new cores and memory at its next cold start: they are reported as pending.",
  params: z
    .object({
      vmid,
      cores: z.number().int().min(1).max(8192).optional(),
      memory_mb: z
        .number()
        .int()
        .min(16, "memory_mb must be at least 16 (Proxmox's minimum)")
        .max(LIMITS.MEMORY_MB.max, numberLimit(LIMITS.MEMORY_MB))
        .optional(),
      tags: boundedArray(tag, LIMITS.TAGS)
        .optional()
        .describe("the new tag list, lower-cased; [] removes every tag"),
    })
    .strict()
    .refine((p) => SANDBOX_UPDATE_FIELDS.some((field) => p[field] !== undefined), {
      message: "give at least one of cores, memory_mb, tags",
    }),
  result: z.object({
    sandbox: Sandbox,
    cores: z.number().int().optional().describe("cores the VM is configured with now, pending included"),
    memory_mb: z.number().int().optional().describe("memory the VM is configured with now, pending included"),
    pending: z
      .array(z.enum(["cores", "memory_mb"]))
      .describe(
        "changes Proxmox holds until the VM's next cold start (stop, then start); the running VM keeps its old values until then",
      ),
  }),
});

const snapshotName = (purpose: "save" | "restore") =>
  boundedString(LIMITS.SNAPSHOT)
    .superRefine((name, ctx) => {
      const problem = snapshotNameProblem(name, purpose);
      if (problem) ctx.addIssue({ code: "custom", message: problem });
    })
    .describe(
      purpose === "save"
        ? "snapshot name: a letter, then letters, digits, _ or - (2-40); not current, pending or clean"
        : "name of an existing snapshot",
    );

export const SandboxSnapshot = z.object({
  name: z.string(),
  created_at: z.string().optional().describe("RFC 3339, from Proxmox's snaptime"),
  description: z.string().optional(),
  parent: z.string().optional(),
  vmstate: z.boolean().describe("true when the snapshot includes RAM (restoring it resumes the VM)"),
});
export type SandboxSnapshot = z.infer<typeof SandboxSnapshot>;

export const sandboxRevert = defineMethod(wire.sandboxRevert, {
  summary:
    'Roll the sandbox\'s root disk back to the "clean" snapshot taken after provisioning. Stops the VM first; restarts it (and re-discovers its address) when restart is true, by default when it was running. Never touches a workspace disk: a VM with disks besides its root disk is refused.',
  params: z
    .object({
      vmid,
      force: z.boolean().optional().describe("skip the checks that protect work in progress"),
      restart: z.boolean().optional().describe("start the VM after the rollback; default: if it was running"),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({
    sandbox: Sandbox,
    snapshot: z.string(),
    was_running: z.boolean(),
    restarted: z.boolean(),
  }),
});

export const sandboxSnapshotSave = defineMethod(wire.sandboxSnapshotSave, {
  summary:
    "Take a disk snapshot of a STOPPED sandbox (force: of a running one too, crash-consistent, without RAM).",
  params: z
    .object({
      vmid,
      name: snapshotName("save"),
      force: z.boolean().optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({ vmid: z.number().int(), name: z.string(), created_at: z.string() }),
});

export const sandboxSnapshotList = defineMethod(wire.sandboxSnapshotList, {
  summary: "The sandbox's snapshots as Proxmox lists them (without its `current` entry), oldest first.",
  params: z.object({ vmid }).strict(),
  result: z.object({ vmid: z.number().int(), snapshots: z.array(SandboxSnapshot) }),
});

export const sandboxSnapshotRestore = defineMethod(wire.sandboxSnapshotRestore, {
  summary:
    "Roll a STOPPED sandbox (force: any sandbox with a VM) back to a snapshot. Afterwards it is STOPPED with no address if the VM is not running, else RUNNING with its address refreshed.",
  params: z
    .object({
      vmid,
      name: snapshotName("restore"),
      force: z.boolean().optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({ sandbox: Sandbox, snapshot: z.string() }),
});

export const StopAllEntry = z.object({
  vmid: z.number().int(),
  name: z.string(),
  result: z.enum(["stopped", "skipped", "failed"]),
  state: SandboxStateName.describe("the sandbox's state afterwards"),
  reason: z.string().optional().describe("why it was skipped or failed"),
});

export const sandboxStopAll = defineMethod(wire.sandboxStopAll, {
  summary:
    "Stop every READY and RUNNING sandbox. One that changed state meanwhile is skipped; one whose stop fails is reported and the rest still stop.",
  params: z.object({ progress_token: progressToken }).strict(),
  result: z.object({
    total: z.number().int().describe("sandboxes that were READY or RUNNING"),
    stopped: z.number().int(),
    skipped: z.number().int(),
    failed: z.number().int(),
    results: z.array(StopAllEntry),
  }),
});

export const PlanIssue = z.object({
  code: z.string().describe("stable: unknown_profile, template_validation_failed, resource_conflict, ..."),
  field: z.string().optional().describe("the request field at fault"),
  message: z.string(),
});
export type PlanIssue = z.infer<typeof PlanIssue>;

export const SandboxPlan = z.object({
  profile: z.string(),
  template_vmid: z.number().int().optional(),
  template_name: z.string().optional(),
  node: z.string().optional(),
  clone: z.enum(["linked", "full"]).optional(),
  vmid: z.number().int().optional(),
  vmid_source: z
    .enum(["requested", "next_free"])
    .optional()
    .describe("next_free: the VMID a create would take now; another create may take it first"),
  name: z.string().optional(),
  cores: z.number().int().optional(),
  memory_mb: z.number().int().optional(),
  root_size_gb: z.number().optional(),
  network_mode: z.string().optional(),
  bridge: z.string().optional(),
  ttl_minutes: z.number().int().optional().describe("absent: the sandbox would never expire"),
  lease_expires_at: z.string().optional().describe("when the lease would end if created now"),
  keepalive: z.boolean().optional(),
  tags: z.array(z.string()),
});
export type SandboxPlan = z.infer<typeof SandboxPlan>;

export const sandboxValidate = defineMethod(wire.sandboxValidate, {
  summary:
    "Check a sandbox.create request without creating anything: the plan (profile, template, node, VMID, resources, lease) and every problem found. ok is false when a create would be refused or fail.",
  params: z
    .object({
      profile: ProfileName,
      name: boundedString(LIMITS.NAME).optional(),
      ttl_minutes: z.number().int().max(LIMITS.TTL_MINUTES.max, numberLimit(LIMITS.TTL_MINUTES)).optional(),
      keepalive: z.boolean().optional(),
      vmid: z.number().int().max(LIMITS.VMID.max, numberLimit(LIMITS.VMID)).optional(),
      tags: boundedArray(boundedString(LIMITS.TAG), LIMITS.TAGS).optional(),
      workspace: boundedString(LIMITS.REF)
        .min(1)
        .optional()
        .describe("workspace name or id sandbox new would attach"),
    })
    .strict(),
  result: z.object({
    ok: z.boolean(),
    errors: z.array(PlanIssue),
    warnings: z.array(PlanIssue),
    plan: SandboxPlan,
  }),
});
