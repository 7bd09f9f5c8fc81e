/**
 * The schema's history: a numbered, append-only list of migrations and the runner that applies them.
 *
 * Rules for adding one: append with the next version, never edit or reorder a released migration
 * (databases in the field already ran it), and keep its DDL here, spelled out, not built from
 * constants the repositories use: a migration must mean the same thing forever.
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { translateSqliteError } from "./errors.js";
import { toDbTime } from "./time.js";

export interface Migration {
  readonly version: number;
  readonly name: string;
  /**
   * Rebuilding a table (SQLite's only way to change a constraint) needs foreign keys off; the runner
   * turns them off around the transaction and runs foreign_key_check before committing.
   */
  readonly foreignKeysOff?: boolean;
  up(db: Database.Database): void;
}

/**
 * Frozen copy of the fixed-width timestamp shape (see time.ts). The schema checks it so that no
 * code path can store a trimmed timestamp that would break `lease_expires_at <= ?` comparisons.
 */
const TS =
  "GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]Z'";

const INIT_CORE_TABLES = `
CREATE TABLE workspaces (
  id                 TEXT PRIMARY KEY,
  name               TEXT NOT NULL UNIQUE CHECK (name <> ''),
  storage            TEXT NOT NULL,
  volid              TEXT NOT NULL,
  size_gb            INTEGER NOT NULL CHECK (size_gb > 0),
  attached_vmid      INTEGER,
  last_attached_vmid INTEGER,
  lease_owner        TEXT,
  lease_nonce        TEXT,
  lease_expires_at   TEXT CHECK (lease_expires_at ${TS}),
  created_at         TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at         TEXT NOT NULL CHECK (updated_at ${TS}),
  meta_json          TEXT
);
-- One workspace per VM; the attach CAS (attached_vmid IS NULL) gives one VM per workspace.
CREATE UNIQUE INDEX workspaces_attached_vmid ON workspaces(attached_vmid) WHERE attached_vmid IS NOT NULL;
CREATE INDEX workspaces_lease_expires_at ON workspaces(lease_expires_at) WHERE lease_expires_at IS NOT NULL;

CREATE TABLE sandboxes (
  vmid             INTEGER PRIMARY KEY CHECK (vmid > 0),
  name             TEXT NOT NULL,
  profile          TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('REQUESTED', 'PROVISIONING', 'BOOTING', 'READY', 'RUNNING',
                     'SUSPENDED', 'COMPLETED', 'FAILED', 'TIMEOUT', 'STOPPED', 'DESTROYED')),
  node             TEXT,
  -- NULL when unknown: upstream wrote '' and then had to special-case it everywhere.
  ip               TEXT CHECK (ip <> ''),
  workspace_id     TEXT REFERENCES workspaces(id) ON DELETE SET NULL,
  keepalive        INTEGER NOT NULL DEFAULT 0 CHECK (keepalive IN (0, 1)),
  lease_expires_at TEXT CHECK (lease_expires_at ${TS}),
  tags             TEXT NOT NULL DEFAULT '',
  failure_reason   TEXT,
  -- Set once the clone succeeded for this row; cleanup destroys a Proxmox VM only when it is 1, so a
  -- failure before the clone can never destroy someone else's VM with the same id (upstream T36/F1).
  vm_created       INTEGER NOT NULL DEFAULT 0 CHECK (vm_created IN (0, 1)),
  -- Kept in the row, not in memory, so the cloud-init snippet is still cleaned after a restart.
  snippet_path     TEXT,
  created_at       TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at       TEXT NOT NULL CHECK (updated_at ${TS}),
  last_used_at     TEXT CHECK (last_used_at ${TS})
);
-- Two live sandboxes with one guest IP was a real upstream incident; destroyed rows keep their last IP.
CREATE UNIQUE INDEX sandboxes_ip_live ON sandboxes(ip) WHERE ip IS NOT NULL AND state <> 'DESTROYED';
CREATE INDEX sandboxes_state ON sandboxes(state);
CREATE INDEX sandboxes_profile ON sandboxes(profile);
-- Lets ON DELETE SET NULL from workspaces find the rows without a scan.
CREATE INDEX sandboxes_workspace_id ON sandboxes(workspace_id) WHERE workspace_id IS NOT NULL;

CREATE TABLE sessions (
  id           TEXT PRIMARY KEY,
  name         TEXT NOT NULL UNIQUE CHECK (name <> ''),
  workspace_id TEXT NOT NULL REFERENCES workspaces(id),
  current_vmid INTEGER,
  profile      TEXT NOT NULL,
  branch       TEXT,
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at   TEXT NOT NULL CHECK (updated_at ${TS})
);
CREATE INDEX sessions_workspace_id ON sessions(workspace_id);
CREATE INDEX sessions_current_vmid ON sessions(current_vmid) WHERE current_vmid IS NOT NULL;

CREATE TABLE jobs (
  id             TEXT PRIMARY KEY,
  repo_url       TEXT NOT NULL,
  ref            TEXT NOT NULL,
  profile        TEXT NOT NULL,
  status         TEXT NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'TIMEOUT')),
  task           TEXT,
  mode           TEXT,
  ttl_minutes    INTEGER CHECK (ttl_minutes > 0),
  keepalive      INTEGER NOT NULL DEFAULT 0 CHECK (keepalive IN (0, 1)),
  sandbox_vmid   INTEGER REFERENCES sandboxes(vmid),
  -- Plain ids, not foreign keys: a job's history should still name the workspace and session it
  -- used after they are deleted.
  workspace_id   TEXT,
  session_id     TEXT,
  result_json    TEXT,
  failure_reason TEXT,
  created_at     TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at     TEXT NOT NULL CHECK (updated_at ${TS})
);
CREATE INDEX jobs_status ON jobs(status);
CREATE INDEX jobs_sandbox_vmid ON jobs(sandbox_vmid, created_at) WHERE sandbox_vmid IS NOT NULL;
CREATE INDEX jobs_workspace_id ON jobs(workspace_id) WHERE workspace_id IS NOT NULL;
CREATE INDEX jobs_session_id ON jobs(session_id) WHERE session_id IS NOT NULL;

CREATE TABLE workspace_snapshots (
  workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
  name         TEXT NOT NULL CHECK (name <> ''),
  backend_ref  TEXT NOT NULL,
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  PRIMARY KEY (workspace_id, name)
);

CREATE TABLE events (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  ts           TEXT NOT NULL CHECK (ts ${TS}),
  kind         TEXT NOT NULL CHECK (kind <> ''),
  sandbox_vmid INTEGER,
  job_id       TEXT,
  workspace_id TEXT,
  msg          TEXT,
  json         TEXT
);
CREATE INDEX events_sandbox_vmid ON events(sandbox_vmid, id) WHERE sandbox_vmid IS NOT NULL;
CREATE INDEX events_job_id ON events(job_id, id) WHERE job_id IS NOT NULL;
-- Upstream's workspace events carried no key at all and could not be found again.
CREATE INDEX events_workspace_id ON events(workspace_id, id) WHERE workspace_id IS NOT NULL;
CREATE INDEX events_ts ON events(ts);

CREATE TABLE bootstrap_tokens (
  -- SHA-256 hex of the token; the token itself is never stored.
  token_hash  TEXT PRIMARY KEY CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
  vmid        INTEGER NOT NULL,
  expires_at  TEXT NOT NULL CHECK (expires_at ${TS}),
  consumed_at TEXT CHECK (consumed_at ${TS}),
  created_at  TEXT NOT NULL CHECK (created_at ${TS})
);
CREATE INDEX bootstrap_tokens_vmid ON bootstrap_tokens(vmid);

CREATE TABLE artifacts (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  vmid       INTEGER,
  name       TEXT NOT NULL,
  path       TEXT NOT NULL,
  size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
  sha256     TEXT NOT NULL,
  mime       TEXT,
  created_at TEXT NOT NULL CHECK (created_at ${TS})
);
CREATE INDEX artifacts_job_id ON artifacts(job_id);
CREATE INDEX artifacts_vmid ON artifacts(vmid) WHERE vmid IS NOT NULL;

CREATE TABLE artifact_tokens (
  token_hash   TEXT PRIMARY KEY CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
  job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  vmid         INTEGER,
  expires_at   TEXT NOT NULL CHECK (expires_at ${TS}),
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  last_used_at TEXT CHECK (last_used_at ${TS})
);
CREATE INDEX artifact_tokens_job_id ON artifact_tokens(job_id);
CREATE INDEX artifact_tokens_vmid ON artifact_tokens(vmid) WHERE vmid IS NOT NULL;
CREATE INDEX artifact_tokens_expires_at ON artifact_tokens(expires_at);
`;

