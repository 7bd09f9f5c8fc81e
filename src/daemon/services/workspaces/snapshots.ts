/**
 * Workspace snapshots (design §6): VM snapshots of the holder, which owns exactly the workspace disk,
 * so a snapshot covers exactly the workspace. Create and restore run only on a detached workspace whose
 * holder is stopped, each inside an intent + temporary lease (design §10.1).
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { WorkspaceSnapshot } from "../../../protocol/workspace.js";
import type { SnapshotInfo, VmRef } from "../../proxmox/types.js";
import type { WorkspaceOp, WorkspaceOpKind } from "../../store/workspace-ops.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { isSnapshotMissing } from "../sandbox/snapshot-rollback.js";
import type { TempLeaseKind, WorkspaceCore, WorkspaceVerb } from "./core.js";
import { restoreBlockers, workspaceSnapshots } from "./snapshot-list.js";
import { requireSnapshotCapable, storageUnsupported } from "./storage.js";

/** Snapshot names agentlab keeps for itself (the internal fork bases are `agentlab-fork-<vmid>`). */
export const RESERVED_SNAPSHOT_PREFIX = "agentlab-";

/** Everything a failed Proxmox call said: the message, the task's exit status, the transport's chain. */
export function proxmoxText(error: unknown): string {
  const parts = [describe(error)];
  if (error instanceof AgentlabError) {
    const { chain, exitstatus, reason } = error.details as Record<string, unknown>;
    if (Array.isArray(chain)) parts.push(...chain.map(String));
    if (exitstatus !== undefined) parts.push(String(exitstatus));
    if (reason !== undefined) parts.push(String(reason));
  }
  return parts.join("\n");
}

/**
 * The holder must be stopped: a running holder means a second QEMU could be using the disk (design
 * §3.4 R2), and neither a snapshot nor a check of the disk can be trusted then.
 */
export async function requireHolderStopped(core: WorkspaceCore, ws: Workspace, holder: VmRef): Promise<void> {
  const status = await core.ctx.backend.status(holder);
  if (status.state === "stopped") return;
  throw new AgentlabError("CONFLICT", `holder VM ${holder.vmid} of workspace ${ws.name} is ${status.state}`, {
    hint: `a holder VM never runs; make sure no sandbox uses the disk, then stop it: qm stop ${holder.vmid}`,
    details: { workspace_id: ws.id, holder_vmid: holder.vmid, state: status.state },
  });
}

/** SNAPSHOT_NOT_FOUND for a workspace, pointing at the list. */
export function workspaceSnapshotMissing(ws: Workspace, name: string, cause?: unknown): AgentlabError {
  return new AgentlabError("SNAPSHOT_NOT_FOUND", `snapshot "${name}" not found on workspace ${ws.name}`, {
    hint: `list its snapshots: agentlab workspace snapshot list ${ws.name}`,
    details: { workspace_id: ws.id, workspace_name: ws.name, snapshot: name },
    ...(cause !== undefined ? { cause } : {}),
  });
}

/** The holder's snapshots, failing with SNAPSHOT_NOT_FOUND when `name` is not among them. */
export async function requireHolderSnapshot(
  core: WorkspaceCore,
  ws: Workspace,
  name: string,
): Promise<SnapshotInfo[]> {
  const snapshots = await core.ctx.backend.snapshotList(core.holder(ws));
  if (!snapshots.some((s) => s.name === name)) throw workspaceSnapshotMissing(ws, name);
  return snapshots;
}

export interface LeasedBegin {
  /** The refusal word of requireDetached: "snapshots", "fsck", "fork", ... */
  verb: WorkspaceVerb;
  kind: WorkspaceOpKind;
  lease: TempLeaseKind;
  params: (ws: Workspace) => Record<string, unknown>;
  /** More refusals that need only the row (storage support, ...), before the lease is taken. */
  check?: (ws: Workspace) => void;
  /** More rows to write in the intent's transaction. */
  record?: (ws: Workspace) => void;
}

