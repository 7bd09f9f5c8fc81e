/**
 * The sessions table: a named piece of work = a workspace + a profile (+ a branch label). A session
 * has no state column: it is running while current_vmid names a sandbox that is not DESTROYED
 * (docs/workspaces-design.md §11.1, §12).
 */

import { randomBytes } from "node:crypto";
import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { sqliteCode } from "./errors.js";
import { patchStatements } from "./patch.js";
import { fromDbTime, toDbTime } from "./time.js";
import { workspaceNotFound } from "./workspaces.js";

/** Upstream's id shape (spec §3.3). Names may not take it, so "name or id" is never ambiguous. */
export const SESSION_ID_RE = /^session_[0-9a-f]{16}$/;

export function newSessionId(): string {
  return `session_${randomBytes(8).toString("hex")}`;
}

export interface Session {
  id: string;
  name: string;
  workspace_id: string;
  current_vmid: number | null;
  profile: string;
  branch: string | null;
  created_at: Date;
  updated_at: Date;
}

export interface NewSession {
  /** Defaults to newSessionId(). */
  id?: string;
  name: string;
  workspace_id: string;
  profile: string;
  branch?: string | null;
  current_vmid?: number | null;
  /** Defaults to the store clock; updated_at starts equal to it. */
  created_at?: Date;
}

export interface SessionPatch {
  current_vmid?: number | null;
  profile?: string;
  branch?: string | null;
}

export interface SessionListFilter {
  workspace_id?: string;
}

export interface SessionRepo {
  /**
   * A taken name or id → CONFLICT `session already exists`; no such workspace → WORKSPACE_NOT_FOUND;
   * a name shaped like an id → INVALID_PARAMS.
   */
  insert(row: NewSession): Session;
  get(id: string): Session | undefined;
  getByName(name: string): Session | undefined;
  /** By id, else by name. */
  resolve(nameOrId: string): Session | undefined;
  /** resolve, or SESSION_NOT_FOUND `session not found`. */
  require(nameOrId: string): Session;
  /** Ordered by name. */
  list(filter?: SessionListFilter): Session[];
  /**
   * Change columns. With `expectCurrentVmid` (a vmid or null), only if current_vmid still is that
   * (compare-and-set). Returns the updated row, or undefined when missing or the CAS failed.
   */
  update(
    id: string,
    patch: SessionPatch,
    options?: { expectCurrentVmid?: number | null },
  ): Session | undefined;
  /** false when there was no such row. */
  delete(id: string): boolean;
  /** Sessions on a workspace, by name. */
  byWorkspace(workspaceId: string): Session[];
  /** The session whose current sandbox is `vmid`, if any. */
  byCurrentVmid(vmid: number): Session | undefined;
  /** Null current_vmid wherever it is `vmid` (its sandbox was destroyed); returns the sessions changed. */
  clearCurrentVmid(vmid: number): Session[];
}