/**
 * Workspaces as disks owned by a stopped holder VM (docs/workspaces-design.md §3, §11.1): the holder's
 * VMID and node, the storage type and format, a lifecycle state, fork lineage; snapshot state and kind;
 * one intent row per workspace for crash recovery (§10); and the allocator's high-water mark, because
 * workspace rows are deleted on destroy while their holder VMIDs must never be handed out again (§3.3).
 */
const ADD_WORKSPACE_HOLDERS = `
ALTER TABLE workspaces ADD COLUMN node TEXT;
ALTER TABLE workspaces ADD COLUMN holder_vmid INTEGER;
ALTER TABLE workspaces ADD COLUMN storage_type TEXT;
ALTER TABLE workspaces ADD COLUMN format TEXT;
ALTER TABLE workspaces ADD COLUMN state TEXT NOT NULL DEFAULT 'ready'
  CHECK (state IN ('creating', 'ready', 'destroying', 'broken'));
ALTER TABLE workspaces ADD COLUMN broken_reason TEXT;
-- A plain id, not a foreign key: a fork's history survives its source.
ALTER TABLE workspaces ADD COLUMN forked_from TEXT;
ALTER TABLE workspaces ADD COLUMN fork_origin_snapshot TEXT;
ALTER TABLE workspaces ADD COLUMN copy_mode TEXT CHECK (copy_mode IN ('cow', 'full'));
CREATE UNIQUE INDEX workspaces_holder_vmid ON workspaces(holder_vmid) WHERE holder_vmid IS NOT NULL;

ALTER TABLE workspace_snapshots ADD COLUMN state TEXT NOT NULL DEFAULT 'ready'
  CHECK (state IN ('creating', 'ready', 'deleting'));
-- backend_ref is the Proxmox snapname on the holder.
ALTER TABLE workspace_snapshots ADD COLUMN kind TEXT NOT NULL DEFAULT 'user'
  CHECK (kind IN ('user', 'fork-base'));

CREATE TABLE workspace_ops (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
  session_id   TEXT,
  kind         TEXT NOT NULL CHECK (kind IN ('create', 'attach', 'detach', 'snapshot', 'restore', 'fork',
                 'fsck', 'destroy', 'rebind', 'session_create', 'session_resume', 'session_stop')),
  step         TEXT NOT NULL,
  -- vmid(s), snapname, upid, nbd device, pid and start time, activated flags: what recovery needs.
  params_json  TEXT NOT NULL,
  lease_owner  TEXT,
  lease_nonce  TEXT,
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at   TEXT NOT NULL CHECK (updated_at ${TS})
);
-- One operation per workspace at a time: the second begin fails on this index.
CREATE UNIQUE INDEX workspace_ops_one ON workspace_ops(workspace_id);

CREATE TABLE vmid_allocator (id INTEGER PRIMARY KEY CHECK (id = 1), last_vmid INTEGER NOT NULL);
`;