/**
 * Resolve the workspace and begin a leased operation on it in one transaction, before any Proxmox call
 * and without waiting for another operation: a workspace that is attached answers WORKSPACE_ATTACHED,
 * one whose lease is held answers WORKSPACE_LEASE_HELD at once (design §9.2), in that order. Queueing
 * behind the other operation instead would hide the contention the lease exists to report.
 */
export function beginLeased(
  core: WorkspaceCore,
  ref: string,
  begin: LeasedBegin,
): { ws: Workspace; intent: WorkspaceOp } {
  const { store } = core.ctx;
  return store.tx(() => {
    const ws = core.require(ref);
    core.requireDetached(ws, begin.verb);
    core.requireReady(ws);
    core.holder(ws);
    begin.check?.(ws);
    const intent = core.beginOp(ws, begin.kind, begin.params(ws), { lease: begin.lease });
    begin.record?.(ws);
    return { ws, intent };
  });
}

/**
 * Checks that need Proxmox, run after the intent is recorded: a refusal closes the intent (and runs
 * `undo` for what `record` wrote) without counting as a failed operation, since nothing was changed.
 */
export async function prechecked(
  core: WorkspaceCore,
  intent: WorkspaceOp,
  checks: () => Promise<void>,
  undo?: () => void,
): Promise<void> {
  try {
    await checks();
  } catch (error) {
    core.ctx.store.tx(() => {
      undo?.();
      core.endOp(intent);
    });
    throw error;
  }
}

/**
 * Names Proxmox would refuse (`current`, `pending`) and the reserved prefix, refused before anything
 * changes. The protocol schema already holds the character set and the length.
 */
function requireUserSnapshotName(name: string): void {
  const lower = name.toLowerCase();
  if (lower === "current" || lower === "pending") {
    throw new AgentlabError("INVALID_PARAMS", `snapshot name "${name}" is reserved by Proxmox`, {
      hint: "choose another name; current and pending are not snapshot names",
      details: { snapshot: name },
    });
  }
  if (lower.startsWith(RESERVED_SNAPSHOT_PREFIX)) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `snapshot names starting with "${RESERVED_SNAPSHOT_PREFIX}" are reserved for agentlab`,
      {
        hint: "choose a name without the agentlab- prefix",
        details: { snapshot: name },
      },
    );
  }
}

function snapshotExists(ws: Workspace, name: string, cause?: unknown): AgentlabError {
  return new AgentlabError("CONFLICT", "workspace snapshot already exists", {
    hint: `choose another name; existing ones: agentlab workspace snapshot list ${ws.name}`,
    details: { workspace_id: ws.id, workspace_name: ws.name, snapshot: name },
    ...(cause !== undefined ? { cause } : {}),
  });
}

/** Proxmox's refusals of a snapshot, in agentlab's codes (design §6.1); anything else as it came. */
function mapCreateError(ws: Workspace, name: string, error: unknown): unknown {
  const text = proxmoxText(error);
  if (/snapshot name '[^']*' already used/.test(text)) return snapshotExists(ws, name, error);
  if (/snapshot feature is not available/.test(text)) {
    const unsupported = storageUnsupported(ws.storage, ws.storage_type ?? "unknown", ws.format ?? undefined);
    return new AgentlabError(
      "STORAGE_UNSUPPORTED",
      `${unsupported.message} (Proxmox: snapshot feature is not available)`,
      {
        hint: unsupported.hint,
        details: unsupported.details,
        cause: error,
      },
    );
  }
  return error;
}

export interface SnapshotCreateResult {
  workspace: string;
  workspace_id: string;
  snapshot: WorkspaceSnapshot;
}

