/**
 * The workspaces table: one row per durable /work disk and the stopped holder VM that owns it
 * (docs/workspaces-design.md §3). Attachment changes only through compare-and-set (attach/detach),
 * together with the sandbox row's workspace_id, so the two never disagree. The lease columns are
 * written by leases.ts only.
 */

import { randomBytes } from "node:crypto";
import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { WORKSPACE_ID_RE } from "../../protocol/workspace.js";
import { sqliteCode } from "./errors.js";
import { patchStatements } from "./patch.js";
import { fromDbTime, fromDbTimeOrNull, toDbTime } from "./time.js";
import type { VmidAllocatorRepo } from "./vmid-allocator.js";

/** Migration 2 spells the same lists out in its CHECK constraints. */
export const WORKSPACE_STATE_NAMES = ["creating", "ready", "destroying", "broken"] as const;
export type WorkspaceState = (typeof WORKSPACE_STATE_NAMES)[number];

export const COPY_MODES = ["cow", "full"] as const;
export type CopyMode = (typeof COPY_MODES)[number];

/** A new id: `workspace-<16 hex>`, the shape upstream used and WORKSPACE_ID_RE accepts. */
export function newWorkspaceId(): string {
  return `workspace-${randomBytes(8).toString("hex")}`;
}

export interface Workspace {
  id: string;
  name: string;
  /** The node of the holder (local storage pins the workspace there). null only for pre-holder rows. */
  node: string | null;
  storage: string;
  /** Proxmox storage type: zfspool, lvmthin or dir. */
  storage_type: string | null;
  /** As Proxmox reported it, e.g. local-zfs:vm-1005-disk-0. */
  volid: string;
  /** raw, qcow2, ... as Proxmox reported it. */
  format: string | null;
  size_gb: number;
  /** The stopped VM whose config owns the volume. null only for pre-holder rows (which are broken). */
  holder_vmid: number | null;
  state: WorkspaceState;
  broken_reason: string | null;
  attached_vmid: number | null;
  last_attached_vmid: number | null;
  lease_owner: string | null;
  lease_nonce: string | null;
  lease_expires_at: Date | null;
  forked_from: string | null;
  fork_origin_snapshot: string | null;
  copy_mode: CopyMode | null;
  /** Free-form record (last_fsck, fsck_interrupted, ...); {} when nothing is stored. */
  meta: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
}

export interface NewWorkspace {
  /** Defaults to newWorkspaceId(). */
  id?: string;
  name: string;
  node: string;
  storage: string;
  storage_type?: string | null;
  volid: string;
  format?: string | null;
  size_gb: number;
  holder_vmid: number;
  state: WorkspaceState;
  broken_reason?: string | null;
  forked_from?: string | null;
  fork_origin_snapshot?: string | null;
  copy_mode?: CopyMode | null;
  meta?: Record<string, unknown> | null;
  /** Defaults to the store clock; updated_at starts equal to it. */
  created_at?: Date;
}

/**
 * Columns a caller may change after insert. id, name, storage, holder_vmid and created_at never change;
 * attachment goes through attach/detach and the lease through the lease repository.
 */
export interface WorkspacePatch {
  node?: string | null;
  storage_type?: string | null;
  volid?: string;
  format?: string | null;
  size_gb?: number;
  state?: WorkspaceState;
  broken_reason?: string | null;
  forked_from?: string | null;
  fork_origin_snapshot?: string | null;
  copy_mode?: CopyMode | null;
  /** Replaces the whole record. */
  meta?: Record<string, unknown>;
}

export interface WorkspaceListFilter {
  state?: WorkspaceState;
  node?: string;
}

