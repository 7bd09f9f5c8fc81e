import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CHECKPOINT_EVERY_MS } from "../../src/daemon/store/db.js";
import { startDaemon } from "../helpers/daemon.js";
import { type SimHost, startSimHost } from "../helpers/simhost.js";

/**
 * The maintenance steps of the troubleshooting guide, run as written there (paths swapped for the
 * test host's) while the daemon runs.
 */
describe("maintenance steps from the troubleshooting guide", () => {
  let h: SimHost;
  const sh = (command: string) => spawnSync("sh", ["-c", command], { encoding: "utf8" });
  before(async () => {
    h = await startSimHost("shell");
    const created = await h.cli(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(created.code, 0, created.stderr);
  });
  after(async () => {
    // The restore test replaces h.daemon; h.stop() only knows the first one.
    await h.daemon.stop();
    await h.stop();
  });

  test("backup: a plain cp of the database while the daemon runs holds every committed sandbox", async () => {
    // The daemon copies its write-ahead log into the file a quarter second after a commit at most
    // (CHECKPOINT_EVERY_MS): a cp made after that holds the sandbox. Without checkpoints a database this
    // small never reaches its file (SQLite's own wait for 1000 pages) and this never passes.
    const backup = `${h.host.root}/agentlab-backup.db`;
    let rows = { status: 1, stdout: "", stderr: "" } as ReturnType<typeof sh>;
    for (let tries = 0; tries < 200; tries++) {
      assert.equal(sh(`cp ${h.host.dbPath} ${backup}`).status, 0);
      rows = sh(`sqlite3 ${backup} "SELECT vmid, state FROM sandboxes;"`);
      if (rows.status === 0 && rows.stdout.trim() === "1000|RUNNING") break;
      await sleep(CHECKPOINT_EVERY_MS);
    }
    assert.equal(rows.status, 0, rows.stderr);
    assert.equal(rows.stdout.trim(), "1000|RUNNING");
    assert.equal(sh(`sqlite3 ${backup} "PRAGMA integrity_check;"`).stdout.trim(), "ok");
  });

  test('monthly optimisation: sqlite3 agentlab.db "VACUUM;" works beside the running daemon', async () => {
    const vacuum = sh(`sqlite3 ${h.host.dbPath} "VACUUM;"`);
    assert.equal(vacuum.status, 0, vacuum.stderr);
    const list = await h.json<{ sandboxes: Array<{ vmid: number }> }>(["ls"]);
    assert.deepEqual(
      list.body.sandboxes.map((s) => s.vmid),
      [1000],
    );
    const created = await h.cli(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(created.code, 0, "the daemon still writes after the VACUUM");
  });

  test("agentlab maintenance run --dry-run, then run: each step reported, exit 0, recorded", async () => {
    const dry = await h.cli(["maintenance", "run", "--dry-run"]);
    assert.equal(dry.code, 0, dry.stdout + dry.stderr);
    for (const step of ["prune", "tokens", "snippets", "artifacts", "events", "vacuum"]) {
      assert.match(dry.stdout, new RegExp(`^${step}: `, "m"));
    }
    assert.match(dry.stdout, /^dry run: nothing was changed; would free /m);
    const run = await h.cli(["maintenance", "run"]);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    assert.match(run.stdout, /^freed \d/m);
    const status = await h.cli(["status"]);
    assert.match(status.stdout, /^last maintenance: +\S+ \(ok, freed /m);
  });

  test("db check: integrity ok on the running daemon's database", async () => {
    const check = await h.cli(["db", "check"]);
    assert.equal(check.code, 0, check.stderr);
    assert.equal(check.stdout, `database ${h.host.dbPath}: integrity ok\n`);
  });

  test("db backup while the daemon writes: consistent 0600 copies, --keep rotates; a restore opens", async () => {
    const dir = join(h.host.root, "backups");
    mkdirSync(dir);
    // Three sandboxes being created (rows and events written) while three backups are taken.
    const writes = [1, 2, 3].map(() => h.cli(["new", "--profile", "yolo-ephemeral"]));
    const backups: string[] = [];
    for (let i = 1; i <= 3; i++) {
      const out = join(dir, `agentlab-2026120${i}-000000.db`);
      const b = await h.cli(["db", "backup", "--out", out, "--keep", "2"]);
      assert.equal(b.code, 0, b.stderr);
      assert.match(b.stdout, new RegExp(`^database backed up to ${out} \\(.*integrity ok\\)$`, "m"));
      backups.push(out);
    }
    for (const w of await Promise.all(writes)) assert.equal(w.code, 0, w.stderr);
    assert.deepEqual(
      readdirSync(dir).sort(),
      backups.slice(1).map((p) => p.slice(dir.length + 1)),
    );
    for (const p of backups.slice(1)) {
      assert.equal(statSync(p).mode & 0o777, 0o600);
      assert.equal(sh(`sqlite3 ${p} "PRAGMA integrity_check;"`).stdout.trim(), "ok");
    }
    // One more after the writes, into the directory (default name); then restore it as the guide would.
    const last = await h.json<{ path: string; removed: string[] }>(["db", "backup", "--out", `${dir}/`]);
    assert.equal(last.code, 0);
    assert.match(last.body.path, /\/agentlab-\d{8}-\d{6}\.db$/);
    const before = await h.json<{ sandboxes: Array<{ vmid: number; state: string }> }>(["ls"]);
    await h.daemon.stop();
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${h.host.dbPath}${suffix}`, { force: true });
    copyFileSync(last.body.path, h.host.dbPath);
    h.daemon = await startDaemon(h.host);
    const after = await h.json<{ sandboxes: Array<{ vmid: number; state: string }> }>(["ls"]);
    assert.equal(after.code, 0, "the daemon opens the restored backup");
    assert.deepEqual(
      after.body.sandboxes.map((s) => s.vmid),
      before.body.sandboxes.map((s) => s.vmid),
    );
    assert.ok(after.body.sandboxes.length >= 4, "the first sandbox and the three made during the backups");
  });

  test("weekly cleanup: agentlab sandbox prune exits 0 and says how many", async () => {
    const pruned = await h.cli(["sandbox", "prune"]);
    assert.equal(pruned.code, 0, pruned.stderr);
    assert.match(pruned.stdout, /^pruned 0 sandboxes$/m);
  });

  test("disk space: du -sh of the database", () => {
    const du = sh(`du -sh ${h.host.dbPath}`);
    assert.equal(du.status, 0);
    assert.match(du.stdout, /^\d+(\.\d+)?[KM]\s/);
  });
});