/** `workspace snapshot create <ws> <name>` (design §6.1). */
export async function createWorkspaceSnapshot(
  core: WorkspaceCore,
  ref: string,
  name: string,
  op: Operation,
): Promise<SnapshotCreateResult> {
  const { store, backend } = core.ctx;
  requireUserSnapshotName(name);
  const { ws, intent } = beginLeased(core, ref, {
    verb: "snapshots",
    kind: "snapshot",
    lease: "snapshot",
    check: requireSnapshotCapable,
    params: (row) => ({ name, holder_vmid: row.holder_vmid }),
    // The row claims the name in the intent's transaction: a taken name is CONFLICT before Proxmox is asked.
    record: (row) =>
      store.workspaceSnapshots.insert({ workspace_id: row.id, name, state: "creating", kind: "user" }),
  });
  const holder = core.holder(ws);
  return core.exclusive(ws, async () => {
    await prechecked(
      core,
      intent,
      async () => {
        await requireHolderStopped(core, ws, holder);
        if ((await backend.snapshotList(holder)).some((s) => s.name === name)) throw snapshotExists(ws, name);
      },
      () => store.workspaceSnapshots.delete(ws.id, name),
    );
    core.step(op, ws, "snapshot", `snapshotting holder VM ${holder.vmid} of workspace ${ws.name} as ${name}`);
    const taken = await core.withOp(
      intent,
      async () => {
        try {
          await backend.snapshotCreate(holder, name, `agentlab workspace snapshot of ${ws.name}`, {
            signal: op.signal,
          });
        } catch (error) {
          throw mapCreateError(ws, name, error);
        }
        core.setStep(intent, "taken");
        const found = (await backend.snapshotList(holder)).find((s) => s.name === name);
        if (!found) {
          throw new AgentlabError(
            "PROXMOX_ERROR",
            `Proxmox reported snapshot ${name} of VM ${holder.vmid} as taken, but does not list it`,
            {
              hint: `check it: qm listsnapshot ${holder.vmid}`,
              details: { holder_vmid: holder.vmid, snapshot: name },
            },
          );
        }
        return found;
      },
      {
        commit: (found) => {
          const createdAt = found.snaptime !== undefined ? new Date(found.snaptime * 1000) : undefined;
          store.workspaceSnapshots.markReady(ws.id, name, createdAt);
          core.event(ws, "workspace.snapshot.created", `snapshot ${name} of workspace ${ws.name} created`, {
            snapshot: name,
            holder_vmid: holder.vmid,
          });
          core.step(op, ws, "ready", `snapshot ${name} of workspace ${ws.name} is ready`);
        },
        undo: async (error) => {
          store.workspaceSnapshots.delete(ws.id, name);
          core.event(
            ws,
            "workspace.snapshot.create_failed",
            `snapshot ${name} of workspace ${ws.name} failed: ${describe(error)}`,
            {
              snapshot: name,
              error: describe(error),
            },
          );
          // A snapshot Proxmox finished after all (a timeout, a cancel mid-task) is this op's own, since
          // the name was free when it started; one refused as "already used" belongs to someone else.
          if (error instanceof AgentlabError && error.code === "CONFLICT") return;
          try {
            if ((await backend.snapshotList(holder)).some((s) => s.name === name))
              await backend.snapshotDelete(holder, name);
          } catch (cleanup) {
            op.log.warn(
              { err: cleanup, workspace: ws.name, snapshot: name },
              "could not remove a half-made workspace snapshot",
            );
          }
        },
      },
    );
    const snapshot: WorkspaceSnapshot = {
      name,
      kind: "user",
      state: "ready",
      ...(taken.snaptime !== undefined ? { created_at: new Date(taken.snaptime * 1000).toISOString() } : {}),
      ...(taken.description ? { description: taken.description.trim() } : {}),
      ...(taken.parent ? { parent: taken.parent } : {}),
      restorable: true,
    };
    return { workspace: ws.name, workspace_id: ws.id, snapshot };
  });
}

export interface SnapshotListResult {
  workspace: string;
  workspace_id: string;
  snapshots: WorkspaceSnapshot[];
}

/** `workspace snapshot list <ws>` (design §6.2): Proxmox's list joined with agentlab's records. */
export async function listWorkspaceSnapshots(core: WorkspaceCore, ref: string): Promise<SnapshotListResult> {
  const ws = core.require(ref);
  const { snapshots } = await workspaceSnapshots(core, ws);
  return { workspace: ws.name, workspace_id: ws.id, snapshots };
}