/**
 * A job sandbox's guest holds two bootstrap tokens: the ready report's and the runner's job fetch (each
 * single use, so one must not consume the other). The fetch hands the runner a per-job report token, of
 * which only the hash is kept: upstream accepted runner reports from any source address in the subnet.
 */
const ADD_JOB_RUNNER_TOKENS = `
ALTER TABLE bootstrap_tokens ADD COLUMN purpose TEXT NOT NULL DEFAULT 'ready' CHECK (purpose IN ('ready', 'job'));
ALTER TABLE jobs ADD COLUMN report_token_hash TEXT
  CHECK (report_token_hash IS NULL OR (length(report_token_hash) = 64 AND report_token_hash NOT GLOB '*[^0-9a-f]*'));
`;

/**
 * Tokens of the remote control listener (docs/remote.md): only the SHA-256 of each secret is kept. The
 * creating token is recorded on the rows an `operate` token may later act on, so such a token is held
 * to what it created (a plain id, not a foreign key: revoking or deleting a token keeps the history).
 */
const ADD_API_TOKENS = `
CREATE TABLE api_tokens (
  id           TEXT PRIMARY KEY,
  name         TEXT NOT NULL UNIQUE CHECK (name <> ''),
  secret_hash  TEXT NOT NULL UNIQUE CHECK (length(secret_hash) = 64 AND secret_hash NOT GLOB '*[^0-9a-f]*'),
  hint         TEXT NOT NULL,
  scope        TEXT NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
  all_targets  INTEGER NOT NULL DEFAULT 0 CHECK (all_targets IN (0, 1)),
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  expires_at   TEXT CHECK (expires_at ${TS}),
  revoked_at   TEXT CHECK (revoked_at ${TS}),
  last_used_at TEXT CHECK (last_used_at ${TS})
);
ALTER TABLE sandboxes ADD COLUMN owner_token TEXT;
ALTER TABLE workspaces ADD COLUMN owner_token TEXT;
ALTER TABLE jobs ADD COLUMN owner_token TEXT;
`;

