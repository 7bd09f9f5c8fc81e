/**
 * The SQL behind `agentlab maintenance run` (services/housekeeping.ts): trimming old events, sizing and
 * compacting the file, and the record of the last run. Built over an open Store like the token tables.
 */
import type { Store } from "./db.js";
import { translateSqliteError } from "./errors.js";
import { fromDbTime, toDbTime } from "./time.js";

/**
 * Events of live entities are never trimmed, however old: a sandbox not yet DESTROYED, a job still
 * QUEUED or RUNNING, a workspace that still exists. Their history is what `show` and the doctor need.
 */
const TRIMMABLE = `ts < @cutoff
  AND (sandbox_vmid IS NULL OR sandbox_vmid NOT IN (SELECT vmid FROM sandboxes WHERE state <> 'DESTROYED'))
  AND (job_id IS NULL OR job_id NOT IN (SELECT id FROM jobs WHERE status IN ('QUEUED', 'RUNNING')))
  AND (workspace_id IS NULL OR workspace_id NOT IN (SELECT id FROM workspaces))`;

/** The event kind that records each `maintenance run` (its payload is the run's summary). */
export const MAINTENANCE_EVENT = "maintenance.run";

export interface FileSpace {
  page_size: number;
  page_count: number;
  freelist_count: number;
  /** 0 none, 1 full, 2 incremental (PRAGMA auto_vacuum). */
  auto_vacuum: number;
}

export interface Housekeeping {
  /** Events older than `cutoff` that trimEvents would delete. */
  countTrimmableEvents(cutoff: Date): number;
  trimEvents(cutoff: Date): number;
  space(): FileSpace;
  /**
   * Give the free pages back to the file system. A database made before auto_vacuum=INCREMENTAL needs
   * one full VACUUM to switch (SQLite fixes the mode at VACUUM time); after that incremental_vacuum
   * suffices. Then the WAL is checkpointed and truncated, so the space shows in `du` at once.
   */
  compact(): "incremental" | "full";
  /** The last `maintenance run` (not dry runs): when, and its summary. */
  lastRun(): { at: Date; summary: unknown } | undefined;
}

export function createHousekeeping(store: Store): Housekeeping {
  const { db } = store;
  const run = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw translateSqliteError(err, store.path) ?? err;
    }
  };
  const countStmt = db.prepare<{ cutoff: string }, { n: number }>(
    `SELECT count(*) AS n FROM events WHERE ${TRIMMABLE}`,
  );
  const trimStmt = db.prepare<{ cutoff: string }>(`DELETE FROM events WHERE ${TRIMMABLE}`);
  const lastStmt = db.prepare<[string], { ts: string; json: string | null }>(
    "SELECT ts, json FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1",
  );
  const pragma = (name: string): number => Number(db.pragma(name, { simple: true }));
  return {
    countTrimmableEvents(cutoff) {
      return run(() => countStmt.get({ cutoff: toDbTime(cutoff) })?.n ?? 0);
    },
    trimEvents(cutoff) {
      return run(() => trimStmt.run({ cutoff: toDbTime(cutoff) }).changes);
    },
    space() {
      return run(() => ({
        page_size: pragma("page_size"),
        page_count: pragma("page_count"),
        freelist_count: pragma("freelist_count"),
        auto_vacuum: pragma("auto_vacuum"),
      }));
    },
    compact() {
      return run(() => {
        let how: "incremental" | "full" = "incremental";
        if (pragma("auto_vacuum") !== 2) {
          db.pragma("auto_vacuum = INCREMENTAL");
          db.exec("VACUUM");
          how = "full";
        } else {
          db.pragma("incremental_vacuum");
        }
        db.pragma("wal_checkpoint(TRUNCATE)");
        return how;
      });
    },
    lastRun() {
      const row = run(() => lastStmt.get(MAINTENANCE_EVENT));
      if (!row) return undefined;
      let summary: unknown = null;
      try {
        summary = row.json === null ? null : JSON.parse(row.json);
      } catch {
        // Written by this daemon only; an unreadable summary still tells when the run was.
      }
      return { at: fromDbTime(row.ts), summary };
    },
  };
}
