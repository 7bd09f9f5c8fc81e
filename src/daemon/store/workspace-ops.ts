/**
 * The workspace_ops table: one intent row per multi-step workspace operation, written before the first
 * Proxmox call and deleted by the final transaction (docs/workspaces-design.md §10.1). A row left behind
 * is what start-up recovery finishes or undoes; its params hold everything recovery needs (VMIDs,
 * snapname, UPID, nbd device, pid and start time). A unique index allows one op per workspace.
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { sqliteCode } from "./errors.js";
import { fromDbTime, toDbTime } from "./time.js";
import { workspaceNotFound } from "./workspaces.js";

/** Migration 8 (and 2 before it) spells the same list out in its CHECK constraint. */
export const WORKSPACE_OP_KINDS = [
  "create",
  "attach",
  "detach",
  "snapshot",
  "restore",
  "fork",
  "fsck",
  "destroy",
  "rebind",
  "session_create",
  "session_resume",
  "session_stop",
  "revert",
] as const;
export type WorkspaceOpKind = (typeof WORKSPACE_OP_KINDS)[number];

export interface WorkspaceOp {
  id: number;
  workspace_id: string;
  session_id: string | null;
  kind: WorkspaceOpKind;
  step: string;
  params: Record<string, unknown>;
  /** The lease the op took, so recovery can release or adopt exactly that one. */
  lease_owner: string | null;
  lease_nonce: string | null;
  created_at: Date;
  updated_at: Date;
}

export interface NewWorkspaceOp {
  workspace_id: string;
  kind: WorkspaceOpKind;
  step: string;
  params?: Record<string, unknown>;
  session_id?: string | null;
  lease?: { owner: string; nonce: string } | null;
}

export interface WorkspaceOpRepo {
  /**
   * Record the intent. Another op on the workspace → WORKSPACE_BUSY naming it; no such workspace →
   * WORKSPACE_NOT_FOUND. Call it in the transaction that takes the op's lease.
   */
  begin(op: NewWorkspaceOp): WorkspaceOp;
  /**
   * Move to `step` and merge `paramsPatch` into the params (JSON merge patch, RFC 7396: a key set to
   * null is removed, nested objects merge). undefined when the op no longer exists.
   */
  setStep(id: number, step: string, paramsPatch?: Record<string, unknown>): WorkspaceOp | undefined;
  get(id: number): WorkspaceOp | undefined;
  getByWorkspace(workspaceId: string): WorkspaceOp | undefined;
  /** Every open op, oldest first: recovery's work list. */
  list(): WorkspaceOp[];
  /** Delete the row (the op is done or undone). false when it was already gone. */
  finish(id: number): boolean;
}

interface OpDbRow {
  id: number;
  workspace_id: string;
  session_id: string | null;
  kind: string;
  step: string;
  params_json: string;
  lease_owner: string | null;
  lease_nonce: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS =
  "id, workspace_id, session_id, kind, step, params_json, lease_owner, lease_nonce, created_at, updated_at";

function fromRow(row: OpDbRow): WorkspaceOp {
  if (!(WORKSPACE_OP_KINDS as readonly string[]).includes(row.kind)) {
    throw new AgentlabError(
      "INTERNAL",
      `workspace op ${row.id} has an unknown kind "${row.kind}" in the database`,
    );
  }
  let params: unknown;
  try {
    params = JSON.parse(row.params_json);
  } catch {
    params = undefined;
  }
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    // Recovery decides from these params; guessing would risk the workspace, so stop and say where.
    throw new AgentlabError(
      "INTERNAL",
      `workspace op ${row.id} (${row.kind} on ${row.workspace_id}) has unreadable params in the database: ${row.params_json}`,
    );
  }
  return {
    id: row.id,
    workspace_id: row.workspace_id,
    session_id: row.session_id,
    kind: row.kind as WorkspaceOpKind,
    step: row.step,
    params: params as Record<string, unknown>,
    lease_owner: row.lease_owner,
    lease_nonce: row.lease_nonce,
    created_at: fromDbTime(row.created_at),
    updated_at: fromDbTime(row.updated_at),
  };
}

