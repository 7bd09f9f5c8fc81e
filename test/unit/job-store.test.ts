import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import Database from "better-sqlite3";
import { BootstrapTokens, hashBootstrapToken } from "../../src/daemon/guest/tokens.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore } from "../../src/daemon/store/db.js";
import type { Job } from "../../src/daemon/store/jobs.js";
import { MIGRATIONS, migrate } from "../../src/daemon/store/migrations.js";
import { toDbTime } from "../../src/daemon/store/time.js";
import { catchAgentlab } from "../helpers/errors.js";
import { insertJob, JOB_ID, type JobRig, jobRig, START } from "../helpers/job-rig.js";

let rig: JobRig;
beforeEach(() => {
  rig = jobRig();
});
afterEach(() => rig.close());

const ids = (jobs: Job[]) => jobs.map((j) => j.id);
const HASH = "ab".repeat(32);

/** Jobs <prefix>1..<prefix>n, one second apart, all QUEUED without a sandbox. */
function queue(n: number, prefix = "job_"): void {
  for (let i = 1; i <= n; i++) {
    insertJob(rig.store, null, { id: `${prefix}${i}` });
    rig.clock.t += 1000;
  }
}

describe("job store: listing", () => {
  it("lists newest first, at most `limit` (default 100), optionally one status", () => {
    queue(4);
    rig.store.jobs.markRunning("job_2");
    rig.store.jobs.end("job_3", "FAILED", "no sandbox");
    assert.deepEqual(ids(rig.store.jobs.list()), ["job_4", "job_3", "job_2", "job_1"]);
    assert.deepEqual(ids(rig.store.jobs.list({ limit: 2 })), ["job_4", "job_3"]);
    assert.deepEqual(ids(rig.store.jobs.list({ status: "QUEUED" })), ["job_4", "job_1"]);
    assert.deepEqual(ids(rig.store.jobs.list({ status: "QUEUED", limit: 1 })), ["job_4"]);
    assert.deepEqual(ids(rig.store.jobs.list({ status: "RUNNING" })), ["job_2"]);
    assert.deepEqual(ids(rig.store.jobs.list({ status: "COMPLETED" })), []);
    queue(101, "job_more_");
    const all = rig.store.jobs.list();
    assert.equal(all.length, 100);
    assert.equal(all[0]!.id, "job_more_101");
    assert.equal(rig.store.jobs.list({ limit: 500 }).length, 105);
  });

  it("breaks a tie in created_at by id, newest (largest) first", () => {
    insertJob(rig.store, null, { id: "job_a" });
    insertJob(rig.store, null, { id: "job_c" });
    insertJob(rig.store, null, { id: "job_b" });
    assert.deepEqual(ids(rig.store.jobs.list()), ["job_c", "job_b", "job_a"]);
    assert.deepEqual(ids(rig.store.jobs.listByStatus("QUEUED")), ["job_a", "job_b", "job_c"]);
  });

  it("listByStatus lists one status oldest first", () => {
    queue(3);
    rig.store.jobs.markRunning("job_2");
    assert.deepEqual(ids(rig.store.jobs.listByStatus("QUEUED")), ["job_1", "job_3"]);
    assert.deepEqual(ids(rig.store.jobs.listByStatus("RUNNING")), ["job_2"]);
    assert.deepEqual(rig.store.jobs.listByStatus("TIMEOUT"), []);
  });

  it("latestForSandbox is the newest job bound to the VMID, whatever its status", () => {
    assert.equal(rig.store.jobs.latestForSandbox(101), undefined);
    insertJob(rig.store, 101, { id: "job_old", status: "COMPLETED" });
    rig.clock.t += 1000;
    insertJob(rig.store, 101, { id: "job_new", status: "FAILED" });
    rig.clock.t += 1000;
    insertJob(rig.store, 102, { id: "job_other" });
    assert.equal(rig.store.jobs.latestForSandbox(101)?.id, "job_new");
    assert.equal(rig.store.jobs.latestForSandbox(102)?.id, "job_other");
    assert.equal(rig.store.jobs.latestForSandbox(103), undefined);
  });
});