export interface WorkspaceRepo {
  /**
   * Insert a row and raise the VMID mark to its holder_vmid, in one transaction. A taken name or id →
   * CONFLICT `workspace already exists`; a taken holder VMID → CONFLICT; a name shaped like an id →
   * INVALID_PARAMS (names or ids are accepted wherever a workspace is named, so they must not overlap).
   */
  insert(row: NewWorkspace): Workspace;
  get(id: string): Workspace | undefined;
  getByName(name: string): Workspace | undefined;
  /** By id, else by name. */
  resolve(nameOrId: string): Workspace | undefined;
  /** resolve, or WORKSPACE_NOT_FOUND `workspace not found`. */
  require(nameOrId: string): Workspace;
  /** Ordered by name. */
  list(filter?: WorkspaceListFilter): Workspace[];
  /**
   * Change columns of one row, only if it is still in `expectState` when given (compare-and-set).
   * Returns the updated row, or undefined when the row is missing or its state moved on.
   */
  update(id: string, patch: WorkspacePatch, expectState?: WorkspaceState): Workspace | undefined;
  /**
   * Delete a detached row; its snapshot and op rows go with it, and sandboxes that still name it
   * forget it. Returns false when there was no such row. Attached → WORKSPACE_ATTACHED; still named by
   * a session → CONFLICT listing the sessions (delete them in the same transaction first).
   */
  delete(id: string): boolean;
  /**
   * Record the workspace as attached to sandbox `vmid`: CAS `attached_vmid IS NULL`, also setting
   * last_attached_vmid and sandboxes.workspace_id, in one transaction. Refusals: already attached →
   * WORKSPACE_ATTACHED (details.attached_vmid); the sandbox has a workspace → CONFLICT `vmid already
   * has workspace attached`; no such sandbox → SANDBOX_NOT_FOUND; no such workspace → WORKSPACE_NOT_FOUND.
   */
  attach(id: string, vmid: number): Workspace;
  /**
   * Record the workspace as detached from `vmid`: CAS `attached_vmid = vmid`, setting last_attached_vmid
   * and clearing sandboxes.workspace_id, in one transaction. Attached elsewhere or not at all → CONFLICT
   * (details.attached_vmid); no such workspace → WORKSPACE_NOT_FOUND.
   */
  detach(id: string, vmid: number): Workspace;
  /** The workspace attached to sandbox `vmid`, if any. */
  byAttachedVmid(vmid: number): Workspace | undefined;
  /** Every holder VMID, ascending: VMs that inventory and reconcile must leave alone. */
  holderVmids(): number[];
  /** Rows with a lease owner set (expired or not), by id: the lease keeper's work list. */
  listLeased(): Workspace[];
  /** Workspaces forked from `id`, by name. */
  listForks(id: string): Workspace[];
}

interface WorkspaceDbRow {
  id: string;
  name: string;
  node: string | null;
  storage: string;
  storage_type: string | null;
  volid: string;
  format: string | null;
  size_gb: number;
  holder_vmid: number | null;
  state: string;
  broken_reason: string | null;
  attached_vmid: number | null;
  last_attached_vmid: number | null;
  lease_owner: string | null;
  lease_nonce: string | null;
  lease_expires_at: string | null;
  forked_from: string | null;
  fork_origin_snapshot: string | null;
  copy_mode: string | null;
  meta_json: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS =
  "id, name, node, storage, storage_type, volid, format, size_gb, holder_vmid, state, broken_reason, " +
  "attached_vmid, last_attached_vmid, lease_owner, lease_nonce, lease_expires_at, forked_from, " +
  "fork_origin_snapshot, copy_mode, meta_json, created_at, updated_at";

/** Patch keys and their columns; anything else in a patch is refused rather than turned into SQL. */
const PATCH_COLUMNS: Readonly<Record<keyof WorkspacePatch, string>> = {
  node: "node",
  storage_type: "storage_type",
  volid: "volid",
  format: "format",
  size_gb: "size_gb",
  state: "state",
  broken_reason: "broken_reason",
  forked_from: "forked_from",
  fork_origin_snapshot: "fork_origin_snapshot",
  copy_mode: "copy_mode",
  meta: "meta_json",
};

export function isWorkspaceState(value: unknown): value is WorkspaceState {
  return typeof value === "string" && (WORKSPACE_STATE_NAMES as readonly string[]).includes(value);
}

function parseMeta(row: WorkspaceDbRow): Record<string, unknown> {
  if (row.meta_json === null) return {};
  try {
    const value: unknown = JSON.parse(row.meta_json);
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      return value as Record<string, unknown>;
    }
  } catch {
    // Fall through: a damaged record must not make the workspace unreadable.
  }
  return { unparsed: row.meta_json };
}

function fromRow(row: WorkspaceDbRow): Workspace {
  if (!isWorkspaceState(row.state)) {
    throw new AgentlabError(
      "INTERNAL",
      `workspace ${row.id} has an unknown state "${row.state}" in the database`,
    );
  }
  return {
    id: row.id,
    name: row.name,
    node: row.node,
    storage: row.storage,
    storage_type: row.storage_type,
    volid: row.volid,
    format: row.format,
    size_gb: row.size_gb,
    holder_vmid: row.holder_vmid,
    state: row.state,
    broken_reason: row.broken_reason,
    attached_vmid: row.attached_vmid,
    last_attached_vmid: row.last_attached_vmid,
    lease_owner: row.lease_owner,
    lease_nonce: row.lease_nonce,
    lease_expires_at: fromDbTimeOrNull(row.lease_expires_at),
    forked_from: row.forked_from,
    fork_origin_snapshot: row.fork_origin_snapshot,
    copy_mode: row.copy_mode === null ? null : (row.copy_mode as CopyMode),
    meta: parseMeta(row),
    created_at: fromDbTime(row.created_at),
    updated_at: fromDbTime(row.updated_at),
  };
}