/**
 * The guest's SSH host keys from its ready report, as a JSON array of "type base64" strings; NULL when
 * the guest has not reported any (created before this, or it never phoned home).
 */
const ADD_SANDBOX_SSH_HOST_KEYS = `
ALTER TABLE sandboxes ADD COLUMN ssh_host_keys TEXT;
`;

/**
 * The agent's output as the runner streams it while a job runs (docs/jobs.md): one row per chunk keyed
 * by its byte offset in the job's log, so a chunk the runner sends again after a lost answer is stored
 * once and the log is the chunks in offset order. (Uploaded files use migration 1's artifacts table.)
 * Version 6: version 5 belongs to another change made at the same time.
 */
const ADD_JOB_LOG_CHUNKS = `
CREATE TABLE job_log_chunks (
  job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  pos        INTEGER NOT NULL CHECK (pos >= 0),
  data       BLOB NOT NULL,
  created_at TEXT NOT NULL CHECK (created_at ${TS}),
  PRIMARY KEY (job_id, pos)
);
`;

/**
 * `sandbox revert` keeps an attached workspace across the rollback under a `revert` intent
 * (services/workspaces/across-revert.ts). The kind list is a CHECK constraint, so the table is rebuilt
 * (SQLite's way to change one), rows and ids kept.
 */
const ADD_WORKSPACE_OP_REVERT = `
CREATE TABLE workspace_ops_new (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
  session_id   TEXT,
  kind         TEXT NOT NULL CHECK (kind IN ('create', 'attach', 'detach', 'snapshot', 'restore', 'fork',
                 'fsck', 'destroy', 'rebind', 'session_create', 'session_resume', 'session_stop', 'revert')),
  step         TEXT NOT NULL,
  params_json  TEXT NOT NULL,
  lease_owner  TEXT,
  lease_nonce  TEXT,
  created_at   TEXT NOT NULL CHECK (created_at ${TS}),
  updated_at   TEXT NOT NULL CHECK (updated_at ${TS})
);
INSERT INTO workspace_ops_new (id, workspace_id, session_id, kind, step, params_json, lease_owner, lease_nonce,
                               created_at, updated_at)
  SELECT id, workspace_id, session_id, kind, step, params_json, lease_owner, lease_nonce, created_at, updated_at
  FROM workspace_ops;
DROP TABLE workspace_ops;
ALTER TABLE workspace_ops_new RENAME TO workspace_ops;
CREATE UNIQUE INDEX workspace_ops_one ON workspace_ops(workspace_id);
`;

