/**
 * The workspace_snapshots table: what agentlab knows about the VM snapshots of a workspace's holder.
 * Proxmox is the truth for which snapshots exist; a row adds the kind (user or internal fork-base) and
 * the state of the operation that makes or removes it (docs/workspaces-design.md §6).
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { sqliteCode } from "./errors.js";
import { fromDbTime, toDbTime } from "./time.js";
import { workspaceNotFound } from "./workspaces.js";

/** Migration 2 spells the same lists out in its CHECK constraints. */
export const WORKSPACE_SNAPSHOT_STATES = ["creating", "ready", "deleting"] as const;
export type WorkspaceSnapshotState = (typeof WORKSPACE_SNAPSHOT_STATES)[number];
export const WORKSPACE_SNAPSHOT_KINDS = ["user", "fork-base"] as const;
export type WorkspaceSnapshotKind = (typeof WORKSPACE_SNAPSHOT_KINDS)[number];

export interface WorkspaceSnapshotRecord {
  workspace_id: string;
  name: string;
  /** The Proxmox snapname on the holder. */
  backend_ref: string;
  state: WorkspaceSnapshotState;
  kind: WorkspaceSnapshotKind;
  created_at: Date;
}

export interface NewWorkspaceSnapshot {
  workspace_id: string;
  name: string;
  /** Defaults to the name. */
  backend_ref?: string;
  state: "creating" | "ready";
  kind: WorkspaceSnapshotKind;
  /** Defaults to the store clock. */
  created_at?: Date;
}

export interface WorkspaceSnapshotRepo {
  /** A taken name → CONFLICT `workspace snapshot already exists`; no such workspace → WORKSPACE_NOT_FOUND. */
  insert(row: NewWorkspaceSnapshot): WorkspaceSnapshotRecord;
  /** state = ready, created_at = Proxmox's snaptime when given. undefined when there is no such row. */
  markReady(workspaceId: string, name: string, createdAt?: Date): WorkspaceSnapshotRecord | undefined;
  /** state = deleting, before the Proxmox delete is sent. undefined when there is no such row. */
  markDeleting(workspaceId: string, name: string): WorkspaceSnapshotRecord | undefined;
  get(workspaceId: string, name: string): WorkspaceSnapshotRecord | undefined;
  /** Oldest first (then by name). */
  list(workspaceId: string): WorkspaceSnapshotRecord[];
  /** false when there was no such row. */
  delete(workspaceId: string, name: string): boolean;
}

interface SnapshotDbRow {
  workspace_id: string;
  name: string;
  backend_ref: string;
  state: string;
  kind: string;
  created_at: string;
}

const COLUMNS = "workspace_id, name, backend_ref, state, kind, created_at";

function fromRow(row: SnapshotDbRow): WorkspaceSnapshotRecord {
  if (
    !(WORKSPACE_SNAPSHOT_STATES as readonly string[]).includes(row.state) ||
    !(WORKSPACE_SNAPSHOT_KINDS as readonly string[]).includes(row.kind)
  ) {
    throw new AgentlabError(
      "INTERNAL",
      `workspace snapshot ${row.workspace_id}/${row.name} has an unknown state "${row.state}" or kind "${row.kind}" in the database`,
    );
  }
  return {
    workspace_id: row.workspace_id,
    name: row.name,
    backend_ref: row.backend_ref,
    state: row.state as WorkspaceSnapshotState,
    kind: row.kind as WorkspaceSnapshotKind,
    created_at: fromDbTime(row.created_at),
  };
}

export function createWorkspaceSnapshotRepo(db: Database.Database, now: () => Date): WorkspaceSnapshotRepo {
  const insertStmt = db.prepare<Record<string, unknown>, SnapshotDbRow>(
    `INSERT INTO workspace_snapshots (${COLUMNS}) VALUES (@workspace_id, @name, @backend_ref, @state, @kind, @created_at)
     RETURNING ${COLUMNS}`,
  );
  const readyStmt = db.prepare<{ ws: string; name: string; created_at: string | null }, SnapshotDbRow>(
    `UPDATE workspace_snapshots SET state = 'ready', created_at = coalesce(@created_at, created_at)
     WHERE workspace_id = @ws AND name = @name RETURNING ${COLUMNS}`,
  );
  const deletingStmt = db.prepare<[string, string], SnapshotDbRow>(
    `UPDATE workspace_snapshots SET state = 'deleting' WHERE workspace_id = ? AND name = ? RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[string, string], SnapshotDbRow>(
    `SELECT ${COLUMNS} FROM workspace_snapshots WHERE workspace_id = ? AND name = ?`,
  );
  const listStmt = db.prepare<[string], SnapshotDbRow>(
    `SELECT ${COLUMNS} FROM workspace_snapshots WHERE workspace_id = ? ORDER BY created_at, name`,
  );
  const deleteStmt = db.prepare<[string, string]>(
    "DELETE FROM workspace_snapshots WHERE workspace_id = ? AND name = ?",
  );

  return {
    insert(row) {
      if (row.name === "")
        throw new AgentlabError("INVALID_PARAMS", "a workspace snapshot name must not be empty");
      let inserted: SnapshotDbRow | undefined;
      try {
        inserted = insertStmt.get({
          workspace_id: row.workspace_id,
          name: row.name,
          backend_ref: row.backend_ref ?? row.name,
          state: row.state,
          kind: row.kind,
          created_at: toDbTime(row.created_at ?? now()),
        });
      } catch (err) {
        const code = sqliteCode(err);
        if (code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
          throw new AgentlabError("CONFLICT", "workspace snapshot already exists", {
            hint: `choose another name; existing ones: agentlab workspace snapshot list ${row.workspace_id}`,
            details: { workspace_id: row.workspace_id, snapshot: row.name },
            cause: err,
          });
        }
        if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") throw workspaceNotFound(row.workspace_id);
        throw err;
      }
      if (inserted === undefined) {
        throw new AgentlabError("INTERNAL", `inserting workspace snapshot ${row.name} returned no row`);
      }
      return fromRow(inserted);
    },

    markReady(ws, name, createdAt) {
      const row = readyStmt.get({
        ws,
        name,
        created_at: createdAt === undefined ? null : toDbTime(createdAt),
      });
      return row === undefined ? undefined : fromRow(row);
    },

    markDeleting(ws, name) {
      const row = deletingStmt.get(ws, name);
      return row === undefined ? undefined : fromRow(row);
    },

    get(ws, name) {
      const row = getStmt.get(ws, name);
      return row === undefined ? undefined : fromRow(row);
    },

    list(ws) {
      return listStmt.all(ws).map(fromRow);
    },

    delete(ws, name) {
      return deleteStmt.run(ws, name).changes === 1;
    },
  };
}
