/**
 * One round of the periodic WAL checkpoint, the same on the checkpoint thread and on the main
 * connection's fallback timer (./checkpointer.ts): nothing when nothing was committed since the last
 * round and the last checkpoint copied everything; else a PASSIVE checkpoint, which copies only frames
 * no reader still needs, so what it left is tried again next round even with no new commit.
 */
import type Database from "better-sqlite3";

/** `changes` counts the commits the connection can see (data_version, total_changes). */
export function checkpointRounds(db: Database.Database, changes: () => number): () => void {
  let seen: number | undefined;
  let behind = false;
  return () => {
    try {
      const now = changes();
      if (now === seen && !behind) return;
      seen = now;
      const [result] = db.pragma("wal_checkpoint(PASSIVE)") as Array<{ log: number; checkpointed: number }>;
      behind = result !== undefined && result.checkpointed < result.log;
    } catch {
      // A busy or closing database: the next round tries again (and close() checkpoints anyway).
      behind = true;
    }
  };
}