describe("job store: changes", () => {
  it("bindSandbox and setReportTokenHash set the column and updated_at; an unknown id is JOB_NOT_FOUND", () => {
    const job = insertJob(rig.store, null);
    rig.store.sandboxes.insert({ vmid: 101, name: "s", profile: "p", state: "REQUESTED" });
    rig.clock.t += 5000;
    const bound = rig.store.jobs.bindSandbox(JOB_ID, 101);
    assert.equal(bound.sandbox_vmid, 101);
    assert.equal(bound.updated_at.getTime(), START + 5000);
    assert.equal(bound.created_at.getTime(), job.created_at.getTime());
    assert.equal(rig.store.jobs.latestForSandbox(101)?.id, JOB_ID);
    assert.equal(rig.store.jobs.setReportTokenHash(JOB_ID, HASH).report_token_hash, HASH);
    for (const call of [
      () => rig.store.jobs.bindSandbox("job_nope", 101),
      () => rig.store.jobs.setReportTokenHash("job_nope", HASH),
    ]) {
      const err = catchAgentlab(call);
      assert.equal(err.code, "JOB_NOT_FOUND");
      assert.equal(err.message, "job not found");
      assert.deepEqual(err.details, { job_id: "job_nope" });
    }
  });

  it("bindSandbox to a sandbox that does not exist is NOT_FOUND and changes nothing", () => {
    insertJob(rig.store, null);
    const err = catchAgentlab(() => rig.store.jobs.bindSandbox(JOB_ID, 999));
    assert.equal(err.code, "NOT_FOUND");
    assert.equal(err.message, "sandbox 999 does not exist");
    assert.equal(rig.store.jobs.get(JOB_ID)?.sandbox_vmid, null);
  });

  it("keeps only a SHA-256 hex as report_token_hash", () => {
    insertJob(rig.store, null);
    for (const bad of ["a-token", "AB".repeat(32), "ab".repeat(31)]) {
      assert.throws(() => rig.store.jobs.setReportTokenHash(JOB_ID, bad), /CHECK constraint/, bad);
    }
    assert.equal(rig.store.jobs.get(JOB_ID)?.report_token_hash, null);
  });

  it("markRunning moves only a QUEUED job", () => {
    queue(1);
    rig.clock.t += 1000;
    const running = rig.store.jobs.markRunning("job_1");
    assert.equal(running?.status, "RUNNING");
    assert.equal(running?.updated_at.getTime(), rig.clock.t);
    const before = rig.store.jobs.get("job_1");
    rig.clock.t += 1000;
    assert.equal(rig.store.jobs.markRunning("job_1"), undefined);
    assert.deepEqual(rig.store.jobs.get("job_1"), before, "a second markRunning changes nothing");
    rig.store.jobs.end("job_1", "TIMEOUT", "ttl");
    assert.equal(rig.store.jobs.markRunning("job_1"), undefined);
    assert.equal(rig.store.jobs.get("job_1")?.status, "TIMEOUT");
    assert.equal(rig.store.jobs.markRunning("job_nope"), undefined);
  });

  it("recordReport writes status and result while active, and never touches an ended job", () => {
    queue(1);
    const running = rig.store.jobs.recordReport("job_1", "RUNNING", '{"status":"RUNNING"}');
    assert.equal(running?.status, "RUNNING");
    assert.equal(running?.result_json, '{"status":"RUNNING"}');
    const done = rig.store.jobs.recordReport("job_1", "COMPLETED", '{"status":"COMPLETED"}');
    assert.equal(done?.status, "COMPLETED");
    rig.clock.t += 1000;
    for (const status of ["FAILED", "RUNNING", "QUEUED"] as const) {
      assert.equal(rig.store.jobs.recordReport("job_1", status, '{"late":true}'), undefined);
    }
    assert.deepEqual(rig.store.jobs.get("job_1"), done);
    assert.equal(rig.store.jobs.recordReport("job_nope", "RUNNING", "{}"), undefined);
  });

  it("end fails or times out an active job with its reason, and never an ended one", () => {
    queue(2);
    const failed = rig.store.jobs.end("job_1", "FAILED", "could not provision");
    assert.equal(failed?.status, "FAILED");
    assert.equal(failed?.failure_reason, "could not provision");
    rig.store.jobs.markRunning("job_2");
    assert.equal(rig.store.jobs.end("job_2", "TIMEOUT", "ttl")?.status, "TIMEOUT");
    rig.clock.t += 1000;
    assert.equal(rig.store.jobs.end("job_1", "TIMEOUT", "again"), undefined);
    assert.deepEqual(rig.store.jobs.get("job_1"), failed);
    // The runner's end and the daemon's end race on the same compare-and-set: the first one wins.
    insertJob(rig.store, null, { id: "job_3" });
    rig.store.jobs.recordReport("job_3", "COMPLETED", '{"status":"COMPLETED"}');
    assert.equal(rig.store.jobs.end("job_3", "FAILED", "sandbox destroyed"), undefined);
    assert.equal(rig.store.jobs.get("job_3")?.status, "COMPLETED");
    assert.equal(rig.store.jobs.get("job_3")?.failure_reason, null);
    assert.equal(rig.store.jobs.end("job_nope", "FAILED", "x"), undefined);
  });
});

