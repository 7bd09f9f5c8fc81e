/**
 * The bootstrap_tokens table: one row per token handed to a guest in its cloud-init snippet. Only the
 * token's SHA-256 (hex) is stored, so a copy of the database does not let anyone talk to the guest
 * listener as a guest.
 *
 * Built over an open Store rather than wired into it, so the store's own file need not know about
 * guest readiness.
 */

import type Database from "better-sqlite3";
import type { Store } from "./db.js";
import { translateSqliteError } from "./errors.js";
import { fromDbTime, fromDbTimeOrNull, toDbTime } from "./time.js";

/** What a token lets the guest do: send the ready report, or fetch its job (migration 3). */
export type BootstrapTokenPurpose = "ready" | "job";

export interface BootstrapToken {
  token_hash: string;
  vmid: number;
  purpose: BootstrapTokenPurpose;
  expires_at: Date;
  consumed_at: Date | null;
  created_at: Date;
}

export interface BootstrapTokenRepo {
  /** Store a new token's hash. The schema refuses anything but 64 lower-case hex digits. */
  insert(token: {
    token_hash: string;
    vmid: number;
    expires_at: Date;
    created_at?: Date;
    /** Default "ready". */
    purpose?: BootstrapTokenPurpose;
  }): BootstrapToken;
  get(tokenHash: string): BootstrapToken | undefined;
  /**
   * Mark the token used, in one statement that also checks it belongs to `vmid`, is unused and has not
   * expired at `at` and was issued for `purpose`: of two concurrent reports with one token exactly one
   * gets true.
   */
  consume(tokenHash: string, vmid: number, at: Date, purpose: BootstrapTokenPurpose): boolean;
  /** Remove the `purpose` tokens of `vmid` nobody used (a newer provisioning replaces them). Returns how many. */
  deleteUnconsumed(vmid: number, purpose: BootstrapTokenPurpose): number;
  /** Remove every token that expired before `at`, used or not. Returns how many. */
  deleteExpired(at: Date): number;
  /** How many deleteExpired(at) would remove (maintenance's dry run). */
  countExpired(at: Date): number;
}

interface TokenDbRow {
  token_hash: string;
  vmid: number;
  purpose: string;
  expires_at: string;
  consumed_at: string | null;
  created_at: string;
}

const COLUMNS = "token_hash, vmid, purpose, expires_at, consumed_at, created_at";

function fromRow(row: TokenDbRow): BootstrapToken {
  return {
    token_hash: row.token_hash,
    vmid: row.vmid,
    purpose: row.purpose === "job" ? "job" : "ready",
    expires_at: fromDbTime(row.expires_at),
    consumed_at: fromDbTimeOrNull(row.consumed_at),
    created_at: fromDbTime(row.created_at),
  };
}

export function createBootstrapTokenRepo(store: Store): BootstrapTokenRepo {
  const db: Database.Database = store.db;
  const insertStmt = db.prepare<Record<string, unknown>, TokenDbRow>(
    `INSERT INTO bootstrap_tokens (${COLUMNS}) VALUES (@token_hash, @vmid, @purpose, @expires_at, NULL, @created_at) ` +
      `RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[string], TokenDbRow>(
    `SELECT ${COLUMNS} FROM bootstrap_tokens WHERE token_hash = ?`,
  );
  const consumeStmt = db.prepare<{ token_hash: string; vmid: number; at: string; purpose: string }>(
    `UPDATE bootstrap_tokens SET consumed_at = @at
     WHERE token_hash = @token_hash AND vmid = @vmid AND purpose = @purpose AND consumed_at IS NULL
       AND expires_at > @at`,
  );
  const deleteUnconsumedStmt = db.prepare<[number, string]>(
    "DELETE FROM bootstrap_tokens WHERE vmid = ? AND purpose = ? AND consumed_at IS NULL",
  );
  const deleteExpiredStmt = db.prepare<[string]>("DELETE FROM bootstrap_tokens WHERE expires_at <= ?");
  const countExpiredStmt = db.prepare<[string], { n: number }>(
    "SELECT count(*) AS n FROM bootstrap_tokens WHERE expires_at <= ?",
  );

  // Statements outside store.tx() still need SQLite's errors turned into the store's own.
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
          token_hash: token.token_hash,
          vmid: token.vmid,
          purpose: token.purpose ?? "ready",
          expires_at: toDbTime(token.expires_at),
          created_at: toDbTime(token.created_at ?? store.now()),
        }),
      );
      if (row === undefined)
        throw new Error(`inserting a bootstrap token for VM ${token.vmid} returned no row`);
      return fromRow(row);
    },

    get(tokenHash) {
      const row = run(() => getStmt.get(tokenHash));
      return row === undefined ? undefined : fromRow(row);
    },

    consume(tokenHash, vmid, at, purpose) {
      return (
        run(() => consumeStmt.run({ token_hash: tokenHash, vmid, at: toDbTime(at), purpose })).changes === 1
      );
    },

    deleteUnconsumed(vmid, purpose) {
      return run(() => deleteUnconsumedStmt.run(vmid, purpose)).changes;
    },

    deleteExpired(at) {
      return run(() => deleteExpiredStmt.run(toDbTime(at))).changes;
    },

    countExpired(at) {
      return run(() => countExpiredStmt.get(toDbTime(at))?.n ?? 0);
    },
  };
}
