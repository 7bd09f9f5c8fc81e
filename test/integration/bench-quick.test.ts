import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { BENCHMARKS } from "../../bench/benchmarks.js";
import type { ResultsFile } from "../../bench/report.js";
import { runProcess } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";

/**
 * Keeps bench/ from rotting: `npm run bench -- --tiny` runs every benchmark at its smallest size against
 * the simulator and writes a results file in which each benchmark has figures, every one a finite number
 * with a unit, and every goal a verdict. Durations are the bench's business: nothing here asserts one.
 */

const dir = mkdtempSync(join(tmpdir(), "agentlab-bench-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const runBench = (args: string[]) =>
  runProcess(process.execPath, [join(REPO_ROOT, "dist", "bench", "run.js"), ...args]);

test("npm run bench -- --tiny runs every benchmark and writes finite figures", {
  timeout: 30 * 60_000,
}, async () => {
  const out = join(dir, "results.json");
  const run = await runBench(["--tiny", "--out", out]);
  assert.equal(run.code, 0, `bench failed:\n${run.stdout}\n${run.stderr}`);
  const results = JSON.parse(readFileSync(out, "utf8")) as ResultsFile;
  assert.equal(results.scale, "tiny");
  assert.ok(
    results.machine.cores >= 1 && /^v\d+/.test(results.machine.node),
    JSON.stringify(results.machine),
  );
  assert.match(results.machine.commit, /^[0-9a-f]{12}$/);
  assert.deepEqual(
    results.benchmarks.map((b) => b.name),
    BENCHMARKS.map((b) => b.name),
  );
  for (const bench of results.benchmarks) {
    assert.equal(bench.error, undefined, `${bench.name} failed: ${bench.error}`);
    assert.ok(bench.figures.length > 0, `${bench.name} has no figures`);
    for (const f of bench.figures) {
      assert.ok(Number.isFinite(f.value), `${bench.name}: ${f.name} is ${f.value}`);
      assert.equal(typeof f.unit, "string", `${bench.name}: ${f.name} has no unit`);
      if (f.goal) assert.equal(typeof f.met, "boolean", `${bench.name}: ${f.name} has a goal but no verdict`);
    }
    assert.match(run.stdout, new RegExp(`^${bench.name} `, "m"), `the table names ${bench.name}`);
  }
  // The goals the issue sets are all measured.
  const goals = results.benchmarks.flatMap((b) => b.figures.filter((f) => f.goal).map((f) => f.goal!.text));
  for (const goal of [
    "<= 8 Proxmox calls per create at realistic latency",
    "daemon overhead p50 < 20 ms",
    "agentlab --version <= 1.3x node -e 0",
    "agentlab status <= 1.6x node -e 0",
    "with 200 clients, DB-only reads p99 < 250 ms",
    "a concurrent sandbox new within 1.5x its unloaded time",
  ])
    assert.ok(goals.includes(goal), `no figure measures "${goal}"`);
});

test("npm run bench refuses an unknown benchmark and changes nothing", async () => {
  const out = join(dir, "refused.json");
  const run = await runBench(["--only", "nosuch", "--out", out]);
  assert.equal(run.code, 2);
  assert.match(run.stderr, /^error: unknown benchmark nosuch$/m);
  assert.throws(() => readFileSync(out), /ENOENT/);
});
