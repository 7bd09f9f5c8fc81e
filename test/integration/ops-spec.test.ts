import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
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
    await h.stop();
  });

  test("backup: a plain cp of the database while the daemon runs holds every committed sandbox", () => {
    const backup = `${h.host.root}/agentlab-backup.db`;
    assert.equal(sh(`cp ${h.host.dbPath} ${backup}`).status, 0);
    const rows = sh(`sqlite3 ${backup} "SELECT vmid, state FROM sandboxes;"`);
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
