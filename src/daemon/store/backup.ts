/**
 * Whole-database operations for `agentlab db backup` and `agentlab db check` (services/database.ts).
 */
import Database from "better-sqlite3";
import type { Store } from "./db.js";

/**
 * SQLite's online backup API on the daemon's own connection: pages are copied in steps, and a write
 * this connection makes meanwhile is carried into the copy, so the result is one consistent state even
 * while the daemon writes (https://www.sqlite.org/backup.html).
 */
export async function backupDatabase(store: Store, dest: string): Promise<void> {
  await store.db.backup(dest);
}

/** `PRAGMA integrity_check(max)` on the daemon's connection: ["ok"] or the damage found. */
export function integrityCheck(store: Store, max = 100): string[] {
  const lines: string[] = [];
  try {
    for (const row of store.db.prepare<[], unknown[]>(`PRAGMA integrity_check(${max})`).raw().iterate()) {
      lines.push(String(row[0]));
    }
  } catch (err) {
    lines.push(err instanceof Error ? err.message : String(err));
  }
  return lines;
}

/**
 * Make a fresh copy standalone and quick_check it: "ok", or what is wrong. The copy keeps the source's
 * WAL mode in its header, so opening it would leave -wal/-shm files beside it; switching it to the
 * rollback journal makes it one self-contained file (agentlabd switches back to WAL when it opens it).
 */
export function checkCopy(path: string): string {
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { fileMustExist: true });
    db.pragma("journal_mode = DELETE");
    const rows = db.prepare<[], unknown[]>("PRAGMA quick_check(5)").raw().all();
    return rows.map((r) => String(r[0])).join("; ");
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    db?.close();
  }
}
