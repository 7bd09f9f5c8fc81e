/**
 * Opening the database. Everything the daemon stores goes through here: SQL lives in
 * src/daemon/store only, one repository module per table.
 *
 * Open order matters: checks that only read (quick_check, schema version) run before anything that
 * writes (WAL switch, migrations), so a damaged database or one from a newer agentlabd is refused
 * without being touched.
 */

import fs from "node:fs";
import type { FileHandle } from "node:fs/promises";
import nodePath from "node:path";
import Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { Checkpointer } from "./checkpointer.js";
import {
  classifySqliteError,
  dbCorruptError,
  dbUnavailableError,
  osReason,
  translateSqliteError,
} from "./errors.js";
import { createEventRepo, type EventRepo } from "./events.js";
import { createJobArtifactRepo, type JobArtifactRepo } from "./job-artifacts.js";
import { createJobLogRepo, type JobLogRepo } from "./job-logs.js";
import { createJobRepo, type JobRepo } from "./jobs.js";
import { createWorkspaceLeaseRepo, type WorkspaceLeaseRepo } from "./leases.js";
import { MIGRATIONS, migrate, pendingMigrations, readAppliedMigrations } from "./migrations.js";
import { createSandboxOpRepo, type SandboxOpRepo } from "./sandbox-ops.js";
import { createSandboxRepo, type SandboxRepo } from "./sandboxes.js";
import { createSessionRepo, type SessionRepo } from "./sessions.js";
import { createVmidAllocatorRepo, type VmidAllocatorRepo } from "./vmid-allocator.js";
import { createWorkspaceOpRepo, type WorkspaceOpRepo } from "./workspace-ops.js";
import { createWorkspaceSnapshotRepo, type WorkspaceSnapshotRepo } from "./workspace-snapshots.js";
import { createWorkspaceRepo, type WorkspaceRepo } from "./workspaces.js";

export type { DbHolder, StorageFailure } from "./errors.js";
export { classifySqliteError, findDbHolders, translateSqliteError } from "./errors.js";

export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

export interface StoreOptions {
  /** How long a statement waits for another connection's lock before failing with DB_LOCKED. */
  busyTimeoutMs?: number;
  /** Inspect only: no directory creation, no WAL switch, no migrations (a database needing one is refused). */
  readonly?: boolean;
  /** Clock for every timestamp the store writes; injected by tests. */
  now?: () => Date;
  /** Makes the write-ahead log durable (fsync of the -wal file); injected by tests to observe it. */
  syncWal?: (walPath: string) => Promise<void>;
  /** Told once if the checkpoint thread dies (./checkpointer.ts); the main connection then checkpoints. */
  onCheckpointerLost?: (err: Error) => void;
}

export interface Store {
  /** For repositories in this directory only. */
  readonly db: Database.Database;
  /** Absolute path of the database file. */
  readonly path: string;
  readonly readonly: boolean;
  readonly now: () => Date;
  readonly sandboxes: SandboxRepo;
  readonly events: EventRepo;
  readonly jobs: JobRepo;
  readonly jobArtifacts: JobArtifactRepo;
  readonly jobLogs: JobLogRepo;
  readonly workspaces: WorkspaceRepo;
  readonly workspaceLeases: WorkspaceLeaseRepo;
  readonly workspaceSnapshots: WorkspaceSnapshotRepo;
  readonly workspaceOps: WorkspaceOpRepo;
  /** Intents of sandbox operations in flight (or interrupted: start-up recovery's work list). */
  readonly sandboxOps: SandboxOpRepo;
  readonly sessions: SessionRepo;
  /** The VMID high-water mark shared by sandboxes and workspace holders. */
  readonly vmidAllocator: VmidAllocatorRepo;
  /** Run fn in one IMMEDIATE transaction (the write lock is taken up front, so no upgrade deadlock). */
  tx<T>(fn: () => T): T;
  /**
   * Resolves once every commit made so far survives a power loss (docs/reliability.md, "Durability").
   * Called before every Proxmox call that changes something, so the intent a change depends on is on
   * disk before the change is made. Costs nothing when nothing was committed since the last one.
   */
  flush(): Promise<void>;
  /** Highest applied migration version. */
  schemaVersion(): number;
  /** Size of the database file plus its write-ahead log, in bytes. */
  sizeBytes(): number;
  /** Idempotent. */
  close(): void;
}

export { CHECKPOINT_EVERY_MS } from "./checkpointer.js";

