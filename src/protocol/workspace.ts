import { z } from "zod";
import { boundedString, LIMITS } from "./limits.js";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";
import { ProfileName, Sandbox, TtlMinutes } from "./sandbox.js";
import * as wire from "./wire.js";

/**
 * Workspaces: persistent disks that outlive sandboxes. Each one is a volume owned by a stopped
 * "holder" VM (docs/workspaces-design.md §3), referenced from a sandbox's scsi1 while attached.
 */

const vmid = z.number().int().min(100).max(999_999_999).describe("Proxmox VMID of the sandbox");

/**
 * Names become the holder VM's name `ws-<name>`, which must be a DNS label for Proxmox (no trailing
 * dash: pve-common JSONSchema.pm `pve_verify_dns_name`); ids look like workspace-<16 hex>.
 */
export const WORKSPACE_NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,58}[a-z0-9])?$/;
export const WORKSPACE_ID_RE = /^workspace-[0-9a-f]{16}$/;

export const WorkspaceName = boundedString(LIMITS.NAME)
  .regex(
    WORKSPACE_NAME_RE,
    "workspace names use lower-case letters, digits and -, start and end with a letter or digit, at most 60",
  )
  .refine(
    (name) => !WORKSPACE_ID_RE.test(name),
    "a workspace name may not look like a workspace id (workspace-<16 hex>)",
  );

const workspaceRef = boundedString(LIMITS.REF).min(1).describe("workspace name or id");

export const WORKSPACE_STATES = ["creating", "ready", "destroying", "broken"] as const;

export const Workspace = z.object({
  id: z.string(),
  name: z.string(),
  state: z.enum(WORKSPACE_STATES),
  broken_reason: z.string().optional(),
  node: z.string().optional(),
  storage: z.string(),
  storage_type: z.string().optional(),
  format: z.string().optional(),
  volid: z.string(),
  size_gb: z.number().int(),
  holder_vmid: z.number().int().optional().describe("the stopped VM that owns the volume"),
  attached_vmid: z.number().int().optional(),
  last_attached_vmid: z.number().int().optional(),
  lease_owner: z.string().optional(),
  lease_expires_at: z.string().optional(),
  forked_from: z.string().optional(),
  fork_origin_snapshot: z.string().optional(),
  copy_mode: z.enum(["cow", "full"]).optional().describe("how a fork copied its source"),
  created_at: z.string(),
  updated_at: z.string(),
});
export type Workspace = z.infer<typeof Workspace>;

export const WorkspaceSnapshot = z.object({
  name: z.string(),
  kind: z.enum(["user", "fork-base", "external"]).describe("external: taken on the holder outside agentlab"),
  state: z.enum(["creating", "ready", "deleting"]).optional(),
  created_at: z.string().optional(),
  description: z.string().optional(),
  parent: z.string().optional(),
  restorable: z.boolean().describe("false on ZFS for every snapshot but the newest"),
  reason: z.string().optional().describe("why it cannot be restored"),
});
export type WorkspaceSnapshot = z.infer<typeof WorkspaceSnapshot>;

export const WorkspaceDetail = Workspace.extend({
  holder: z
    .object({
      found: z.boolean(),
      status: z.string().optional(),
      lock: z.string().optional(),
      protected: z.boolean().optional(),
      error: z.string().optional(),
    })
    .describe("live view of the holder VM"),
  path: z.string().optional().describe("host path of the volume, from Proxmox"),
  snapshots: z.array(WorkspaceSnapshot),
  forks: z.array(z.object({ id: z.string(), name: z.string() })),
  sessions: z.array(z.object({ id: z.string(), name: z.string() })),
  operation: z
    .object({ kind: z.string(), step: z.string(), started_at: z.string() })
    .optional()
    .describe("the operation in flight"),
  last_fsck: z.unknown().optional(),
});
export type WorkspaceDetail = z.infer<typeof WorkspaceDetail>;