describe("migration 3 (add_job_runner_tokens)", () => {
  const T = toDbTime(Date.parse("2026-01-10T08:00:00.000Z"));

  it("upgrades a version 2 database file, keeping its rows and adding the columns with defaults", () => {
    const file = path.join(rig.dir, "v2.db");
    const v2 = new Database(file);
    v2.pragma("foreign_keys = ON");
    assert.deepEqual(migrate(v2, { path: file, migrations: MIGRATIONS.slice(0, 2) }).version, 2);
    v2.prepare(
      "INSERT INTO sandboxes (vmid, name, profile, state, created_at, updated_at) VALUES (150, 's', 'p', 'RUNNING', ?, ?)",
    ).run(T, T);
    v2.prepare(
      "INSERT INTO jobs (id, repo_url, ref, profile, status, task, sandbox_vmid, created_at, updated_at) " +
        "VALUES ('job_legacy', 'https://x/r.git', 'main', 'p', 'RUNNING', 'old task', 150, ?, ?)",
    ).run(T, T);
    const tokenHash = hashBootstrapToken("0123456789abcdef0123456789abcdef");
    v2.prepare(
      "INSERT INTO bootstrap_tokens (token_hash, vmid, expires_at, consumed_at, created_at) VALUES (?, 150, ?, NULL, ?)",
    ).run(tokenHash, toDbTime(Date.parse("2026-01-10T08:10:00.000Z")), T);
    v2.close();

    const store = openStore(file, { now: () => new Date("2026-01-10T08:01:00.000Z") });
    try {
      // Later migrations (4: api_tokens) run too; this test is about 3.
      assert.ok(store.schemaVersion() >= 3);
      const applied = store.db
        .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
        .all() as Array<{ version: number; name: string }>;
      assert.deepEqual(
        applied.find((a) => a.version === 3),
        { version: 3, name: "add_job_runner_tokens" },
      );
      const job = store.jobs.get("job_legacy");
      assert.equal(job?.status, "RUNNING");
      assert.equal(job?.task, "old task");
      assert.equal(job?.sandbox_vmid, 150);
      assert.equal(job?.report_token_hash, null);
      const token = createBootstrapTokenRepo(store).get(tokenHash);
      assert.equal(token?.vmid, 150);
      assert.equal(token?.purpose, "ready");
      assert.equal(
        store.db.prepare("SELECT purpose FROM bootstrap_tokens").pluck().get(),
        "ready",
        "the column itself holds the default, not only the mapping",
      );
      // The old ready token still works as one after the upgrade.
      const tokens = new BootstrapTokens(createBootstrapTokenRepo(store), {
        now: () => new Date("2026-01-10T08:01:00.000Z"),
      });
      assert.equal(tokens.consume(150, "0123456789abcdef0123456789abcdef", "job"), false);
      assert.equal(tokens.consume(150, "0123456789abcdef0123456789abcdef"), true);
      // The new columns refuse what they must.
      const insertToken = store.db.prepare(
        "INSERT INTO bootstrap_tokens (token_hash, vmid, purpose, expires_at, created_at) VALUES (?, 1, ?, ?, ?)",
      );
      assert.throws(() => insertToken.run("cd".repeat(32), "other", T, T), /CHECK constraint/);
      insertToken.run("cd".repeat(32), "job", T, T);
      assert.throws(() => store.jobs.setReportTokenHash("job_legacy", "plain-token"), /CHECK constraint/);
    } finally {
      store.close();
    }
  });

  it("a fresh database reaches version 3 directly", () => {
    assert.ok(rig.store.schemaVersion() >= 3);
    const columns = (table: string) =>
      (rig.store.db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).map(
        (c) => c.name,
      );
    assert.ok(columns("bootstrap_tokens").includes("purpose"));
    assert.ok(columns("jobs").includes("report_token_hash"));
    assert.ok(fs.existsSync(rig.file));
  });
});

