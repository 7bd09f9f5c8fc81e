import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { Checkpointer } from "../../src/daemon/store/checkpointer.js";
import { openStore } from "../../src/daemon/store/db.js";

/**
 * The checkpoint thread (src/daemon/store/checkpointer.ts). The main connection here is a plain
 * better-sqlite3 one with SQLite's own checkpoints off, so a row that reaches the main file got there
 * through the checkpointer's thread (or its fallback, which the tests tell apart by its report).
 */

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** Generous: the machine running the tests may be loaded; only behaviour is asserted, never speed. */
const DEADLINE_MS = 20_000;

function walDatabase(): { db: Database.Database; dbPath: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-checkpointer-"));
  tempDirs.push(dir);
  const dbPath = path.join(dir, "agentlab.db");
  const db = new Database(dbPath);
  db.pragma("journal_mode = WAL");
  // Only the checkpointer may copy the WAL into the file: SQLite's automatic checkpoint is off.
  db.pragma("wal_autocheckpoint = 0");
  db.exec("CREATE TABLE t (x TEXT)");
  db.pragma("wal_checkpoint(TRUNCATE)");
  return { db, dbPath };
}

/** What an operator's `cp agentlab.db` holds: the rows of a copy of the main file alone, no -wal. */
function rowsInMainFile(dbPath: string): string[] {
  const copy = `${dbPath}.copy-${process.hrtime.bigint()}`;
  fs.copyFileSync(dbPath, copy);
  let db: Database.Database | undefined;
  try {
    db = new Database(copy, { fileMustExist: true });
    return db.prepare<[], string>("SELECT x FROM t ORDER BY rowid").pluck().all();
  } catch {
    return []; // copied in the middle of a checkpoint's writes: not there yet
  } finally {
    db?.close();
    for (const suffix of ["", "-wal", "-shm"]) fs.rmSync(`${copy}${suffix}`, { force: true });
  }
}

async function waitForRowInMainFile(dbPath: string, row: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!rowsInMainFile(dbPath).includes(row)) {
    assert.ok(Date.now() < deadline, `"${row}" never reached ${dbPath} within ${DEADLINE_MS} ms`);
    await sleep(50);
  }
}

function lostReports(): { errors: Error[]; report: (err: Error) => void } {
  const errors: Error[] = [];
  return { errors, report: (err) => errors.push(err) };
}

describe("checkpointer", () => {
  it("copies a commit into the main file from its own thread", async () => {
    const { db, dbPath } = walDatabase();
    const lost = lostReports();
    const checkpointer = new Checkpointer(db, dbPath, { intervalMs: 50, onWorkerLost: lost.report });
    try {
      db.prepare("INSERT INTO t VALUES ('first')").run();
      assert.deepEqual(rowsInMainFile(dbPath), [], "nothing but the checkpointer copies the WAL");
      await waitForRowInMainFile(dbPath, "first");
      // A later commit too: the thread goes on after its first checkpoint.
      db.prepare("INSERT INTO t VALUES ('second')").run();
      await waitForRowInMainFile(dbPath, "second");
      assert.deepEqual(lost.errors, [], "the thread did it, not the main connection's fallback");
    } finally {
      checkpointer.stop();
      db.close();
    }
    assert.equal(fs.existsSync(`${dbPath}-wal`), false, "stop() let the main connection close last");
    assert.deepEqual(lost.errors, [], "stopping is not losing the thread");
  });

  it("stop() right after start (the thread not yet up) still leaves no -wal", () => {
    const { db, dbPath } = walDatabase();
    const checkpointer = new Checkpointer(db, dbPath);
    db.prepare("INSERT INTO t VALUES ('x')").run();
    checkpointer.stop();
    checkpointer.stop(); // idempotent
    db.close();
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
    assert.deepEqual(rowsInMainFile(dbPath), ["x"]);
  });

  it("stop() while the thread runs waits for its connection to close", async () => {
    const { db, dbPath } = walDatabase();
    const checkpointer = new Checkpointer(db, dbPath, { intervalMs: 20 });
    db.prepare("INSERT INTO t VALUES ('y')").run();
    await waitForRowInMainFile(dbPath, "y");
    db.prepare("INSERT INTO t VALUES ('z')").run();
    checkpointer.stop();
    db.close();
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
    assert.deepEqual(rowsInMainFile(dbPath), ["y", "z"]);
  });

  it("a killed thread is reported once and the main connection takes the checkpoint over", async () => {
    const { db, dbPath } = walDatabase();
    const lost = lostReports();
    const checkpointer = new Checkpointer(db, dbPath, { intervalMs: 50, onWorkerLost: lost.report });
    try {
      await checkpointer.worker.terminate();
      const deadline = Date.now() + DEADLINE_MS;
      while (lost.errors.length === 0) {
        assert.ok(Date.now() < deadline, "the dead thread was never reported");
        await sleep(10);
      }
      db.prepare("INSERT INTO t VALUES ('after the thread died')").run();
      await waitForRowInMainFile(dbPath, "after the thread died");
      assert.equal(lost.errors.length, 1);
    } finally {
      checkpointer.stop();
      db.close();
    }
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
  });

  it("a thread that fails (its database cannot be opened) does not take the process down", async () => {
    const { db, dbPath } = walDatabase();
    const lost = lostReports();
    const missing = path.join(path.dirname(dbPath), "no-such-dir", "agentlab.db");
    const checkpointer = new Checkpointer(db, missing, { intervalMs: 50, onWorkerLost: lost.report });
    try {
      const deadline = Date.now() + DEADLINE_MS;
      while (lost.errors.length === 0) {
        assert.ok(Date.now() < deadline, "the failed thread was never reported");
        await sleep(10);
      }
      assert.match(lost.errors[0]!.message, /unable to open database file|directory does not exist/);
      db.prepare("INSERT INTO t VALUES ('fallback')").run();
      await waitForRowInMainFile(dbPath, "fallback");
      assert.equal(lost.errors.length, 1, "reported once ('error' and 'exit' both come)");
    } finally {
      checkpointer.stop();
      db.close();
    }
  });

  it("a store's commit reaches the main file without the store's connection checkpointing", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-checkpointer-"));
    tempDirs.push(dir);
    const dbPath = path.join(dir, "agentlab.db");
    const lost = lostReports();
    const store = openStore(dbPath, { onCheckpointerLost: lost.report });
    try {
      store.db.exec("CREATE TABLE t (x TEXT)");
      store.db.prepare("INSERT INTO t VALUES ('stored')").run();
      await waitForRowInMainFile(dbPath, "stored");
      assert.deepEqual(lost.errors, []);
    } finally {
      store.close();
    }
    assert.equal(fs.existsSync(`${dbPath}-wal`), false);
  });
});
