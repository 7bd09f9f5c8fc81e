/**
 * The worker thread of ./checkpointer.ts: copies the write-ahead log into the database file every
 * `intervalMs`, on a connection of its own, so the checkpoint's fsyncs (tens of milliseconds on a
 * loaded disk) block this thread and never the daemon's event loop.
 *
 * It blocks in Atomics.wait between checkpoints instead of running a timer: the main thread's stop
 * request (./checkpointer.ts, `stop`) then wakes it at once, and it never needs its own event loop.
 */
import { workerData } from "node:worker_threads";
import Database from "better-sqlite3";
import { checkpointRounds } from "./checkpoint-round.js";
import {
  type CheckpointWorkerData,
  CLOSED,
  OPEN,
  STARTING,
  STATE,
  STOP,
  signalView,
  stopped,
} from "./checkpoint-signal.js";

const { path, intervalMs, busyTimeoutMs, signal } = workerData as CheckpointWorkerData;
const sig = signalView(signal);

// The main thread may have cancelled before this thread got here (a store closed right after it
// opened): then no connection is opened at all, so the main connection's close stays the last one.
if (Atomics.compareExchange(sig, STATE, STARTING, OPEN) === STARTING) {
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { fileMustExist: true, timeout: busyTimeoutMs });
    // With NORMAL a checkpoint syncs the WAL before copying it and the file after: the commits before
    // it become durable (docs/reliability.md, "Durability"), as they did on the main connection.
    db.pragma("synchronous = NORMAL");
    // data_version changes when another connection (the daemon's) committed since this one last
    // looked: a read of the WAL index, so a quiet daemon costs no checkpoint and no fsync.
    const dataVersion = db.prepare<[], number>("PRAGMA data_version").pluck();
    const round = checkpointRounds(db, () => dataVersion.get()!);
    while (!stopped(sig)) {
      Atomics.wait(sig, STOP, 0, intervalMs);
      if (stopped(sig)) break;
      round();
    }
  } finally {
    db?.close();
    // The main thread waits for this before it closes its own connection (./checkpointer.ts, `stop`).
    Atomics.store(sig, STATE, CLOSED);
    Atomics.notify(sig, STATE);
  }
}