/**
 * Credentials split off a job's repository URL at `job run` (https://user:pass@host/repo): the jobs row
 * keeps the URL without them; the runner gets them in its one job fetch. Deleted when the job ends.
 */
const ADD_JOB_SECRETS = `
CREATE TABLE job_secrets (
  job_id        TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
  repo_username TEXT NOT NULL,
  repo_password TEXT NOT NULL
);
`;

// One intent row per sandbox operation on its VM (destroy, stop, start, revert, snapshot save/restore), written
// before the first Proxmox call and deleted by the transaction that records the outcome: a row left
// behind is an operation a crash interrupted, which start-up recovery finishes or undoes after reading
// Proxmox. One per sandbox, since the sandbox's operation lock allows one at a time.
const ADD_SANDBOX_OPS = `
CREATE TABLE sandbox_ops (
  vmid        INTEGER PRIMARY KEY REFERENCES sandboxes(vmid) ON DELETE CASCADE,
  kind        TEXT NOT NULL CHECK (kind IN ('destroy', 'stop', 'start', 'revert', 'snapshot_save', 'snapshot_restore')),
  params_json TEXT NOT NULL DEFAULT '{}',
  created_at  TEXT NOT NULL CHECK (created_at ${TS})
);
`;

/**
 * The warm pool (docs/warm-pool.md): `pool` names the profile whose pool a sandbox is a member of, NULL
 * for every sandbox a user owns (claiming a member sets it NULL in the claim's transaction); and
 * sandbox_ops learns the claim's intent (`pool_claim`: the VM's name and tags still to be set in Proxmox).
 * SQLite cannot change a CHECK constraint in place, so sandbox_ops is rebuilt (foreign keys off around it).
 */
const ADD_WARM_POOL = `
ALTER TABLE sandboxes ADD COLUMN pool TEXT CHECK (pool <> '');
CREATE INDEX sandboxes_pool ON sandboxes(pool) WHERE pool IS NOT NULL;
CREATE TABLE sandbox_ops_new (
  vmid        INTEGER PRIMARY KEY REFERENCES sandboxes(vmid) ON DELETE CASCADE,
  kind        TEXT NOT NULL CHECK (kind IN ('destroy', 'stop', 'start', 'revert', 'snapshot_save', 'snapshot_restore',
                'pool_claim')),
  params_json TEXT NOT NULL DEFAULT '{}',
  created_at  TEXT NOT NULL CHECK (created_at ${TS})
);
INSERT INTO sandbox_ops_new (vmid, kind, params_json, created_at)
  SELECT vmid, kind, params_json, created_at FROM sandbox_ops;
DROP TABLE sandbox_ops;
ALTER TABLE sandbox_ops_new RENAME TO sandbox_ops;
`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "init_core_tables",
    up(db) {
      db.exec(INIT_CORE_TABLES);
    },
  },
  {
    version: 2,
    name: "add_workspace_holders",
    up(db) {
      db.exec(ADD_WORKSPACE_HOLDERS);
      // No code created workspaces before this version; a row that exists anyway has no holder VM to
      // own its disk, so it must not look usable (design §11.1).
      db.exec(
        "UPDATE workspaces SET state = 'broken', broken_reason = 'no holder VM (created before schema version 2)' " +
          "WHERE holder_vmid IS NULL",
      );
    },
  },
  {
    version: 3,
    name: "add_job_runner_tokens",
    up(db) {
      db.exec(ADD_JOB_RUNNER_TOKENS);
    },
  },
  {
    version: 4,
    name: "add_api_tokens",
    up(db) {
      db.exec(ADD_API_TOKENS);
    },
  },
  {
    version: 5,
    name: "add_sandbox_ssh_host_keys",
    up(db) {
      db.exec(ADD_SANDBOX_SSH_HOST_KEYS);
    },
  },
  {
    version: 6,
    name: "add_job_log_chunks",
    up(db) {
      db.exec(ADD_JOB_LOG_CHUNKS);
    },
  },
  {
    version: 8,
    name: "add_workspace_op_revert",
    foreignKeysOff: true,
    up(db) {
      db.exec(ADD_WORKSPACE_OP_REVERT);
    },
  },
  {
    version: 9,
    name: "add_job_secrets",
    up(db) {
      db.exec(ADD_JOB_SECRETS);
    },
  },
  {
    version: 10,
    name: "add_sandbox_ops",
    up(db) {
      db.exec(ADD_SANDBOX_OPS);
    },
  },
  {
    version: 11,
    name: "add_warm_pool",
    foreignKeysOff: true,
    up(db) {
      db.exec(ADD_WARM_POOL);
    },
  },
];

