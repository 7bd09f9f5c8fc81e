import assert from "node:assert/strict";
import { existsSync, mkdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import type { DaemonContext } from "../../src/daemon/context.js";
import { HousekeepingService } from "../../src/daemon/services/housekeeping.js";
import type { Operation } from "../../src/daemon/services/operation.js";
import { SandboxService } from "../../src/daemon/services/sandboxes.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { createHousekeeping } from "../../src/daemon/store/housekeeping.js";
import { createJobSecretRepo } from "../../src/daemon/store/job-secrets.js";
import type { HousekeepingResult } from "../../src/protocol/maintenance.js";
import { type JobRig, jobRig, START } from "../helpers/job-rig.js";

/**
 * `maintenance run` on a seeded database with a fake clock: 100 days after the seed, what is past its
 * retention goes and what belongs to live entities (or is recent) stays. Real SQLite file, real
 * directories; Proxmox reports no VMs.
 */

const DAY = 24 * 60 * 60 * 1000;
const HEX = (n: number) => n.toString(16).padStart(16, "0");
const job = (n: number) => `job_${HEX(n)}`;

describe("maintenance run on a seeded database, 100 days later", () => {
  let rig: JobRig;
  let ctx: DaemonContext;
  let service: HousekeepingService;
  let artifacts: string;
  let snippets: string;
  const op = { log: pino({ level: "silent" }), signal: new AbortController().signal } as unknown as Operation;
  const file = (dir: string, name: string, bytes: number, mtime?: Date) => {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, name);
    writeFileSync(path, Buffer.alloc(bytes, 1));
    if (mtime) utimesSync(path, mtime, mtime);
    return path;
  };
  const oldTime = new Date(START);

  before(() => {
    rig = jobRig();
    artifacts = join(rig.dir, "artifacts");
    snippets = join(rig.dir, "snippets");
    ctx = {
      ...rig.ctx,
      config: { ...rig.ctx.config, artifact_dir: artifacts, snippets_dir: snippets },
      backend: { listVms: async () => [] } as unknown as DaemonContext["backend"],
      guestReady: undefined,
    } as DaemonContext;
    const { store } = rig;
    // Day 0.
    store.sandboxes.insert({ vmid: 101, name: "gone", profile: "p", state: "DESTROYED" });
    store.sandboxes.update(101, { snippet_path: file(snippets, `agentlab-101-${HEX(1)}.yaml`, 300) });
    store.sandboxes.insert({ vmid: 102, name: "live", profile: "p", state: "RUNNING" });
    store.sandboxes.update(102, { snippet_path: file(snippets, `agentlab-102-${HEX(2)}.yaml`, 300) });
    store.sandboxes.insert({ vmid: 103, name: "never", profile: "p", state: "FAILED", vm_created: false });
    const base = { repo_url: "https://h/r", ref: "main", profile: "p", task: "t" } as const;
    store.jobs.insert({ ...base, id: job(1), status: "COMPLETED", sandbox_vmid: 101 });
    store.jobs.insert({ ...base, id: job(3), status: "RUNNING", sandbox_vmid: 102 });
    const secrets = createJobSecretRepo(store);
    secrets.set(job(1), { username: "u", password: "ended-secret" });
    secrets.set(job(3), { username: "u", password: "running-secret" });
    // About 3 MiB of old events: trimming them leaves enough free pages to be worth compacting.
    const padding = "x".repeat(3000);
    for (let i = 0; i < 1000; i++) {
      store.events.append({ kind: "old.noise", sandbox_vmid: 101, job_id: job(1), msg: padding });
    }
    store.events.append({ kind: "old.live", sandbox_vmid: 102, msg: "day 0, live sandbox" });
    store.events.append({ kind: "old.running-job", job_id: job(3), msg: "day 0, running job" });
    store.events.append({ kind: "old.never", sandbox_vmid: 103, msg: "day 0, never created" });
    // Day 90: a job that ended 10 days before the run.
    rig.clock.t = START + 90 * DAY;
    store.jobs.insert({ ...base, id: job(2), status: "FAILED", sandbox_vmid: null });
    store.events.append({ kind: "recent", msg: "day 90" });
    const tokens = createBootstrapTokenRepo(store);
    tokens.insert({ token_hash: "a".repeat(64), vmid: 101, expires_at: new Date(START + DAY) });
    tokens.insert({ token_hash: "b".repeat(64), vmid: 102, expires_at: new Date(START + 200 * DAY) });
    file(join(artifacts, job(1)), "out.tar.gz", 4096);
    file(join(artifacts, job(2)), "out.tar.gz", 1024);
    // The rows `job artifacts` lists, beside the files.
    for (const [id, vmid] of [
      [job(1), 101],
      [job(2), null],
    ] as const) {
      store.jobArtifacts.put({ job_id: id, vmid, name: "out.tar.gz", size_bytes: 1, sha256: "0".repeat(64) });
    }
    file(join(artifacts, job(3)), "out.tar.gz", 1024);
    // A job the database does not know: by the directory's own age.
    const stray = join(artifacts, job(9));
    file(stray, "x.bin", 2048);
    utimesSync(stray, oldTime, oldTime);
    file(join(artifacts, job(8)), "fresh.bin", 10);
    // A snippet no row names, old enough to be a crash's leftover; and one that may be in flight.
    file(snippets, `agentlab-104-${HEX(4)}.yaml`, 200, oldTime);
    file(snippets, `agentlab-105-${HEX(5)}.yaml`, 200, new Date(START + 100 * DAY - 60_000));
    file(snippets, "not-ours.yaml", 10, oldTime);
    // Day 100: the run.
    rig.clock.t = START + 100 * DAY;
    service = new HousekeepingService(ctx, new SandboxService(ctx));
  });
  after(() => rig.close());

  const byStep = (result: HousekeepingResult) => Object.fromEntries(result.steps.map((s) => [s.step, s]));

  test("--dry-run says what would go and changes nothing", async () => {
    const eventsBefore = rig.store.db.prepare("SELECT count(*) AS n FROM events").get() as { n: number };
    const result = await service.run(true, op);
    assert.equal(result.ok, true, JSON.stringify(result));
    const s = byStep(result);
    assert.deepEqual(s.prune!.items, ["103: FAILED before its VM was created"]);
    assert.equal(s.tokens!.count, 2, "one expired token, one ended job's credentials");
    assert.equal(s.snippets!.count, 2);
    assert.deepEqual(s.artifacts!.items.sort(), [job(1), job(9)]);
    // Sandbox 103 is still FAILED (live) during a dry run, so its old event is not counted yet.
    assert.equal(s.events!.count, 1000, "the old noise of a destroyed sandbox and an ended job");
    // Nothing is deleted yet, so nothing is free yet: the run itself decides after its deletions.
    assert.match(s.vacuum!.summary, /^not needed now: 0 of \d+ bytes free/);
    assert.equal(rig.store.sandboxes.get(103)?.state, "FAILED");
    assert.ok(existsSync(join(artifacts, job(1))));
    const eventsAfter = rig.store.db.prepare("SELECT count(*) AS n FROM events").get() as { n: number };
    assert.equal(eventsAfter.n, eventsBefore.n);
    assert.equal(createHousekeeping(rig.store).lastRun(), undefined, "a dry run is not recorded");
  });

  test("a run removes what is past retention and keeps what belongs to live entities", async () => {
    const sizeBefore = rig.store.sizeBytes();
    const result = await service.run(false, op);
    assert.equal(result.ok, true, JSON.stringify(result));
    const s = byStep(result);
    assert.deepEqual(s.prune!.items, ["103"]);
    assert.equal(rig.store.sandboxes.get(103)?.state, "DESTROYED");
    // Tokens and credentials.
    const tokens = createBootstrapTokenRepo(rig.store);
    assert.equal(tokens.get("a".repeat(64)), undefined);
    assert.ok(tokens.get("b".repeat(64)));
    const secrets = createJobSecretRepo(rig.store);
    assert.equal(secrets.get(job(1)), undefined);
    assert.equal(secrets.get(job(3))?.password, "running-secret");
    // Snippets: the destroyed sandbox's and the old stray go; the live one, the young one, others' stay.
    const names = (p: string) => p.slice(snippets.length + 1);
    assert.deepEqual(s.snippets!.items.map(names).sort(), [
      `agentlab-101-${HEX(1)}.yaml`,
      `agentlab-104-${HEX(4)}.yaml`,
    ]);
    for (const kept of [`agentlab-102-${HEX(2)}.yaml`, `agentlab-105-${HEX(5)}.yaml`, "not-ours.yaml"]) {
      assert.ok(existsSync(join(snippets, kept)), kept);
    }
    assert.equal(rig.store.sandboxes.get(101)?.snippet_path, null);
    // Artifacts: the old ended job's and the old stray directory go; recent, running and fresh stay.
    assert.ok(!existsSync(join(artifacts, job(1))));
    assert.ok(!existsSync(join(artifacts, job(9))));
    for (const kept of [job(2), job(3), job(8)]) assert.ok(existsSync(join(artifacts, kept)), kept);
    assert.deepEqual(rig.store.jobArtifacts.list(job(1)), [], "job artifacts no longer lists deleted files");
    assert.equal(rig.store.jobArtifacts.list(job(2)).length, 1);
    assert.equal(s.artifacts!.freed_bytes, 4096 + 2048);
    // Events: old ones of the live sandbox and the running job stay, and the recent one.
    const kinds = (
      rig.store.db.prepare("SELECT DISTINCT kind FROM events").all() as Array<{ kind: string }>
    ).map((r) => r.kind);
    for (const kept of ["old.live", "old.running-job", "recent"]) assert.ok(kinds.includes(kept), kept);
    for (const gone of ["old.noise", "old.never"]) assert.ok(!kinds.includes(gone), gone);
    // The space came back to the file system.
    assert.equal(s.vacuum!.count, 1);
    assert.ok(s.vacuum!.freed_bytes > 2 * 1024 * 1024, `freed ${s.vacuum!.freed_bytes}`);
    assert.ok(rig.store.sizeBytes() < sizeBefore - 2 * 1024 * 1024);
    assert.equal(statSync(rig.store.path).size, rig.store.sizeBytes() - walSize(rig.store.path));
    assert.equal(
      result.freed_bytes,
      result.steps.reduce((n, x) => n + x.freed_bytes, 0),
    );
    const last = createHousekeeping(rig.store).lastRun();
    assert.equal(last?.at.getTime(), START + 100 * DAY);
  });

  test("a second run finds nothing to do; compacting is not worth it", async () => {
    const s = byStep(await service.run(false, op));
    for (const name of ["prune", "snippets", "artifacts", "events"]) assert.equal(s[name]!.count, 0, name);
    assert.match(s.vacuum!.summary, /^not needed/);
  });

  test("what could not be done is named and makes the run not ok", async () => {
    const broken = new HousekeepingService(
      { ...ctx, backend: { listVms: async () => Promise.reject(new Error("proxmox is down")) } } as never,
      new SandboxService({
        ...ctx,
        backend: { listVms: async () => Promise.reject(new Error("proxmox is down")) },
      } as never),
    );
    const result = await broken.run(false, op);
    assert.equal(result.ok, false);
    assert.deepEqual(byStep(result).prune!.errors, ["proxmox is down"]);
    assert.equal(byStep(result).events!.errors.length, 0, "the other steps still ran");
  });
});

function walSize(path: string): number {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
}
