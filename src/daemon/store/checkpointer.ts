/**
 * The daemon's periodic WAL checkpoint, on a worker thread (./checkpoint-worker.ts) with its own
 * connection to the database file. WAL mode lets a second connection checkpoint while the daemon's
 * connection writes (a PASSIVE checkpoint never takes the write lock), and the checkpoint's fsyncs then
 * block that thread instead of the event loop: on the daemon's main thread they were about 56 ms per
 * `sandbox new` under load (issue 15, docs/performance.md).
 *
 * If the worker dies, the checkpoint goes back to a timer on the main connection, so what
 * CHECKPOINT_EVERY_MS promises still holds, at the old cost.
 */
import { Worker } from "node:worker_threads";
import type Database from "better-sqlite3";
import { checkpointRounds } from "./checkpoint-round.js";
import {
  CANCELLED,
  type CheckpointWorkerData,
  newSignal,
  OPEN,
  STARTING,
  STATE,
  STOP,
  signalView,
} from "./checkpoint-signal.js";

/**
 * How often the daemon copies its write-ahead log into the database file. Operators back the database
 * up with a plain `cp agentlab.db` (troubleshooting guide, "Backup database"), which reads the main file
 * only: in WAL mode recent commits live in -wal until a checkpoint, and SQLite's own waits for 1000
 * pages, so a small database might never reach its main file. A checkpoint after every commit
 * (`wal_autocheckpoint = 1`, what this replaced) cost three fsyncs per commit (on the CI machine 1.4 ms
 * instead of 0.9 idle, 19 instead of 7.5 under load), a dozen times per `sandbox new` (issue 15). A timer keeps `cp` at most this
 * far behind the last commit; with `synchronous = NORMAL` each checkpoint also makes the commits before
 * it durable (it syncs the WAL before copying it).
 */
export const CHECKPOINT_EVERY_MS = 250;

/**
 * How long `stop` waits for a checkpoint in progress to end. A PASSIVE checkpoint never waits for a
 * lock; only its fsyncs take time, well under a second even on a loaded disk. Past this the worker is
 * terminated and the main connection closes anyway: the -wal file may then stay, which costs nothing
 * but the next open's recovery.
 */
const STOP_WAIT_MS = 5000;

/**
 * The worker's busy timeout: its only waits are a reader's brief ones (another process recovering the
 * WAL); a checkpoint that would wait longer is skipped and made at the next round.
 */
const WORKER_BUSY_TIMEOUT_MS = 100;

export interface CheckpointerOptions {
  intervalMs?: number;
  /** Told once, when the worker dies and the main connection takes the checkpoint over. */
  onWorkerLost?: (err: Error) => void;
}

export class Checkpointer {
  /** The worker thread; exposed so tests can kill it. */
  readonly worker: Worker;
  readonly #db: Database.Database;
  readonly #intervalMs: number;
  readonly #onWorkerLost: (err: Error) => void;
  readonly #sig: Int32Array;
  #stopped = false;
  #lost = false;
  #fallback: NodeJS.Timeout | undefined;

  /** `db` is the daemon's own connection to `path`: the fallback checkpoints on it. */
  constructor(db: Database.Database, path: string, opts: CheckpointerOptions = {}) {
    this.#db = db;
    this.#intervalMs = opts.intervalMs ?? CHECKPOINT_EVERY_MS;
    this.#onWorkerLost =
      opts.onWorkerLost ??
      ((err) => process.emitWarning(`agentlabd: the WAL checkpoint thread stopped (${err.message})`));
    const signal = newSignal();
    this.#sig = signalView(signal);
    const workerData: CheckpointWorkerData = {
      path,
      intervalMs: this.#intervalMs,
      busyTimeoutMs: WORKER_BUSY_TIMEOUT_MS,
      signal,
    };
    this.worker = new Worker(new URL("./checkpoint-worker.js", import.meta.url), { workerData });
    // The store's close() stops it; a process that exits without closing must not wait for it.
    this.worker.unref();
    this.worker.once("error", (err) => this.#workerLost(err));
    this.worker.once("exit", (code) => this.#workerLost(new Error(`exit code ${code}`)));
  }

  /**
   * Synchronous, for the store's close(): the worker closes its connection before this returns, so the
   * main connection's close is the last one, which checkpoints the WAL and deletes the -wal file.
   */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#fallback);
    Atomics.store(this.#sig, STOP, 1);
    Atomics.notify(this.#sig, STOP);
    if (Atomics.compareExchange(this.#sig, STATE, STARTING, CANCELLED) === STARTING) {
      // It had not opened its connection yet and now never will: nothing to wait for.
      void this.worker.terminate();
      return;
    }
    // A worker known dead holds no connection any more (Node closes a dead thread's databases).
    if (this.#lost) return;
    if (Atomics.wait(this.#sig, STATE, OPEN, STOP_WAIT_MS) === "timed-out") void this.worker.terminate();
  }

  #workerLost(err: Error): void {
    if (this.#stopped || this.#lost) return;
    this.#lost = true;
    this.#onWorkerLost(err);
    // Commits on this connection (the daemon's are all on it) tell the rounds whether anything is new.
    const totalChanges = this.#db.prepare<[], number>("SELECT total_changes()").pluck();
    const round = checkpointRounds(this.#db, () => totalChanges.get()!);
    this.#fallback = setInterval(() => {
      if (this.#db.open) round();
    }, this.#intervalMs);
    this.#fallback.unref();
  }
}