export const workspaceCreate = defineMethod(wire.workspaceCreate, {
  summary:
    "Create a workspace: a holder VM owning one new disk of size_gb on storage (default: config workspace_storage). zfspool, lvmthin and dir (qcow2) storages are supported.",
  params: z
    .object({
      name: WorkspaceName,
      size_gb: z.number().int().positive("size_gb must be a positive whole number of GiB").max(65536),
      storage: boundedString(LIMITS.STORAGE).min(1).optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: Workspace,
});

export const workspaceList = defineMethod(wire.workspaceList, {
  summary: "Every workspace with its state, storage, attachment and lease.",
  params: z.object({}).strict(),
  result: z.object({ workspaces: z.array(Workspace) }),
});

export const workspaceShow = defineMethod(wire.workspaceShow, {
  summary:
    "One workspace: its record, the holder VM's live status, volume path, snapshots, forks, sessions, operation in flight and last fsck.",
  params: z.object({ workspace: workspaceRef }).strict(),
  result: WorkspaceDetail,
});

export const workspaceAttach = defineMethod(wire.workspaceAttach, {
  summary:
    "Attach the workspace to a sandbox as scsi1. A stopped sandbox sees it at its next start; a running one gets it hot-plugged and mounts it at /work at its next boot.",
  params: z.object({ workspace: workspaceRef, vmid, progress_token: progressToken }).strict(),
  result: z.object({
    workspace: Workspace,
    vmid: z.number().int(),
    slot: z.literal("scsi1"),
    live: z.boolean().describe("true when the running VM already has the disk"),
    message: z.string(),
  }),
});

export const workspaceDetach = defineMethod(wire.workspaceDetach, {
  summary:
    "Detach the workspace from its sandbox. A running sandbox is shut down first (it is STOPPED afterwards) unless hot is true; hot succeeds only when Proxmox confirms the unplug.",
  params: z
    .object({ workspace: workspaceRef, hot: z.boolean().optional(), progress_token: progressToken })
    .strict(),
  result: z.object({
    workspace: Workspace,
    vmid: z
      .number()
      .int()
      .optional()
      .describe("the sandbox it was detached from; absent when already detached"),
    sandbox_stopped: z.boolean().describe("true when the sandbox was shut down to detach safely"),
    message: z.string(),
  }),
});

export const WorkspaceFinding = z.object({
  code: z.string(),
  severity: z.enum(["info", "warning", "error"]),
  message: z.string(),
  fix: z.string().optional().describe("the command that fixes it"),
});
export type WorkspaceFinding = z.infer<typeof WorkspaceFinding>;

export const workspaceCheck = defineMethod(wire.workspaceCheck, {
  summary:
    "Read-only drift report between the database, the holder VM, the volume and every VM config that references it. Changes nothing.",
  params: z.object({ workspace: workspaceRef }).strict(),
  result: z.object({
    workspace: Workspace,
    ok: z.boolean().describe("false when any finding is an error"),
    findings: z.array(WorkspaceFinding),
  }),
});

export const FSCK_STATUSES = ["clean", "repaired", "needs_repair", "failed"] as const;

export const FsckResult = z.object({
  workspace: z.string().describe("workspace name"),
  workspace_id: z.string(),
  volume: z.object({
    volid: z.string(),
    storage: z.string(),
    path: z.string(),
    device: z.string().optional(),
  }),
  mode: z.enum(["read-only", "repair"]),
  status: z.enum(FSCK_STATUSES),
  exit_code: z.number().int().optional(),
  exit_summary: z.string(),
  remediation: z.string().optional(),
  command: z.string().optional(),
  output: z.string(),
  started_at: z.string(),
  completed_at: z.string(),
});
export type FsckResult = z.infer<typeof FsckResult>;

export const workspaceFsck = defineMethod(wire.workspaceFsck, {
  summary:
    "Check the detached workspace's ext4 filesystem on the host with e2fsck: read-only by default (-f -n), repair with repair true (-f -y). The result's status is clean, repaired, needs_repair or failed.",
  params: z
    .object({ workspace: workspaceRef, repair: z.boolean().optional(), progress_token: progressToken })
    .strict(),
  result: FsckResult,
});

const snapshotName = boundedString(LIMITS.SNAPSHOT)
  .regex(/^[a-z][a-z0-9_-]+$/i, "snapshot names: a letter, then letters, digits, _ or - (2 to 40)")
  .max(40, "snapshot names: a letter, then letters, digits, _ or - (2 to 40)")
  .describe("snapshot name");

export const workspaceSnapshotCreate = defineMethod(wire.workspaceSnapshotCreate, {
  summary:
    "Snapshot a detached workspace (a snapshot of its holder VM, which covers exactly the workspace disk).",
  params: z.object({ workspace: workspaceRef, name: snapshotName, progress_token: progressToken }).strict(),
  result: z.object({ workspace: z.string(), workspace_id: z.string(), snapshot: WorkspaceSnapshot }),
});

export const workspaceSnapshotList = defineMethod(wire.workspaceSnapshotList, {
  summary:
    "The workspace's snapshots as Proxmox lists them on the holder, joined with agentlab's records, oldest first.",
  params: z.object({ workspace: workspaceRef }).strict(),
  result: z.object({
    workspace: z.string(),
    workspace_id: z.string(),
    snapshots: z.array(WorkspaceSnapshot),
  }),
});

export const workspaceSnapshotRestore = defineMethod(wire.workspaceSnapshotRestore, {
  summary:
    "Roll a detached workspace back to a snapshot. On ZFS only the newest snapshot can be restored: older ones are refused with SNAPSHOT_NOT_LATEST and nothing changes (fork from them instead).",
  params: z.object({ workspace: workspaceRef, name: snapshotName, progress_token: progressToken }).strict(),
  result: z.object({ workspace: z.string(), workspace_id: z.string(), snapshot: z.string() }),
});

export const workspaceFork = defineMethod(wire.workspaceFork, {
  summary:
    "Make a new workspace holding a copy of a detached workspace (its current state, or from_snapshot): copy-on-write where the storage allows it (lvmthin; zfspool with host tools), a full copy otherwise. copy_mode says which.",
  params: z
    .object({
      workspace: workspaceRef,
      name: WorkspaceName,
      from_snapshot: snapshotName.optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: Workspace,
});

export const workspaceLeaseClear = defineMethod(wire.workspaceLeaseClear, {
  summary: "Administratively clear the workspace's lease, whoever holds it. Returns the previous owner.",
  params: z.object({ workspace: workspaceRef }).strict(),
  result: z.object({ workspace: Workspace, previous_owner: z.string().optional() }),
});

export const workspaceRebind = defineMethod(wire.workspaceRebind, {
  summary:
    "Move the workspace to a new sandbox of profile: provision it, detach from the old sandbox (shutting it down), attach to the new one, start it, then destroy the old one unless keep_old.",
  params: z
    .object({
      workspace: workspaceRef,
      profile: ProfileName,
      ttl_minutes: TtlMinutes.optional(),
      keep_old: z.boolean().optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({ workspace: Workspace, sandbox: Sandbox, old_vmid: z.number().int().optional() }),
});

export const workspaceDestroy = defineMethod(wire.workspaceDestroy, {
  summary:
    "Destroy a detached workspace: its holder VM, its disk and its snapshots. Stopped sessions using it are deleted with it. The CLI asks for confirmation unless --force.",
  params: z.object({ workspace: workspaceRef, progress_token: progressToken }).strict(),
  result: z.object({
    id: z.string(),
    name: z.string(),
    deleted_sessions: z.array(z.string()),
  }),
});