function quoted(names: readonly string[]): string {
  return names.map((n) => `"${n}"`).join(", ");
}

/** SNAPSHOT_NOT_LATEST in design §6.3's words; `proxmox` is Proxmox's own refusal when it made the call. */
function notLatest(
  ws: Workspace,
  name: string,
  later: readonly string[],
  proxmox?: { text: string; cause: unknown },
): AgentlabError {
  const after =
    later.length > 0
      ? `${quoted(later)} ${later.length === 1 ? "was" : "were"} taken after it`
      : `Proxmox says: ${proxmox?.text ?? "a newer snapshot exists"}`;
  const keep =
    later.length > 0 ? `To keep ${later.join("/")}, fork instead` : "To keep the newer data, fork instead";
  return new AgentlabError(
    "SNAPSHOT_NOT_LATEST",
    `cannot restore "${name}": workspace ${ws.name} is on ZFS storage ${ws.storage}, which restores only the newest snapshot; ${after}`,
    {
      hint: `nothing was changed. ${keep}: agentlab workspace fork ${ws.name} --name <new> --from-snapshot ${name}`,
      details: {
        workspace_id: ws.id,
        workspace_name: ws.name,
        snapshot: name,
        storage: ws.storage,
        later: [...later],
        ...(proxmox ? { proxmox: proxmox.text } : {}),
      },
      ...(proxmox ? { cause: proxmox.cause } : {}),
    },
  );
}

export interface SnapshotRestoreResult {
  workspace: string;
  workspace_id: string;
  snapshot: string;
}

/**
 * `workspace snapshot restore <ws> <name>` (design §6.3). On ZFS only the newest snapshot can be
 * restored; an older one is refused before anything changes, and the newer snapshots are never deleted
 * to make it work.
 */
export async function restoreWorkspaceSnapshot(
  core: WorkspaceCore,
  ref: string,
  name: string,
  op: Operation,
): Promise<SnapshotRestoreResult> {
  const { backend } = core.ctx;
  const { ws, intent } = beginLeased(core, ref, {
    verb: "restore",
    kind: "restore",
    lease: "restore",
    check: requireSnapshotCapable,
    params: (row) => ({ name, holder_vmid: row.holder_vmid }),
  });
  const holder = core.holder(ws);
  return core.exclusive(ws, async () => {
    await prechecked(core, intent, async () => {
      const snapshots = await requireHolderSnapshot(core, ws, name);
      const later = restoreBlockers(ws, snapshots, name);
      if (later.length > 0) throw notLatest(ws, name, later);
      await requireHolderStopped(core, ws, holder);
    });
    core.step(op, ws, "rollback", `rolling workspace ${ws.name} back to snapshot ${name}`);
    await core.withOp(
      intent,
      async () => {
        try {
          await backend.snapshotRollback(holder, name, { signal: op.signal });
        } catch (error) {
          const refusal = /can't rollback, '[^']*' is not most recent snapshot[^\n]*/.exec(
            proxmoxText(error),
          );
          if (refusal) throw notLatest(ws, name, [], { text: refusal[0].trim(), cause: error });
          if (isSnapshotMissing(error)) throw workspaceSnapshotMissing(ws, name, error);
          throw error;
        }
      },
      {
        commit: () => {
          core.event(ws, "workspace.snapshot.restored", `workspace ${ws.name} restored to snapshot ${name}`, {
            snapshot: name,
            holder_vmid: holder.vmid,
          });
          core.step(op, ws, "restored", `workspace ${ws.name} restored to snapshot ${name}`);
        },
        undo: (error) => {
          core.event(
            ws,
            "workspace.snapshot.restore_failed",
            `restore of workspace ${ws.name} to ${name} failed: ${describe(error)}`,
            {
              snapshot: name,
              error: describe(error),
            },
          );
        },
      },
    );
    return { workspace: ws.name, workspace_id: ws.id, snapshot: name };
  });
}