export function workspaceNotFound(ref: string): AgentlabError {
  return new AgentlabError("WORKSPACE_NOT_FOUND", "workspace not found", { details: { workspace: ref } });
}

function encodeMeta(meta: Record<string, unknown> | null | undefined): string | null {
  return meta === null || meta === undefined ? null : JSON.stringify(meta);
}

export function createWorkspaceRepo(
  db: Database.Database,
  now: () => Date,
  allocator: VmidAllocatorRepo,
): WorkspaceRepo {
  const insertStmt = db.prepare<Record<string, unknown>, WorkspaceDbRow>(
    `INSERT INTO workspaces (id, name, node, storage, storage_type, volid, format, size_gb, holder_vmid,
       state, broken_reason, forked_from, fork_origin_snapshot, copy_mode, meta_json, created_at, updated_at)
     VALUES (@id, @name, @node, @storage, @storage_type, @volid, @format, @size_gb, @holder_vmid,
       @state, @broken_reason, @forked_from, @fork_origin_snapshot, @copy_mode, @meta_json, @created_at, @created_at)
     RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[string], WorkspaceDbRow>(`SELECT ${COLUMNS} FROM workspaces WHERE id = ?`);
  const byNameStmt = db.prepare<[string], WorkspaceDbRow>(`SELECT ${COLUMNS} FROM workspaces WHERE name = ?`);
  const byHolderStmt = db.prepare<[number], { id: string; name: string }>(
    "SELECT id, name FROM workspaces WHERE holder_vmid = ?",
  );
  const listStmt = db.prepare<{ state: string | null; node: string | null }, WorkspaceDbRow>(
    `SELECT ${COLUMNS} FROM workspaces
     WHERE (@state IS NULL OR state = @state) AND (@node IS NULL OR node = @node)
     ORDER BY name`,
  );
  const deleteStmt = db.prepare<[string]>("DELETE FROM workspaces WHERE id = ? AND attached_vmid IS NULL");
  const sessionsOfStmt = db.prepare<[string], { name: string }>(
    "SELECT name FROM sessions WHERE workspace_id = ? ORDER BY name",
  );
  const attachStmt = db.prepare<{ id: string; vmid: number; now: string }, WorkspaceDbRow>(
    `UPDATE workspaces SET attached_vmid = @vmid, last_attached_vmid = @vmid, updated_at = @now
     WHERE id = @id AND attached_vmid IS NULL
     RETURNING ${COLUMNS}`,
  );
  const sandboxAttachStmt = db.prepare<{ id: string; vmid: number; now: string }>(
    `UPDATE sandboxes SET workspace_id = @id, updated_at = @now
     WHERE vmid = @vmid AND (workspace_id IS NULL OR workspace_id = @id)`,
  );
  const sandboxStmt = db.prepare<[number], { workspace_id: string | null }>(
    "SELECT workspace_id FROM sandboxes WHERE vmid = ?",
  );
  const detachStmt = db.prepare<{ id: string; vmid: number; now: string }, WorkspaceDbRow>(
    `UPDATE workspaces SET attached_vmid = NULL, last_attached_vmid = @vmid, updated_at = @now
     WHERE id = @id AND attached_vmid = @vmid
     RETURNING ${COLUMNS}`,
  );
  const sandboxDetachStmt = db.prepare<{ id: string; vmid: number; now: string }>(
    "UPDATE sandboxes SET workspace_id = NULL, updated_at = @now WHERE vmid = @vmid AND workspace_id = @id",
  );
  const byAttachedStmt = db.prepare<[number], WorkspaceDbRow>(
    `SELECT ${COLUMNS} FROM workspaces WHERE attached_vmid = ?`,
  );
  const holdersStmt = db.prepare<[], { holder_vmid: number }>(
    "SELECT holder_vmid FROM workspaces WHERE holder_vmid IS NOT NULL ORDER BY holder_vmid",
  );
  const leasedStmt = db.prepare<[], WorkspaceDbRow>(
    `SELECT ${COLUMNS} FROM workspaces WHERE lease_owner IS NOT NULL ORDER BY id`,
  );
  const forksStmt = db.prepare<[string], WorkspaceDbRow>(
    `SELECT ${COLUMNS} FROM workspaces WHERE forked_from = ? ORDER BY name`,
  );
  const updateStmt = patchStatements<WorkspaceDbRow>(db, {
    table: "workspaces",
    key: "id",
    returning: COLUMNS,
    casClause: "state = @expect",
  });

  const get = (id: string) => {
    const row = getStmt.get(id);
    return row === undefined ? undefined : fromRow(row);
  };
  const getByName = (name: string) => {
    const row = byNameStmt.get(name);
    return row === undefined ? undefined : fromRow(row);
  };
  const resolve = (ref: string) => get(ref) ?? getByName(ref);

  const insertTx = db.transaction((params: Record<string, unknown>, holder: number) => {
    const row = insertStmt.get(params);
    allocator.record(holder);
    return row;
  });

  const attachTx = db.transaction((id: string, vmid: number): WorkspaceDbRow => {
    const at = toDbTime(now());
    let row: WorkspaceDbRow | undefined;
    try {
      row = attachStmt.get({ id, vmid, now: at });
    } catch (err) {
      // The partial unique index on attached_vmid: one workspace per VM.
      if (sqliteCode(err) === "SQLITE_CONSTRAINT_UNIQUE")
        throw vmidHasWorkspace(vmid, byAttachedStmt.get(vmid), err);
      throw err;
    }
    if (row === undefined) {
      const current = getStmt.get(id);
      if (current === undefined) throw workspaceNotFound(id);
      throw new AgentlabError("WORKSPACE_ATTACHED", "workspace already attached", {
        hint: `detach it first: agentlab workspace detach ${current.name}`,
        details: {
          workspace_id: id,
          workspace_name: current.name,
          attached_vmid: current.attached_vmid,
          vmid,
        },
      });
    }
    if (sandboxAttachStmt.run({ id, vmid, now: at }).changes !== 1) {
      const sandbox = sandboxStmt.get(vmid);
      if (sandbox === undefined) {
        throw new AgentlabError("SANDBOX_NOT_FOUND", `sandbox not found: ${vmid}`, { details: { vmid } });
      }
      // The sandbox row names another workspace that does not name it back: drift, refused all the same.
      const other = sandbox.workspace_id === null ? undefined : getStmt.get(sandbox.workspace_id);
      throw vmidHasWorkspace(
        vmid,
        other ?? { id: sandbox.workspace_id ?? "?", name: sandbox.workspace_id ?? "?" },
      );
    }
    return row;
  });

  const detachTx = db.transaction((id: string, vmid: number): WorkspaceDbRow => {
    const at = toDbTime(now());
    const row = detachStmt.get({ id, vmid, now: at });
    if (row === undefined) {
      const current = getStmt.get(id);
      if (current === undefined) throw workspaceNotFound(id);
      const where =
        current.attached_vmid === null
          ? "is not attached"
          : `is attached to sandbox ${current.attached_vmid}`;
      throw new AgentlabError("CONFLICT", `workspace ${current.name} ${where}, not to sandbox ${vmid}`, {
        details: {
          workspace_id: id,
          workspace_name: current.name,
          attached_vmid: current.attached_vmid,
          vmid,
        },
      });
    }
    sandboxDetachStmt.run({ id, vmid, now: at });
    return row;
  });

  return {
    insert(row) {
      const id = row.id ?? newWorkspaceId();
      if (WORKSPACE_ID_RE.test(row.name)) {
        throw new AgentlabError(
          "INVALID_PARAMS",
          `invalid workspace name "${row.name}": it looks like a workspace id (workspace-<16 hex>)`,
          { hint: "choose a name that does not start with workspace- followed by 16 hex digits" },
        );
      }
      if (!WORKSPACE_ID_RE.test(id)) {
        throw new AgentlabError(
          "INVALID_PARAMS",
          `invalid workspace id "${id}": expected workspace-<16 hex>`,
        );
      }
      const params = {
        id,
        name: row.name,
        node: row.node,
        storage: row.storage,
        storage_type: row.storage_type ?? null,
        volid: row.volid,
        format: row.format ?? null,
        size_gb: row.size_gb,
        holder_vmid: row.holder_vmid,
        state: row.state,
        broken_reason: row.broken_reason ?? null,
        forked_from: row.forked_from ?? null,
        fork_origin_snapshot: row.fork_origin_snapshot ?? null,
        copy_mode: row.copy_mode ?? null,
        meta_json: encodeMeta(row.meta),
        created_at: toDbTime(row.created_at ?? now()),
      };
      let inserted: WorkspaceDbRow | undefined;
      try {
        inserted = insertTx.immediate(params, row.holder_vmid);
      } catch (err) {
        if (sqliteCode(err)?.startsWith("SQLITE_CONSTRAINT") && /workspaces\.holder_vmid/.test(String(err))) {
          const owner = byHolderStmt.get(row.holder_vmid);
          throw new AgentlabError(
            "CONFLICT",
            `holder VMID ${row.holder_vmid} already belongs to workspace ${owner?.name ?? "another workspace"}`,
            { details: { holder_vmid: row.holder_vmid, workspace_id: owner?.id ?? null }, cause: err },
          );
        }
        if (sqliteCode(err)?.startsWith("SQLITE_CONSTRAINT") && /workspaces\.(name|id)/.test(String(err))) {
          throw new AgentlabError("CONFLICT", "workspace already exists", {
            hint: `choose another name, or use the existing one: agentlab workspace show ${row.name}`,
            details: { workspace_name: row.name, workspace_id: id },
            cause: err,
          });
        }
        throw err;
      }
      if (inserted === undefined) {
        throw new AgentlabError("INTERNAL", `inserting workspace ${row.name} returned no row`);
      }
      return fromRow(inserted);
    },

    get,
    getByName,
    resolve,

    require(ref) {
      const found = resolve(ref);
      if (found === undefined) throw workspaceNotFound(ref);
      return found;
    },

    list(filter = {}) {
      return listStmt.all({ state: filter.state ?? null, node: filter.node ?? null }).map(fromRow);
    },

    update(id, patch, expectState) {
      const values: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(patch)) {
        if (value === undefined) continue;
        const column = PATCH_COLUMNS[key as keyof WorkspacePatch];
        if (column === undefined) {
          throw new AgentlabError("INTERNAL", `workspace column ${JSON.stringify(key)} cannot be patched`);
        }
        values[column] = key === "meta" ? encodeMeta(value as Record<string, unknown>) : value;
      }
      const columns = Object.keys(values).sort();
      const params = { ...values, id, updated_at: toDbTime(now()), expect: expectState ?? null };
      const row = updateStmt(columns, expectState !== undefined).get(params);
      return row === undefined ? undefined : fromRow(row);
    },

    delete(id) {
      try {
        if (deleteStmt.run(id).changes === 1) return true;
      } catch (err) {
        if (sqliteCode(err) === "SQLITE_CONSTRAINT_FOREIGNKEY") {
          const sessions = sessionsOfStmt.all(id).map((s) => s.name);
          throw new AgentlabError(
            "CONFLICT",
            `workspace is used by session${sessions.length === 1 ? "" : "s"} ${sessions.join(", ")}`,
            { details: { workspace_id: id, sessions }, cause: err },
          );
        }
        throw err;
      }
      const current = getStmt.get(id);
      if (current === undefined) return false;
      throw new AgentlabError(
        "WORKSPACE_ATTACHED",
        `workspace is attached to sandbox ${current.attached_vmid}`,
        {
          hint: `detach it first: agentlab workspace detach ${current.name}`,
          details: { workspace_id: id, workspace_name: current.name, attached_vmid: current.attached_vmid },
        },
      );
    },

    attach(id, vmid) {
      return fromRow(attachTx.immediate(id, vmid));
    },

    detach(id, vmid) {
      return fromRow(detachTx.immediate(id, vmid));
    },

    byAttachedVmid(vmid) {
      const row = byAttachedStmt.get(vmid);
      return row === undefined ? undefined : fromRow(row);
    },

    holderVmids() {
      return holdersStmt.all().map((r) => r.holder_vmid);
    },

    listLeased() {
      return leasedStmt.all().map(fromRow);
    },

    listForks(id) {
      return forksStmt.all(id).map(fromRow);
    },
  };
}

/** Upstream's wording (spec §4.3); `other` is the workspace the sandbox already has. */
function vmidHasWorkspace(
  vmid: number,
  other: { id: string; name: string } | undefined,
  cause?: unknown,
): AgentlabError {
  return new AgentlabError("CONFLICT", "vmid already has workspace attached", {
    hint: `detach the other workspace from sandbox ${vmid} first: agentlab workspace detach ${other?.name ?? "<workspace>"}`,
    details: { vmid, workspace_id: other?.id ?? null, workspace_name: other?.name ?? null },
    ...(cause === undefined ? {} : { cause }),
  });
}
