/**
 * Read-only health probes of the open database, for `agentlab init` (SQL stays in src/daemon/store).
 */
import type { Store } from "./db.js";

/**
 * `PRAGMA quick_check` on the running connection: ["ok"] when the database is sound, else up to 20 lines
 * naming the damage (a statement that fails outright adds its error message as the last line).
 */
export function quickCheck(store: Store): string[] {
  const lines: string[] = [];
  try {
    for (const row of store.db.prepare<[], unknown[]>("PRAGMA quick_check(20)").raw().iterate()) {
      lines.push(String(row[0]));
    }
  } catch (err) {
    lines.push(err instanceof Error ? err.message : String(err));
  }
  return lines;
}

/** One trivial read on the running connection: throws when the database does not answer. */
export function ping(store: Store): void {
  store.db.prepare("SELECT 1").get();
}