interface SessionDbRow {
  id: string;
  name: string;
  workspace_id: string;
  current_vmid: number | null;
  profile: string;
  branch: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS = "id, name, workspace_id, current_vmid, profile, branch, created_at, updated_at";

function fromRow(row: SessionDbRow): Session {
  return {
    id: row.id,
    name: row.name,
    workspace_id: row.workspace_id,
    current_vmid: row.current_vmid,
    profile: row.profile,
    branch: row.branch,
    created_at: fromDbTime(row.created_at),
    updated_at: fromDbTime(row.updated_at),
  };
}

export function sessionNotFound(ref: string): AgentlabError {
  return new AgentlabError("SESSION_NOT_FOUND", "session not found", { details: { session: ref } });
}

export function createSessionRepo(db: Database.Database, now: () => Date): SessionRepo {
  const insertStmt = db.prepare<Record<string, unknown>, SessionDbRow>(
    `INSERT INTO sessions (${COLUMNS})
     VALUES (@id, @name, @workspace_id, @current_vmid, @profile, @branch, @created_at, @created_at)
     RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[string], SessionDbRow>(`SELECT ${COLUMNS} FROM sessions WHERE id = ?`);
  const byNameStmt = db.prepare<[string], SessionDbRow>(`SELECT ${COLUMNS} FROM sessions WHERE name = ?`);
  const listStmt = db.prepare<{ ws: string | null }, SessionDbRow>(
    `SELECT ${COLUMNS} FROM sessions WHERE (@ws IS NULL OR workspace_id = @ws) ORDER BY name`,
  );
  const deleteStmt = db.prepare<[string]>("DELETE FROM sessions WHERE id = ?");
  const byVmidStmt = db.prepare<[number], SessionDbRow>(
    `SELECT ${COLUMNS} FROM sessions WHERE current_vmid = ? ORDER BY name`,
  );
  const clearStmt = db.prepare<{ vmid: number; now: string }, SessionDbRow>(
    `UPDATE sessions SET current_vmid = NULL, updated_at = @now WHERE current_vmid = @vmid RETURNING ${COLUMNS}`,
  );
  const updateStmt = patchStatements<SessionDbRow>(db, {
    table: "sessions",
    key: "id",
    returning: COLUMNS,
    casClause: "current_vmid IS @expect",
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

  return {
    insert(row) {
      const id = row.id ?? newSessionId();
      if (SESSION_ID_RE.test(row.name)) {
        throw new AgentlabError(
          "INVALID_PARAMS",
          `invalid session name "${row.name}": it looks like a session id (session_<16 hex>)`,
          { hint: "choose a name that does not start with session_ followed by 16 hex digits" },
        );
      }
      let inserted: SessionDbRow | undefined;
      try {
        inserted = insertStmt.get({
          id,
          name: row.name,
          workspace_id: row.workspace_id,
          current_vmid: row.current_vmid ?? null,
          profile: row.profile,
          branch: row.branch ?? null,
          created_at: toDbTime(row.created_at ?? now()),
        });
      } catch (err) {
        const code = sqliteCode(err);
        if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") throw workspaceNotFound(row.workspace_id);
        if (code?.startsWith("SQLITE_CONSTRAINT") && /sessions\.(name|id)/.test(String(err))) {
          throw new AgentlabError("CONFLICT", "session already exists", {
            hint: `choose another name, or resume it: agentlab session resume ${row.name}`,
            details: { session_name: row.name, session_id: id },
            cause: err,
          });
        }
        throw err;
      }
      if (inserted === undefined)
        throw new AgentlabError("INTERNAL", `inserting session ${row.name} returned no row`);
      return fromRow(inserted);
    },

    get,
    getByName,
    resolve,

    require(ref) {
      const found = resolve(ref);
      if (found === undefined) throw sessionNotFound(ref);
      return found;
    },

    list(filter = {}) {
      return listStmt.all({ ws: filter.workspace_id ?? null }).map(fromRow);
    },

    update(id, patch, options = {}) {
      const values: Record<string, unknown> = {};
      if (patch.current_vmid !== undefined) values["current_vmid"] = patch.current_vmid;
      if (patch.profile !== undefined) values["profile"] = patch.profile;
      if (patch.branch !== undefined) values["branch"] = patch.branch;
      const columns = Object.keys(values).sort();
      const cas = options.expectCurrentVmid !== undefined;
      const row = updateStmt(columns, cas).get({
        ...values,
        id,
        updated_at: toDbTime(now()),
        expect: options.expectCurrentVmid ?? null,
      });
      return row === undefined ? undefined : fromRow(row);
    },

    delete(id) {
      return deleteStmt.run(id).changes === 1;
    },

    byWorkspace(ws) {
      return listStmt.all({ ws }).map(fromRow);
    },

    byCurrentVmid(vmid) {
      const row = byVmidStmt.get(vmid);
      return row === undefined ? undefined : fromRow(row);
    },

    clearCurrentVmid(vmid) {
      return clearStmt.all({ vmid, now: toDbTime(now()) }).map(fromRow);
    },
  };
}