describe("bootstrap tokens: ready and job purposes", () => {
  const tokens = () =>
    new BootstrapTokens(createBootstrapTokenRepo(rig.store), { now: () => new Date(rig.clock.t) });

  it("issuing one purpose does not revoke the other, either way round", () => {
    const t = tokens();
    const ready = t.issue(101).token;
    const job = t.issue(101, "job").token;
    const ready2 = t.issue(102).token;
    const job2 = t.issue(102, "job").token;
    // Re-issue the ready token of 102 after its job token: the job token survives.
    const ready2b = t.issue(102).token;
    assert.equal(t.consume(101, job, "job"), true);
    assert.equal(t.consume(101, ready), true);
    assert.equal(t.consume(102, ready2), false, "replaced by the newer ready token");
    assert.equal(t.consume(102, job2, "job"), true);
    assert.equal(t.consume(102, ready2b), true);
    const rows = createBootstrapTokenRepo(rig.store);
    assert.equal(rows.get(hashBootstrapToken(job))?.purpose, "job");
    assert.equal(rows.get(hashBootstrapToken(ready))?.purpose, "ready");
  });

  it("a token is good for its own purpose only and is not used up by the other", () => {
    const t = tokens();
    const ready = t.issue(101).token;
    const job = t.issue(101, "job").token;
    assert.equal(t.consume(101, ready, "job"), false);
    assert.equal(t.consume(101, job, "ready"), false);
    assert.equal(t.consume(101, job), false, "the default purpose is ready");
    assert.equal(t.consume(101, ready), true);
    assert.equal(t.consume(101, job, "job"), true);
  });

  it("revoke(vmid) drops the unused ready token and leaves the job token usable, and vice versa", () => {
    const t = tokens();
    const ready = t.issue(101).token;
    const job = t.issue(101, "job").token;
    t.revoke(101);
    assert.equal(t.consume(101, ready), false);
    assert.equal(t.consume(101, job, "job"), true);

    const ready2 = t.issue(102).token;
    const job2 = t.issue(102, "job").token;
    t.revoke(102, "job");
    assert.equal(t.consume(102, job2, "job"), false);
    assert.equal(t.consume(102, ready2), true);
  });

  it("through guest readiness: cancel() after the phone-home race keeps the runner's job token", () => {
    const job = rig.readiness.issueJobToken(101);
    const ready = rig.readiness.issue(101).token;
    rig.readiness.cancel(101);
    assert.equal(rig.readiness.report(101, ready, "10.77.0.5"), false);
    assert.equal(rig.readiness.consumeJobToken(101, job), true);
    assert.equal(rig.readiness.consumeJobToken(101, job), false, "single use");

    const job2 = rig.readiness.issueJobToken(102);
    const ready2 = rig.readiness.issue(102).token;
    rig.readiness.revokeJobToken(102);
    assert.equal(rig.readiness.consumeJobToken(102, job2), false);
    assert.equal(rig.readiness.report(102, ready2, "10.77.0.6"), true);
  });

  it("a job token expires after 10 minutes like a ready token", () => {
    const job = rig.readiness.issueJobToken(101);
    rig.clock.t += 10 * 60_000;
    assert.equal(rig.readiness.consumeJobToken(101, job), false);
  });
});