function checkStep(step: string): void {
  if (typeof step !== "string" || step === "") {
    throw new AgentlabError("INVALID_PARAMS", "a workspace op step must be a non-empty string");
  }
}

export function createWorkspaceOpRepo(db: Database.Database, now: () => Date): WorkspaceOpRepo {
  const insertStmt = db.prepare<Record<string, unknown>, OpDbRow>(
    `INSERT INTO workspace_ops (workspace_id, session_id, kind, step, params_json, lease_owner, lease_nonce,
       created_at, updated_at)
     VALUES (@workspace_id, @session_id, @kind, @step, @params_json, @lease_owner, @lease_nonce, @now, @now)
     RETURNING ${COLUMNS}`,
  );
  const stepStmt = db.prepare<{ id: number; step: string; patch: string; now: string }, OpDbRow>(
    `UPDATE workspace_ops SET step = @step, params_json = json_patch(params_json, @patch), updated_at = @now
     WHERE id = @id RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[number], OpDbRow>(`SELECT ${COLUMNS} FROM workspace_ops WHERE id = ?`);
  const byWorkspaceStmt = db.prepare<[string], OpDbRow>(
    `SELECT ${COLUMNS} FROM workspace_ops WHERE workspace_id = ?`,
  );
  const listStmt = db.prepare<[], OpDbRow>(`SELECT ${COLUMNS} FROM workspace_ops ORDER BY id`);
  const finishStmt = db.prepare<[number]>("DELETE FROM workspace_ops WHERE id = ?");
  const nameStmt = db.prepare<[string], { name: string }>("SELECT name FROM workspaces WHERE id = ?");

  return {
    begin(op) {
      checkStep(op.step);
      let row: OpDbRow | undefined;
      try {
        row = insertStmt.get({
          workspace_id: op.workspace_id,
          session_id: op.session_id ?? null,
          kind: op.kind,
          step: op.step,
          params_json: JSON.stringify(op.params ?? {}),
          lease_owner: op.lease?.owner ?? null,
          lease_nonce: op.lease?.nonce ?? null,
          now: toDbTime(now()),
        });
      } catch (err) {
        const code = sqliteCode(err);
        if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") throw workspaceNotFound(op.workspace_id);
        if (code === "SQLITE_CONSTRAINT_UNIQUE") {
          const running = byWorkspaceStmt.get(op.workspace_id);
          const name = nameStmt.get(op.workspace_id)?.name ?? op.workspace_id;
          const what = running === undefined ? "another operation" : `${running.kind} (step ${running.step})`;
          throw new AgentlabError("WORKSPACE_BUSY", `workspace ${name} is busy: ${what} in progress`, {
            hint: `wait for it to finish (agentlab workspace show ${name}), then retry`,
            details: {
              workspace_id: op.workspace_id,
              workspace_name: name,
              op_id: running?.id ?? null,
              op_kind: running?.kind ?? null,
              op_step: running?.step ?? null,
              since: running === undefined ? null : fromDbTime(running.created_at).toISOString(),
            },
            cause: err,
          });
        }
        throw err;
      }
      if (row === undefined) throw new AgentlabError("INTERNAL", `inserting a ${op.kind} op returned no row`);
      return fromRow(row);
    },

    setStep(id, step, paramsPatch = {}) {
      checkStep(step);
      const row = stepStmt.get({ id, step, patch: JSON.stringify(paramsPatch), now: toDbTime(now()) });
      return row === undefined ? undefined : fromRow(row);
    },

    get(id) {
      const row = getStmt.get(id);
      return row === undefined ? undefined : fromRow(row);
    },

    getByWorkspace(ws) {
      const row = byWorkspaceStmt.get(ws);
      return row === undefined ? undefined : fromRow(row);
    },

    list() {
      return listStmt.all().map(fromRow);
    },

    finish(id) {
      return finishStmt.run(id).changes === 1;
    },
  };
}