const NAME = /^[a-z0-9_]+$/;

/** Refuse a malformed list: empty, duplicate or non-ascending versions, missing or odd names. */
export function validateMigrations(list: readonly Migration[]): void {
  const bad = (why: string) => new AgentlabError("INTERNAL", `schema migration list is malformed: ${why}`);
  if (list.length === 0) throw bad("it is empty");
  let previous = 0;
  const names = new Set<string>();
  for (const m of list) {
    if (!Number.isSafeInteger(m.version) || m.version < 1) {
      throw bad(`version ${String(m.version)} is not a positive integer`);
    }
    if (m.version === previous) throw bad(`version ${m.version} appears twice`);
    if (m.version < previous) throw bad(`version ${m.version} comes after ${previous}`);
    if (typeof m.name !== "string" || m.name.trim() === "") throw bad(`version ${m.version} has no name`);
    if (!NAME.test(m.name)) throw bad(`version ${m.version} name "${m.name}" is not lower_snake_case`);
    if (names.has(m.name)) throw bad(`name "${m.name}" appears twice`);
    if (typeof m.up !== "function") throw bad(`version ${m.version} has no up()`);
    names.add(m.name);
    previous = m.version;
  }
}

validateMigrations(MIGRATIONS);

export const LATEST_SCHEMA_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]!.version;

export interface AppliedMigration {
  version: number;
  name: string;
  applied_at: string;
}