/** fsync of a file that may not exist (no -wal yet, or a read-only open): nothing to make durable. */
async function fsyncFile(file: string): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await fs.promises.open(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  try {
    // Linux syncs the inode whatever the descriptor's mode: SQLite's own write()s to -wal included.
    await handle.sync();
  } finally {
    await handle.close();
  }
}

class SqliteStore implements Store {
  readonly sandboxes: SandboxRepo;
  readonly events: EventRepo;
  readonly jobs: JobRepo;
  readonly jobArtifacts: JobArtifactRepo;
  readonly jobLogs: JobLogRepo;
  readonly workspaces: WorkspaceRepo;
  readonly workspaceLeases: WorkspaceLeaseRepo;
  readonly workspaceSnapshots: WorkspaceSnapshotRepo;
  readonly workspaceOps: WorkspaceOpRepo;
  readonly sandboxOps: SandboxOpRepo;
  readonly sessions: SessionRepo;
  readonly vmidAllocator: VmidAllocatorRepo;
  readonly #versionStmt: Database.Statement<[], { version: number }>;
  /** Copies the WAL into the file every CHECKPOINT_EVERY_MS, off the main thread; none when readonly. */
  readonly #checkpointer: Checkpointer | undefined;
  readonly #totalChanges: Database.Statement<[], number>;
  /** total_changes() that the last finished flush made durable. */
  #flushed = 0;
  /** Flushes run one after another, so a caller never returns before the fsync its commits need. */
  #flushing: Promise<void> = Promise.resolve();

  constructor(
    readonly db: Database.Database,
    readonly path: string,
    readonly readonly: boolean,
    readonly now: () => Date,
    private readonly syncWal: (walPath: string) => Promise<void> = fsyncFile,
    onCheckpointerLost?: (err: Error) => void,
  ) {
    this.sandboxes = createSandboxRepo(db, now);
    this.events = createEventRepo(db, now);
    this.jobs = createJobRepo(db, now);
    this.jobArtifacts = createJobArtifactRepo(db, now);
    this.jobLogs = createJobLogRepo(db, now);
    this.vmidAllocator = createVmidAllocatorRepo(db);
    this.workspaces = createWorkspaceRepo(db, now, this.vmidAllocator);
    this.workspaceLeases = createWorkspaceLeaseRepo(db, now);
    this.workspaceSnapshots = createWorkspaceSnapshotRepo(db, now);
    this.workspaceOps = createWorkspaceOpRepo(db, now);
    this.sandboxOps = createSandboxOpRepo(db, now);
    this.sessions = createSessionRepo(db, now);
    this.#versionStmt = db.prepare("SELECT coalesce(max(version), 0) AS version FROM schema_migrations");
    this.#totalChanges = db.prepare<[], number>("SELECT total_changes()").pluck();
    // openStore checkpointed (and so synced) everything the migrations wrote before building this.
    this.#flushed = this.#totalChanges.get()!;
    if (!readonly) {
      this.#checkpointer = new Checkpointer(
        db,
        path,
        onCheckpointerLost ? { onWorkerLost: onCheckpointerLost } : {},
      );
    }
  }

  flush(): Promise<void> {
    if (this.readonly || !this.db.open) return Promise.resolve();
    // Row changes by this connection since it opened: a commit since the last flush raised it.
    const upTo = this.#totalChanges.get()!;
    if (upTo <= this.#flushed) return Promise.resolve();
    const run = async () => {
      if (upTo <= this.#flushed) return; // a flush queued before this one covered it
      const changes = this.#totalChanges.get()!;
      await this.syncWal(`${this.path}-wal`);
      this.#flushed = Math.max(this.#flushed, changes);
    };
    this.#flushing = this.#flushing.then(run, run);
    return this.#flushing;
  }

  tx<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn).immediate();
    } catch (err) {
      throw translateSqliteError(err, this.path) ?? err;
    }
  }

  schemaVersion(): number {
    return this.#versionStmt.get()?.version ?? 0;
  }

  sizeBytes(): number {
    let total = 0;
    for (const file of [this.path, `${this.path}-wal`]) {
      try {
        total += fs.statSync(file).size;
      } catch {
        // No -wal file just means nothing is waiting to be checkpointed.
      }
    }
    return total;
  }

  close(): void {
    // The checkpoint thread's connection closes first, so this one is the last: its close checkpoints
    // the WAL into the file and deletes -wal.
    this.#checkpointer?.stop();
    if (this.db.open) this.db.close();
  }
}

