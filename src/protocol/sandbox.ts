import { z } from "zod";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";

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
export const SandboxStateName = z.enum(SANDBOX_STATE_NAMES);

const vmid = z.number().int().min(100).max(999_999_999).describe("Proxmox VMID of the sandbox");
const tag = z
  .string()
  .regex(/^[a-z0-9_][a-z0-9_+.-]*$/i, "tags use letters, digits and _ + . - (Proxmox's tag rule)")
  .max(64);

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
  created_at: z.string(),
  updated_at: z.string(),
  last_used_at: z.string().optional(),
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
    })
    .describe("live view from Proxmox"),
  events: z.array(SandboxEvent).describe("most recent events, oldest first"),
});
export type SandboxDetail = z.infer<typeof SandboxDetail>;

export const sandboxCreate = defineMethod({
  method: "sandbox.create",
  summary:
    "Provision a sandbox: reserve a VMID, clone the profile's template, configure and start it, wait for the guest, take the clean snapshot. Blocks until RUNNING or FAILED; reports each step as progress; cancellation rolls back.",
  params: z
    .object({
      profile: z.string().min(1).describe("profile name (the CLI resolves +modifiers to one)"),
      name: z
        .string()
        .regex(
          /^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,61}[a-zA-Z0-9])?$/,
          "a DNS label: letters, digits, dots and dashes",
        )
        .optional(),
      ttl_minutes: z.number().int().positive("ttl_minutes must be positive").optional(),
      keepalive: z.boolean().optional(),
      vmid: vmid.optional(),
      tags: z.array(tag).max(16).optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: Sandbox,
  progress: true,
  errors: [
    "PROFILE_NOT_FOUND",
    "CONFLICT",
    "PROXMOX_ERROR",
    "PROXMOX_PERMISSION",
    "PROXMOX_TASK_FAILED",
    "PROVISIONING_FAILED",
    "CANCELLED",
  ],
});

export const sandboxList = defineMethod({
  method: "sandbox.list",
  summary: "Sandboxes from the database, by VMID. DESTROYED ones only with all (or state DESTROYED).",
  params: z
    .object({
      state: SandboxStateName.optional(),
      profile: z.string().optional(),
      all: z.boolean().optional(),
    })
    .strict(),
  result: z.object({ sandboxes: z.array(Sandbox) }),
  progress: false,
  errors: [],
});

export const sandboxShow = defineMethod({
  method: "sandbox.show",
  summary: "One sandbox: its record, live Proxmox status and config, lease remaining, and its last events.",
  params: z.object({ vmid, events: z.number().int().min(0).max(1000).optional() }).strict(),
  result: SandboxDetail,
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const sandboxDestroy = defineMethod({
  method: "sandbox.destroy",
  summary:
    "Stop and destroy the sandbox's VM (with purge) and mark it DESTROYED. force also clears sandboxes whose VM is already gone or whose Proxmox calls fail.",
  params: z.object({ vmid, force: z.boolean().optional(), progress_token: progressToken }).strict(),
  result: Sandbox,
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "DESTROY_FAILED"],
});

export const sandboxPrune = defineMethod({
  method: "sandbox.prune",
  summary:
    "Remove orphaned entries: TIMEOUT sandboxes and sandboxes whose VM no longer exists in Proxmox are destroyed and marked DESTROYED.",
  params: z.object({}).strict(),
  result: z.object({ count: z.number().int(), vmids: z.array(z.number().int()) }),
  progress: false,
  errors: [],
});

export const sandboxStart = defineMethod({
  method: "sandbox.start",
  summary: "Start a STOPPED sandbox and re-discover its IP.",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE"],
});

export const sandboxStop = defineMethod({
  method: "sandbox.stop",
  summary: "Stop (power off) a READY, RUNNING or SUSPENDED sandbox.",
  params: z.object({ vmid, progress_token: progressToken }).strict(),
  result: Sandbox,
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE"],
});

export const sandboxLeaseRenew = defineMethod({
  method: "sandbox.lease.renew",
  summary: "Set a RUNNING sandbox's lease to expire ttl_minutes from now.",
  params: z.object({ vmid, ttl_minutes: z.number().int().positive("ttl_minutes must be positive") }).strict(),
  result: z.object({ vmid: z.number().int(), lease_expires_at: z.string() }),
  progress: false,
  errors: ["SANDBOX_NOT_FOUND", "LEASE_NOT_RENEWABLE"],
});

export const sandboxLogs = defineMethod({
  method: "sandbox.logs",
  summary: "A sandbox's events: the last `tail` (default 50), or those after `after_id` for following.",
  params: z
    .object({
      vmid,
      tail: z.number().int().min(1).max(1000).optional(),
      after_id: z.number().int().min(0).optional(),
    })
    .strict(),
  result: z.object({ events: z.array(SandboxEvent), last_id: z.number().int() }),
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});