/** The schema_migrations rows, oldest first; empty for a database that never ran a migration. */
export function readAppliedMigrations(db: Database.Database): AppliedMigration[] {
  const exists = db
    .prepare<[], { n: number }>(
      "SELECT count(*) AS n FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
    )
    .get();
  if (!exists || exists.n === 0) return [];
  return db
    .prepare<[], AppliedMigration>("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    .all();
}

function tooNew(dbPath: string, dbVersion: number, supported: number, message: string): AgentlabError {
  return new AgentlabError("DB_TOO_NEW", message, {
    hint:
      `this database was written by a newer or different agentlabd (schema ${dbVersion}; this one supports up to ${supported}). ` +
      "It was not modified. Install the agentlabd version that wrote it, or restore a backup taken before the upgrade.",
    details: { path: dbPath, db_version: dbVersion, supported_version: supported },
  });
}

/**
 * Check the applied history against the list and return what is still pending. Throws before any
 * write, so a database from a newer agentlabd is left exactly as it was.
 */
export function pendingMigrations(
  applied: readonly AppliedMigration[],
  list: readonly Migration[],
  dbPath: string,
): Migration[] {
  const latest = list[list.length - 1]!.version;
  const known = new Map(list.map((m) => [m.version, m]));
  const newest = applied.reduce((max, a) => Math.max(max, a.version), 0);
  if (newest > latest) {
    throw tooNew(
      dbPath,
      newest,
      latest,
      `database schema version ${newest} is newer than this agentlabd supports (${latest})`,
    );
  }
  for (const a of applied) {
    const m = known.get(a.version);
    if (m === undefined) {
      throw tooNew(
        dbPath,
        a.version,
        latest,
        `database schema version ${a.version} is unknown to this agentlabd (it knows ${[...known.keys()].join(", ")})`,
      );
    }
    if (m.name !== a.name) {
      throw tooNew(
        dbPath,
        a.version,
        latest,
        `database schema version ${a.version} is "${a.name}" but this agentlabd's is "${m.name}"`,
      );
    }
  }
  const done = new Set(applied.map((a) => a.version));
  const pending = list.filter((m) => !done.has(m.version));
  const early = pending.find((m) => m.version < newest);
  if (early !== undefined) {
    // Only possible if someone inserted a migration into the middle of a released list.
    throw new AgentlabError(
      "INTERNAL",
      `schema migration ${early.version} (${early.name}) would run after version ${newest}: the migration list is not append-only`,
      { details: { path: dbPath, db_version: newest, pending_version: early.version } },
    );
  }
  return pending;
}

export interface MigrateOptions {
  /** Shown in errors; the database's own file name. */
  path: string;
  now?: () => Date;
  migrations?: readonly Migration[];
  /** Check only: refuse a database that still needs migrating instead of writing to it. */
  readonly?: boolean;
}

export interface MigrateResult {
  /** Versions this call applied, ascending. */
  applied: number[];
  version: number;
}

const CREATE_SCHEMA_MIGRATIONS = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  applied_at TEXT NOT NULL
)`;

/** Apply every pending migration, each in its own IMMEDIATE transaction with its schema_migrations row. */
export function migrate(db: Database.Database, options: MigrateOptions): MigrateResult {
  const list = options.migrations ?? MIGRATIONS;
  const now = options.now ?? (() => new Date());
  validateMigrations(list);
  let pending: Migration[];
  try {
    pending = pendingMigrations(readAppliedMigrations(db), list, options.path);
  } catch (err) {
    throw translateSqliteError(err, options.path) ?? err;
  }
  const currentVersion = () => readAppliedMigrations(db).reduce((max, a) => Math.max(max, a.version), 0);
  if (options.readonly) {
    if (pending.length > 0) {
      throw new AgentlabError(
        "DB_UNAVAILABLE",
        `database ${options.path} needs schema migration ${pending.map((m) => m.version).join(", ")} and was opened read-only`,
        {
          hint: "start the daemon once so it migrates the database: systemctl start agentlabd",
          details: { path: options.path, pending: pending.map((m) => m.version) },
        },
      );
    }
    return { applied: [], version: currentVersion() };
  }
  const applied: number[] = [];
  const insert = (m: Migration) =>
    db
      .prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)")
      .run(m.version, m.name, toDbTime(now()));
  for (const m of pending) {
    const run = db.transaction(() => {
      db.exec(CREATE_SCHEMA_MIGRATIONS);
      // Another process may have migrated while we waited for the write lock: re-check under it.
      const stillPending = pendingMigrations(readAppliedMigrations(db), list, options.path);
      if (!stillPending.some((p) => p.version === m.version)) return false;
      m.up(db);
      if (m.foreignKeysOff) {
        const violations = db.pragma("foreign_key_check") as unknown[];
        if (violations.length > 0) {
          throw new Error(
            `leaves ${violations.length} foreign key violation(s): ${JSON.stringify(violations[0])}`,
          );
        }
      }
      insert(m);
      return true;
    });
    if (m.foreignKeysOff) db.pragma("foreign_keys = OFF");
    try {
      if (run.immediate()) applied.push(m.version);
    } catch (err) {
      if (err instanceof AgentlabError) throw err;
      const translated = translateSqliteError(err, options.path);
      if (translated !== undefined) throw translated;
      throw new AgentlabError(
        "INTERNAL",
        `schema migration ${m.version} (${m.name}) failed: ${err instanceof Error ? err.message : String(err)}`,
        { details: { path: options.path, version: m.version, name: m.name }, cause: err },
      );
    } finally {
      if (m.foreignKeysOff) db.pragma("foreign_keys = ON");
    }
  }
  return { applied, version: currentVersion() };
}
