/**
 * The api_tokens table (migration 4): remote control tokens, stored as the SHA-256 of their secret, and
 * the owner_token column that records which token created a sandbox, workspace or job. Built over an open
 * Store like the bootstrap tokens, so the store's own file need not know about the remote listener.
 */

import type Database from "better-sqlite3";
import type { TokenScope } from "../../protocol/token.js";
import type { Store } from "./db.js";
import { translateSqliteError } from "./errors.js";
import { fromDbTime, fromDbTimeOrNull, toDbTime } from "./time.js";

export interface ApiTokenRow {
  id: string;
  name: string;
  secret_hash: string;
  hint: string;
  scope: TokenScope;
  /** operate tokens: may act on every target, not only the ones they created. */
  all: boolean;
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
}

/** What an owner_token column can belong to. */
export type OwnedKind = "sandbox" | "workspace" | "job";

export interface ApiTokenRepo {
  insert(token: Omit<ApiTokenRow, "created_at" | "revoked_at" | "last_used_at">): ApiTokenRow;
  bySecretHash(hash: string): ApiTokenRow | undefined;
  byId(id: string): ApiTokenRow | undefined;
  byName(name: string): ApiTokenRow | undefined;
  list(): ApiTokenRow[];
  /** Sets revoked_at unless it is set already; returns the row as it now is. */
  revoke(id: string, at: Date): ApiTokenRow | undefined;
  touch(id: string, at: Date): void;
  /** The token that created a row; null for rows made over the local socket; undefined when no such row. */
  ownerOf(kind: OwnedKind, key: string | number): string | null | undefined;
  /** Record the creating token on a row that has none yet (the first recorder wins). */
  setOwner(kind: OwnedKind, key: string | number, tokenId: string): void;
}

interface TokenDbRow {
  id: string;
  name: string;
  secret_hash: string;
  hint: string;
  scope: TokenScope;
  all_targets: number;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
}

const COLUMNS =
  "id, name, secret_hash, hint, scope, all_targets, created_at, expires_at, revoked_at, last_used_at";

function fromRow(row: TokenDbRow): ApiTokenRow {
  return {
    id: row.id,
    name: row.name,
    secret_hash: row.secret_hash,
    hint: row.hint,
    scope: row.scope,
    all: row.all_targets === 1,
    created_at: fromDbTime(row.created_at),
    expires_at: fromDbTimeOrNull(row.expires_at),
    revoked_at: fromDbTimeOrNull(row.revoked_at),
    last_used_at: fromDbTimeOrNull(row.last_used_at),
  };
}

/**
 * Table, key column and owner expression of each owned kind; fixed strings, never caller input. A job's
 * sandbox is created in the background, after `job run` answered: it belongs to the job's owner.
 */
const OWNED: Record<OwnedKind, { table: string; key: string; owner: string }> = {
  sandbox: {
    table: "sandboxes",
    key: "vmid",
    owner:
      "COALESCE(owner_token, (SELECT j.owner_token FROM jobs j WHERE j.sandbox_vmid = sandboxes.vmid ORDER BY j.created_at DESC LIMIT 1))",
  },
  workspace: { table: "workspaces", key: "id", owner: "owner_token" },
  job: { table: "jobs", key: "id", owner: "owner_token" },
};

export function createApiTokenRepo(store: Store): ApiTokenRepo {
  const db: Database.Database = store.db;
  const insertStmt = db.prepare<Record<string, unknown>, TokenDbRow>(
    `INSERT INTO api_tokens (id, name, secret_hash, hint, scope, all_targets, created_at, expires_at)
     VALUES (@id, @name, @secret_hash, @hint, @scope, @all_targets, @created_at, @expires_at) RETURNING ${COLUMNS}`,
  );
  const byHash = db.prepare<[string], TokenDbRow>(`SELECT ${COLUMNS} FROM api_tokens WHERE secret_hash = ?`);
  const byIdStmt = db.prepare<[string], TokenDbRow>(`SELECT ${COLUMNS} FROM api_tokens WHERE id = ?`);
  const byNameStmt = db.prepare<[string], TokenDbRow>(`SELECT ${COLUMNS} FROM api_tokens WHERE name = ?`);
  const listStmt = db.prepare<[], TokenDbRow>(`SELECT ${COLUMNS} FROM api_tokens ORDER BY created_at, name`);
  const revokeStmt = db.prepare<[string, string]>(
    "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
  );
  const touchStmt = db.prepare<[string, string]>("UPDATE api_tokens SET last_used_at = ? WHERE id = ?");
  const ownerStmts = Object.fromEntries(
    Object.entries(OWNED).map(([kind, { table, key, owner }]) => [
      kind,
      {
        get: db.prepare<[string | number], { owner_token: string | null }>(
          `SELECT ${owner} AS owner_token FROM ${table} WHERE ${key} = ?`,
        ),
        set: db.prepare<[string, string | number]>(
          `UPDATE ${table} SET owner_token = ? WHERE ${key} = ? AND owner_token IS NULL`,
        ),
      },
    ]),
  ) as Record<OwnedKind, { get: Database.Statement; set: Database.Statement }>;

  const run = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw translateSqliteError(err, store.path) ?? err;
    }
  };

  return {
    insert(token) {
      const row = run(() =>
        insertStmt.get({
          id: token.id,
          name: token.name,
          secret_hash: token.secret_hash,
          hint: token.hint,
          scope: token.scope,
          all_targets: token.all ? 1 : 0,
          created_at: toDbTime(store.now()),
          expires_at: token.expires_at === null ? null : toDbTime(token.expires_at),
        }),
      );
      if (row === undefined) throw new Error(`inserting token ${token.name} returned no row`);
      return fromRow(row);
    },
    bySecretHash(hash) {
      const row = run(() => byHash.get(hash));
      return row === undefined ? undefined : fromRow(row);
    },
    byId(id) {
      const row = run(() => byIdStmt.get(id));
      return row === undefined ? undefined : fromRow(row);
    },
    byName(name) {
      const row = run(() => byNameStmt.get(name));
      return row === undefined ? undefined : fromRow(row);
    },
    list() {
      return run(() => listStmt.all()).map(fromRow);
    },
    revoke(id, at) {
      run(() => revokeStmt.run(toDbTime(at), id));
      const row = run(() => byIdStmt.get(id));
      return row === undefined ? undefined : fromRow(row);
    },
    touch(id, at) {
      run(() => touchStmt.run(toDbTime(at), id));
    },
    ownerOf(kind, key) {
      const row = run(() => ownerStmts[kind].get.get(key)) as { owner_token: string | null } | undefined;
      return row === undefined ? undefined : row.owner_token;
    },
    setOwner(kind, key, tokenId) {
      run(() => ownerStmts[kind].set.run(tokenId, key));
    },
  };
}