function quickCheck(db: Database.Database, dbPath: string): void {
  // quick_check skips the index-content cross-check of integrity_check: linear time, fine at start-up.
  const lines: string[] = [];
  try {
    for (const row of db.prepare<[], unknown[]>("PRAGMA quick_check(20)").raw().iterate()) {
      lines.push(String(row[0]));
    }
  } catch (err) {
    // On a damaged file SQLite reports the bad pages as rows and then fails the statement itself;
    // the rows say where the damage is, so keep them.
    if (classifySqliteError(err) === "corrupt") {
      throw dbCorruptError(dbPath, {
        cause: err,
        check: [...lines, err instanceof Error ? err.message : String(err)],
      });
    }
    throw err;
  }
  if (lines.length !== 1 || lines[0] !== "ok") throw dbCorruptError(dbPath, { check: lines });
}

/**
 * Open (creating if needed) and migrate the database at `path`. Failures come back as AgentlabErrors
 * with operator guidance: DB_LOCKED, DB_CORRUPT, DB_TOO_NEW or DB_UNAVAILABLE.
 */
export function openStore(path: string, opts: StoreOptions = {}): Store {
  const dbPath = nodePath.resolve(path);
  const readonly = opts.readonly ?? false;
  const busyTimeoutMs = opts.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
  if (!Number.isSafeInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `busyTimeoutMs must be a non-negative integer, got ${busyTimeoutMs}`,
    );
  }
  const now = opts.now ?? (() => new Date());

  if (!readonly) {
    const dir = nodePath.dirname(dbPath);
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o750 });
    } catch (err) {
      throw dbUnavailableError(dbPath, `cannot create directory ${dir}: ${osReason(err)}`, err);
    }
  }
  const existed = fs.existsSync(dbPath);

  let db: Database.Database;
  try {
    db = new Database(dbPath, { readonly, fileMustExist: readonly, timeout: busyTimeoutMs });
  } catch (err) {
    throw (
      translateSqliteError(err, dbPath, { readonly }) ??
      dbUnavailableError(dbPath, err instanceof Error ? err.message : String(err), err)
    );
  }

  try {
    if (!existed && !readonly) {
      // Token hashes and job results live here; -wal and -shm inherit this mode from SQLite.
      try {
        fs.chmodSync(dbPath, 0o640);
      } catch {
        // Not fatal: the 0750 directory already keeps other users out.
      }
    }
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
    db.pragma("foreign_keys = ON");
    // NORMAL: a commit is written to the WAL but not fsynced; flush() makes it durable before any
    // Proxmox change that depends on it, and each checkpoint (every CHECKPOINT_EVERY_MS) syncs the
    // rest. A kill -9 loses nothing either way (the kernel has the writes); see "Durability" in
    // docs/reliability.md for what a power loss can take back.
    db.pragma("synchronous = NORMAL");
    quickCheck(db, dbPath);
    pendingMigrations(readAppliedMigrations(db), MIGRATIONS, dbPath);
    if (!readonly) {
      const mode = String(db.pragma("journal_mode = WAL", { simple: true })).toLowerCase();
      if (mode !== "wal") {
        throw dbUnavailableError(
          dbPath,
          `cannot switch to WAL journaling (journal_mode stays ${mode}); put the database on a local filesystem`,
        );
      }
    }
    const result = migrate(db, { path: dbPath, now, readonly });
    if (!readonly) {
      // Once now for what is already there; afterwards every CHECKPOINT_EVERY_MS (./checkpointer.ts).
      db.pragma("wal_checkpoint(TRUNCATE)");
    }
    if (!readonly && result.applied.length === 0) {
      // Reads succeed while another process holds the write lock in WAL mode; take and drop it once
      // so a stale holder is reported now, not as a failure on the daemon's first write.
      db.exec("BEGIN IMMEDIATE");
      db.exec("ROLLBACK");
    }
    return new SqliteStore(db, dbPath, readonly, now, opts.syncWal, opts.onCheckpointerLost);
  } catch (err) {
    db.close();
    const translated = translateSqliteError(err, dbPath, { readonly });
    if (translated !== undefined) throw translated;
    throw new AgentlabError(
      "INTERNAL",
      `cannot open database ${dbPath}: ${err instanceof Error ? err.message : String(err)}`,
      {
        details: { path: dbPath },
        cause: err,
      },
    );
  }
}
