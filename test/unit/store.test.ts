import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import Database from "better-sqlite3";
import { openStore, translateSqliteError } from "../../src/daemon/store/db.js";
import {
  LATEST_SCHEMA_VERSION,
  MIGRATIONS,
  type Migration,
  migrate,
  validateMigrations,
} from "../../src/daemon/store/migrations.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import { catchAgentlab } from "../helpers/errors.js";

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-store-"));
  tempDirs.push(dir);
  return dir;
}

function tempDbPath(): string {
  return path.join(tempDir(), "agentlab.db");
}

function sha256(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** The hint's lines appear in this order. */
function assertInOrder(text: string, parts: string[]): void {
  let from = 0;
  for (const part of parts) {
    const at = text.indexOf(part, from);
    assert.ok(at >= 0, `expected ${JSON.stringify(part)} after position ${from} in:\n${text}`);
    from = at + part.length;
  }
}

const EXPECTED_TABLES = [
  "api_tokens",
  "artifact_tokens",
  "artifacts",
  "bootstrap_tokens",
  "events",
  "job_log_chunks",
  "job_secrets",
  "jobs",
  "sandbox_ops",
  "sandboxes",
  "schema_migrations",
  "sessions",
  "vmid_allocator",
  "workspace_ops",
  "workspace_snapshots",
  "workspaces",
];

describe("store: open and migrate", () => {
  it("creates the directory 0750 and a fresh database with every migration and the pragmas", () => {
    const dir = path.join(tempDir(), "nested", "state");
    const dbPath = path.join(dir, "agentlab.db");
    const clock = new Date("2026-02-14T13:26:17.898Z");
    const store = openStore(dbPath, { now: () => clock });
    try {
      assert.equal(fs.statSync(dir).mode & 0o777, 0o750);
      assert.equal(store.path, dbPath);
      assert.equal(store.schemaVersion(), LATEST_SCHEMA_VERSION);
      assert.equal(store.db.pragma("journal_mode", { simple: true }), "wal");
      assert.equal(store.db.pragma("foreign_keys", { simple: true }), 1);
      // NORMAL (1): commits are made durable by flush() before Proxmox writes (docs/reliability.md).
      assert.equal(store.db.pragma("synchronous", { simple: true }), 1);
      assert.equal(store.db.pragma("busy_timeout", { simple: true }), 5000);
      const rows = store.db
        .prepare("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        .all();
      assert.deepEqual(
        rows,
        MIGRATIONS.map((m) => ({
          version: m.version,
          name: m.name,
          applied_at: "2026-02-14T13:26:17.898000000Z",
        })),
      );
      const tables = store.db
        .prepare<[], { name: string }>(
          "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .all()
        .map((r) => r.name);
      assert.deepEqual(tables, EXPECTED_TABLES);
      assert.ok(store.sizeBytes() > 0);
    } finally {
      store.close();
    }
  });

  it("is idempotent on reopen: no duplicate migration rows, applied_at kept", () => {
    const dbPath = tempDbPath();
    openStore(dbPath, { now: () => new Date("2026-01-01T00:00:00Z") }).close();
    for (let i = 0; i < 3; i++) {
      const store = openStore(dbPath, { now: () => new Date("2027-01-01T00:00:00Z") });
      try {
        const rows = store.db.prepare("SELECT version, applied_at FROM schema_migrations").all();
        assert.deepEqual(
          rows,
          MIGRATIONS.map((m) => ({ version: m.version, applied_at: "2026-01-01T00:00:00.000000000Z" })),
        );
        assert.equal(store.schemaVersion(), LATEST_SCHEMA_VERSION);
      } finally {
        store.close();
      }
    }
  });

  it("migration 8 rebuilds workspace_ops keeping its rows and ids, and then accepts a revert intent", () => {
    const dbPath = tempDbPath();
    const db = new Database(dbPath);
    try {
      db.pragma("foreign_keys = ON");
      migrate(db, { path: dbPath, migrations: MIGRATIONS.filter((x) => x.version < 8) });
      const at = "2026-01-01T00:00:00.000000000Z";
      db.prepare(
        "INSERT INTO workspaces (id, name, storage, size_gb, volid, created_at, updated_at) VALUES (?, ?, 'local-lvm', 1, ?, ?, ?)",
      ).run("workspace-00000000000000aa", "w", "local-lvm:vm-900-disk-0", at, at);
      const insertOp = db.prepare(
        "INSERT INTO workspace_ops (id, workspace_id, kind, step, params_json, created_at, updated_at) VALUES (?, ?, ?, 'begin', '{}', ?, ?)",
      );
      assert.throws(
        () => insertOp.run(40, "workspace-00000000000000aa", "revert", at, at),
        /CHECK constraint failed/,
      );
      insertOp.run(41, "workspace-00000000000000aa", "detach", at, at);
      migrate(db, { path: dbPath });
      assert.deepEqual(db.prepare("SELECT id, kind FROM workspace_ops").all(), [{ id: 41, kind: "detach" }]);
      db.prepare("DELETE FROM workspace_ops").run();
      insertOp.run(null, "workspace-00000000000000aa", "revert", at, at);
      assert.equal(
        db.prepare("SELECT max(id) FROM workspace_ops").pluck().get(),
        42,
        "ids go on after the kept rows",
      );
      assert.deepEqual(db.pragma("foreign_key_check"), []);
      assert.equal(
        db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'workspace_ops_one'").pluck().get(),
        1,
        "the one-op-per-workspace index is back",
      );
    } finally {
      db.close();
    }
  });

  it("honours busyTimeoutMs and close() twice", () => {
    const store = openStore(tempDbPath(), { busyTimeoutMs: 250 });
    assert.equal(store.db.pragma("busy_timeout", { simple: true }), 250);
    store.close();
    store.close();
    assert.throws(() => openStore(tempDbPath(), { busyTimeoutMs: -1 }), /busyTimeoutMs/);
  });

  it("sizeBytes counts the database and its write-ahead log", () => {
    const store = openStore(tempDbPath());
    try {
      store.events.append({ kind: "test.size", msg: "x".repeat(10_000) });
      const expected = fs.statSync(store.path).size + fs.statSync(`${store.path}-wal`).size;
      assert.equal(store.sizeBytes(), expected);
    } finally {
      store.close();
    }
  });

  it("tx commits, rolls back on throw, and nests", () => {
    const store = openStore(tempDbPath());
    try {
      store.tx(() => {
        store.events.append({ kind: "a", sandbox_vmid: 1 });
        store.tx(() => store.events.append({ kind: "b", sandbox_vmid: 1 }));
      });
      assert.throws(
        () =>
          store.tx(() => {
            store.events.append({ kind: "c", sandbox_vmid: 1 });
            throw new Error("boom");
          }),
        /boom/,
      );
      assert.deepEqual(
        store.events.listForSandbox(1).map((e) => e.kind),
        ["a", "b"],
      );
    } finally {
      store.close();
    }
  });

  it("opens read-only without writing, and refuses a missing file", () => {
    const dbPath = tempDbPath();
    openStore(dbPath).close();
    const before = sha256(dbPath);
    const store = openStore(dbPath, { readonly: true });
    try {
      assert.equal(store.schemaVersion(), LATEST_SCHEMA_VERSION);
      assert.equal(store.sandboxes.list().length, 0);
    } finally {
      store.close();
    }
    assert.equal(sha256(dbPath), before);
    const err = catchAgentlab(() => openStore(path.join(tempDir(), "missing.db"), { readonly: true }));
    assert.equal(err.code, "DB_UNAVAILABLE");
    assert.match(err.message, /missing\.db/);
    assert.match(err.message, /no such file/);
  });
});

describe("store: schema version checks", () => {
  it("refuses a database from a newer agentlabd with DB_TOO_NEW and leaves it unchanged", () => {
    const dbPath = tempDbPath();
    openStore(dbPath).close();
    const raw = new Database(dbPath);
    raw
      .prepare("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)")
      .run(LATEST_SCHEMA_VERSION + 1, "from_the_future", "2030-01-01T00:00:00.000000000Z");
    raw.close();
    const before = sha256(dbPath);
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);

    for (const readonly of [false, true]) {
      const err = catchAgentlab(() => openStore(dbPath, { readonly }));
      assert.equal(err.code, "DB_TOO_NEW");
      assert.equal(
        err.message,
        `database schema version ${LATEST_SCHEMA_VERSION + 1} is newer than this agentlabd supports (${LATEST_SCHEMA_VERSION})`,
      );
      assert.deepEqual(err.details, {
        path: dbPath,
        db_version: LATEST_SCHEMA_VERSION + 1,
        supported_version: LATEST_SCHEMA_VERSION,
      });
      assert.match(err.hint, /not modified/);
    }

    assert.equal(sha256(dbPath), before);
    const check = new Database(dbPath, { readonly: true });
    assert.deepEqual(check.prepare("SELECT version FROM schema_migrations ORDER BY version").pluck().all(), [
      ...MIGRATIONS.map((m) => m.version),
      LATEST_SCHEMA_VERSION + 1,
    ]);
    check.close();
  });

  const table = (name: string): string => `CREATE TABLE ${name} (id INTEGER PRIMARY KEY)`;
  const m = (version: number, name: string, sql = table(`t${version}`)): Migration => ({
    version,
    name,
    up: (db) => db.exec(sql),
  });

  it("refuses an unknown version in the middle of the history", () => {
    const dbPath = tempDbPath();
    const db = new Database(dbPath);
    try {
      migrate(db, { path: dbPath, migrations: [m(1, "one"), m(2, "two"), m(3, "three")] });
      const err = catchAgentlab(() =>
        migrate(db, { path: dbPath, migrations: [m(1, "one"), m(3, "three")] }),
      );
      assert.equal(err.code, "DB_TOO_NEW");
      assert.match(err.message, /version 2 is unknown/);
      const renamed = catchAgentlab(() =>
        migrate(db, { path: dbPath, migrations: [m(1, "uno"), m(2, "two"), m(3, "three")] }),
      );
      assert.equal(renamed.code, "DB_TOO_NEW");
      assert.match(renamed.message, /version 1 is "one"/);
    } finally {
      db.close();
    }
  });

  it("refuses a migration inserted below the applied version", () => {
    const dbPath = tempDbPath();
    const db = new Database(dbPath);
    try {
      migrate(db, { path: dbPath, migrations: [m(1, "one"), m(3, "three")] });
      const err = catchAgentlab(() =>
        migrate(db, { path: dbPath, migrations: [m(1, "one"), m(2, "two"), m(3, "three")] }),
      );
      assert.equal(err.code, "INTERNAL");
      assert.match(err.message, /not append-only/);
    } finally {
      db.close();
    }
  });

  it("runs each migration in its own transaction", () => {
    const dbPath = tempDbPath();
    const db = new Database(dbPath);
    try {
      const failing: Migration = {
        version: 2,
        name: "half_done",
        up(d) {
          d.exec(table("half"));
          d.exec("THIS IS NOT SQL");
        },
      };
      const err = catchAgentlab(() => migrate(db, { path: dbPath, migrations: [m(1, "one"), failing] }));
      assert.equal(err.code, "INTERNAL");
      assert.match(err.message, /schema migration 2 \(half_done\) failed/);
      const versions = db.prepare("SELECT version FROM schema_migrations").pluck().all();
      assert.deepEqual(versions, [1]);
      const half = db.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'half'").pluck().get();
      assert.equal(half, 0);
      const again = migrate(db, { path: dbPath, migrations: [m(1, "one"), m(2, "half_done")] });
      assert.deepEqual(again, { applied: [2], version: 2 });
    } finally {
      db.close();
    }
  });

  it("turns foreign keys off around a table rebuild and back on after", () => {
    const dbPath = tempDbPath();
    const db = new Database(dbPath);
    try {
      db.pragma("foreign_keys = ON");
      const parent = m(
        1,
        "parent",
        "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p INTEGER REFERENCES p(id))",
      );
      const rebuild: Migration = {
        version: 2,
        name: "rebuild_parent",
        foreignKeysOff: true,
        up(d) {
          assert.equal(d.pragma("foreign_keys", { simple: true }), 0);
          d.exec("INSERT INTO p VALUES (1); INSERT INTO c VALUES (1)");
          d.exec("CREATE TABLE p2 (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO p2 (id) SELECT id FROM p");
          d.exec("DROP TABLE p; ALTER TABLE p2 RENAME TO p");
        },
      };
      migrate(db, { path: dbPath, migrations: [parent, rebuild] });
      assert.equal(db.pragma("foreign_keys", { simple: true }), 1);
      const broken: Migration = {
        version: 3,
        name: "orphan_child",
        foreignKeysOff: true,
        up: (d) => d.exec("INSERT INTO c VALUES (99)"),
      };
      const err = catchAgentlab(() => migrate(db, { path: dbPath, migrations: [parent, rebuild, broken] }));
      assert.match(err.message, /foreign key violation/);
      assert.equal(db.pragma("foreign_keys", { simple: true }), 1);
      assert.equal(db.prepare("SELECT count(*) FROM c WHERE p = 99").pluck().get(), 0);
    } finally {
      db.close();
    }
  });
});

describe("store: migration 2 (add_workspace_holders)", () => {
  const T = "2026-01-01T00:00:00.000000000Z";

  /** A database exactly as the first release left it, with one row in each table workspaces touch. */
  function version1Database(dbPath: string): void {
    const db = new Database(dbPath);
    try {
      db.pragma("foreign_keys = ON");
      migrate(db, { path: dbPath, migrations: MIGRATIONS.slice(0, 1), now: () => new Date(T) });
      db.prepare(
        `INSERT INTO workspaces (id, name, storage, volid, size_gb, attached_vmid, last_attached_vmid,
           lease_owner, lease_nonce, lease_expires_at, created_at, updated_at, meta_json)
         VALUES ('workspace-00000000000000aa', 'old', 'local-zfs', 'local-zfs:vm-0-disk-0', 10, 1001, 1001,
           'sandbox:1001', '0123456789abcdef0123456789abcdef', ?, ?, ?, '{"k":1}')`,
      ).run(T, T, T);
      db.prepare(
        `INSERT INTO sandboxes (vmid, name, profile, state, workspace_id, created_at, updated_at)
         VALUES (1001, 'sb', 'p', 'RUNNING', 'workspace-00000000000000aa', ?, ?)`,
      ).run(T, T);
      db.prepare(
        "INSERT INTO workspace_snapshots (workspace_id, name, backend_ref, created_at) VALUES ('workspace-00000000000000aa', 's1', 's1', ?)",
      ).run(T);
      db.prepare(
        `INSERT INTO sessions (id, name, workspace_id, current_vmid, profile, branch, created_at, updated_at)
         VALUES ('session_00000000000000aa', 'sess', 'workspace-00000000000000aa', 1001, 'p', 'main', ?, ?)`,
      ).run(T, T);
      assert.equal(db.prepare("SELECT max(version) FROM schema_migrations").pluck().get(), 1);
    } finally {
      db.close();
    }
  }

  it("upgrades a version 1 database to 2, keeping every row; a holder-less workspace becomes broken", () => {
    const dbPath = tempDbPath();
    version1Database(dbPath);
    const store = openStore(dbPath, { now: () => new Date("2026-03-01T00:00:00Z") });
    try {
      // Opening runs every later migration too; version 2 is the one this block is about.
      assert.equal(store.schemaVersion(), LATEST_SCHEMA_VERSION);
      assert.deepEqual(
        store.db
          .prepare("SELECT version, name FROM schema_migrations WHERE version <= 2 ORDER BY version")
          .all(),
        [
          { version: 1, name: "init_core_tables" },
          { version: 2, name: "add_workspace_holders" },
        ],
      );
      const ws = store.workspaces.require("old");
      assert.equal(ws.id, "workspace-00000000000000aa");
      assert.equal(ws.volid, "local-zfs:vm-0-disk-0");
      assert.equal(ws.attached_vmid, 1001);
      assert.equal(ws.lease_owner, "sandbox:1001");
      assert.equal(ws.lease_expires_at?.toISOString(), "2026-01-01T00:00:00.000Z");
      assert.deepEqual(ws.meta, { k: 1 });
      assert.equal(ws.holder_vmid, null);
      assert.equal(ws.node, null);
      assert.equal(ws.state, "broken");
      assert.match(ws.broken_reason ?? "", /no holder VM/);
      assert.equal(store.sandboxes.get(1001)?.workspace_id, ws.id);
      const snap = store.workspaceSnapshots.get(ws.id, "s1");
      assert.equal(snap?.state, "ready", "existing snapshot rows take the column default");
      assert.equal(snap?.kind, "user");
      assert.equal(store.sessions.require("sess").current_vmid, 1001);
      assert.deepEqual(store.workspaceOps.list(), []);
      assert.equal(store.vmidAllocator.highestUsed(), 1001);
    } finally {
      store.close();
    }
  });

  it("the new columns keep their constraints", () => {
    const store = openStore(tempDbPath());
    try {
      const insert = (state: string, copyMode: string | null) =>
        store.db
          .prepare(
            `INSERT INTO workspaces (id, name, storage, volid, size_gb, holder_vmid, state, copy_mode, created_at, updated_at)
             VALUES (?, ?, 'local-zfs', 'v', 1, NULL, ?, ?, ?, ?)`,
          )
          .run(`workspace-${state}`, `n-${state}-${copyMode}`, state, copyMode, T, T);
      assert.throws(() => insert("sleeping", null), /CHECK constraint failed/);
      assert.throws(() => insert("ready", "shallow"), /CHECK constraint failed/);
      insert("ready", "cow");
      assert.throws(
        () =>
          store.db
            .prepare(
              `INSERT INTO workspace_ops (workspace_id, kind, step, params_json, created_at, updated_at)
               VALUES ('workspace-ready', 'create', 's', '{}', '2026-01-01T00:00:00Z', ?)`,
            )
            .run(T),
        /CHECK constraint failed/,
        "a trimmed timestamp is refused",
      );
      assert.throws(
        () => store.db.prepare("INSERT INTO vmid_allocator (id, last_vmid) VALUES (2, 5)").run(),
        /CHECK constraint failed/,
        "the allocator has one row",
      );
    } finally {
      store.close();
    }
  });
});

describe("store: validateMigrations", () => {
  const up = () => {};
  it("accepts the real list", () => {
    validateMigrations(MIGRATIONS);
    assert.equal(LATEST_SCHEMA_VERSION, MIGRATIONS[MIGRATIONS.length - 1]?.version);
  });

  it("refuses bad lists", () => {
    const cases: Array<[string, Migration[]]> = [
      ["empty", []],
      [
        "appears twice",
        [
          { version: 1, name: "a", up },
          { version: 1, name: "b", up },
        ],
      ],
      [
        "comes after",
        [
          { version: 2, name: "a", up },
          { version: 1, name: "b", up },
        ],
      ],
      ["has no name", [{ version: 1, name: "", up }]],
      ["has no name", [{ version: 1, name: "   ", up }]],
      ["not a positive integer", [{ version: 0, name: "a", up }]],
      ["not a positive integer", [{ version: 1.5, name: "a", up }]],
      ["not lower_snake_case", [{ version: 1, name: "Init Tables", up }]],
      [
        'name "a" appears twice',
        [
          { version: 1, name: "a", up },
          { version: 2, name: "a", up },
        ],
      ],
    ];
    for (const [why, list] of cases) {
      const err = catchAgentlab(() => validateMigrations(list));
      assert.equal(err.code, "INTERNAL");
      assert.ok(err.message.includes(why), `${why}: ${err.message}`);
    }
  });
});

describe("store: errors an operator sees at start-up", () => {
  const betterSqlite = createRequire(import.meta.url).resolve("better-sqlite3");

  /** Another process that opens the database and holds an exclusive lock until its stdin closes. */
  async function lockHolder(dbPath: string, setup: string): Promise<ChildProcess> {
    const script = `
      const Database = require(${JSON.stringify(betterSqlite)});
      const db = new Database(${JSON.stringify(dbPath)});
      db.exec(${JSON.stringify(setup)});
      db.exec("BEGIN EXCLUSIVE");
      process.stdout.write("locked\\n");
      process.stdin.on("end", () => { db.exec("ROLLBACK"); db.close(); process.exit(0); });
      process.stdin.resume();
    `;
    const child = spawn(process.execPath, ["-e", script], { stdio: ["pipe", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      let out = "";
      child.stdout?.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes("locked\n")) resolve();
      });
      child.once("exit", (code) => reject(new Error(`lock holder exited early with ${code}`)));
      child.once("error", reject);
    });
    return child;
  }

  async function release(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.stdin?.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }

  function assertLocked(err: AgentlabError, dbPath: string, holderPid: number): void {
    assert.equal(err.code, "DB_LOCKED");
    assert.equal(err.message, `database is locked: ${dbPath}`);
    assert.equal(err.details["path"], dbPath);
    const holders = err.details["holders"] as Array<{ pid: number; command: string }>;
    assert.ok(Array.isArray(holders));
    const holder = holders.find((h) => h.pid === holderPid);
    assert.ok(holder, `holder pid ${holderPid} missing from ${JSON.stringify(holders)}`);
    // The full command line, so an operator can tell agentlabd from any other node process.
    assert.ok(holder.command.startsWith(process.execPath), holder.command);
    assert.ok(!holders.some((h) => h.pid === process.pid), "our own pid is not a holder");
    assertInOrder(err.hint, [
      `pid ${holderPid} (${holder.command})`,
      "ps aux | grep agentlabd",
      `lsof ${dbPath}`,
      "systemctl restart agentlabd",
    ]);
  }

  it("DB_LOCKED names the process holding a migrated (WAL) database, then opens once it is gone", async () => {
    const dbPath = tempDbPath();
    openStore(dbPath).close();
    const child = await lockHolder(dbPath, "SELECT 1");
    try {
      const started = Date.now();
      const err = catchAgentlab(() => openStore(dbPath, { busyTimeoutMs: 200 }));
      assert.ok(Date.now() - started < 5000, "busyTimeoutMs bounds the wait");
      assertLocked(err, dbPath, child.pid!);
    } finally {
      await release(child);
    }
    openStore(dbPath, { busyTimeoutMs: 200 }).close();
  });

  it("DB_LOCKED when another process holds a new rollback-journal database", async () => {
    const dbPath = tempDbPath();
    const child = await lockHolder(dbPath, "CREATE TABLE other_tool (x)");
    try {
      const err = catchAgentlab(() => openStore(dbPath, { busyTimeoutMs: 200 }));
      assertLocked(err, dbPath, child.pid!);
    } finally {
      await release(child);
    }
  });

  it("DB_CORRUPT for a file of random bytes, with the backup step in the hint, file untouched", () => {
    const dbPath = tempDbPath();
    fs.writeFileSync(dbPath, Buffer.from(Array.from({ length: 16_384 }, (_, i) => (i * 131 + 7) % 251)));
    const before = sha256(dbPath);
    const err = catchAgentlab(() => openStore(dbPath));
    assert.equal(err.code, "DB_CORRUPT");
    assert.equal(err.message, `database disk image is malformed: ${dbPath}`);
    assertInOrder(err.hint, [
      "systemctl stop agentlabd",
      `cp ${dbPath} ${dbPath}.backup`,
      `sqlite3 ${dbPath} "PRAGMA integrity_check;"`,
      `sqlite3 ${dbPath} "VACUUM;"`,
      "WARNING: this deletes all data",
      `rm ${dbPath}`,
    ]);
    assert.equal(sha256(dbPath), before);
  });

  it("DB_CORRUPT from quick_check for a valid database with a page overwritten", () => {
    const dbPath = tempDbPath();
    const store = openStore(dbPath);
    store.tx(() => {
      for (let i = 0; i < 3000; i++) {
        store.events.append({ kind: "test.fill", sandbox_vmid: i % 7, msg: `event ${i} ${"x".repeat(150)}` });
      }
    });
    store.close();
    assert.equal(fs.existsSync(`${dbPath}-wal`), false, "close checkpoints the WAL into the file");
    const pageSize = 4096;
    const pages = fs.statSync(dbPath).size / pageSize;
    assert.ok(pages > 50);
    const fd = fs.openSync(dbPath, "r+");
    fs.writeSync(fd, Buffer.alloc(pageSize, 0xa5), 0, pageSize, Math.floor(pages * 0.6) * pageSize);
    fs.closeSync(fd);

    const err = catchAgentlab(() => openStore(dbPath));
    assert.equal(err.code, "DB_CORRUPT");
    assert.equal(err.message, `database disk image is malformed: ${dbPath}`);
    const check = err.details["quick_check"];
    assert.ok(Array.isArray(check), JSON.stringify(err.details));
    assert.ok(
      check.some((line) => /page \d+/.test(String(line))),
      `quick_check names the damaged page: ${JSON.stringify(check)}`,
    );
    assert.ok(err.hint.includes(`cp ${dbPath} ${dbPath}.backup`));
  });

  it("DB_UNAVAILABLE when the directory cannot be created", () => {
    const dir = tempDir();
    const blocker = path.join(dir, "not-a-dir");
    fs.writeFileSync(blocker, "");
    const dbPath = path.join(blocker, "state", "agentlab.db");
    const err = catchAgentlab(() => openStore(dbPath));
    assert.equal(err.code, "DB_UNAVAILABLE");
    assert.ok(err.message.includes(dbPath), err.message);
    assert.match(err.message, /cannot create directory .*not a directory/);
    assert.equal(err.details["path"], dbPath);
  });

  it("DB_UNAVAILABLE when the database path is a directory", () => {
    const dbPath = tempDbPath();
    fs.mkdirSync(dbPath);
    const err = catchAgentlab(() => openStore(dbPath));
    assert.equal(err.code, "DB_UNAVAILABLE");
    assert.equal(err.message, `cannot open database ${dbPath}: ${dbPath} is a directory`);
  });

  it("translateSqliteError classifies by code and by message, and leaves other errors alone", () => {
    const p = "/var/lib/agentlab/agentlab.db";
    const withCode = (code: string, message: string) => Object.assign(new Error(message), { code });
    assert.equal(translateSqliteError(withCode("SQLITE_BUSY", "database is locked"), p)?.code, "DB_LOCKED");
    assert.equal(translateSqliteError(withCode("SQLITE_BUSY_SNAPSHOT", "x"), p)?.code, "DB_LOCKED");
    assert.equal(translateSqliteError(new Error("database is locked"), p)?.code, "DB_LOCKED");
    assert.equal(translateSqliteError(withCode("SQLITE_CORRUPT", "x"), p)?.code, "DB_CORRUPT");
    assert.equal(translateSqliteError(withCode("SQLITE_NOTADB", "x"), p)?.code, "DB_CORRUPT");
    assert.equal(translateSqliteError(new Error("database disk image is malformed"), p)?.code, "DB_CORRUPT");
    assert.equal(translateSqliteError(new Error("file is not a database"), p)?.code, "DB_CORRUPT");
    assert.equal(translateSqliteError(withCode("SQLITE_CANTOPEN", "x"), p)?.code, "DB_UNAVAILABLE");
    assert.equal(translateSqliteError(withCode("SQLITE_FULL", "x"), p)?.code, "DB_UNAVAILABLE");
    assert.equal(translateSqliteError(withCode("EACCES", "x"), p)?.code, "DB_UNAVAILABLE");
    assert.equal(translateSqliteError(withCode("SQLITE_CONSTRAINT_UNIQUE", "x"), p), undefined);
    assert.equal(translateSqliteError(new TypeError("bug"), p), undefined);
    const own = new AgentlabError("CONFLICT", "x");
    assert.equal(translateSqliteError(own, p), own);
    const full = translateSqliteError(withCode("SQLITE_FULL", "x"), p);
    assert.match(full?.hint ?? "", /df -h \/var\/lib\/agentlab/);
  });
});
