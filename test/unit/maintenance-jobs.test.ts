import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { AgentlabError } from "../../src/protocol/errors.js";

describe("store: jobs of a sandbox taken out of service, expired leases, leftover snippets", () => {
  let dir: string;
  let store: Store;
  let t = Date.parse("2026-03-01T12:00:00.000Z");
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-maint-store-"));
    store = openStore(join(dir, "agentlab.db"), { now: () => new Date(t) });
  });
  after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const job = (id: string, vmid: number | null, status: "QUEUED" | "RUNNING" | "COMPLETED" | "FAILED") =>
    store.jobs.insert({
      id,
      repo_url: "https://example.com/r.git",
      ref: "main",
      profile: "p",
      status,
      sandbox_vmid: vmid,
    });

  test("finalizeForSandbox ends the QUEUED and RUNNING jobs of that VMID only, with the reason", () => {
    for (const vmid of [1000, 1001])
      store.sandboxes.insert({ vmid, name: `s${vmid}`, profile: "p", state: "RUNNING" });
    job("job_a", 1000, "RUNNING");
    job("job_b", 1000, "QUEUED");
    job("job_c", 1000, "COMPLETED");
    job("job_d", 1001, "RUNNING");
    job("job_e", null, "QUEUED");
    t += 5000;
    const ended = store.jobs.finalizeForSandbox(1000, "TIMEOUT", "sandbox lease expired");
    assert.deepEqual(ended.map((j) => j.id).sort(), ["job_a", "job_b"]);
    for (const id of ["job_a", "job_b"]) {
      const j = store.jobs.get(id)!;
      assert.equal(j.status, "TIMEOUT");
      assert.equal(j.failure_reason, "sandbox lease expired");
      assert.equal(j.updated_at.getTime(), t);
      assert.ok(j.created_at.getTime() < t);
    }
    assert.equal(store.jobs.get("job_c")?.status, "COMPLETED", "a finished job keeps its result");
    assert.equal(store.jobs.get("job_c")?.failure_reason, null);
    assert.equal(store.jobs.get("job_d")?.status, "RUNNING", "another sandbox's job is untouched");
    assert.equal(store.jobs.get("job_e")?.status, "QUEUED", "a job bound to no sandbox is untouched");
    assert.deepEqual(
      store.jobs.finalizeForSandbox(1000, "FAILED", "again"),
      [],
      "idempotent: nothing left to end",
    );
    assert.equal(store.jobs.get("job_a")?.status, "TIMEOUT");
    assert.deepEqual(
      store.jobs.listForSandbox(1000).map((j) => j.id),
      ["job_a", "job_b", "job_c"],
    );
  });

  test("a job for an unknown sandbox or a taken id is refused with a code", () => {
    assert.throws(
      () => job("job_x", 4242, "QUEUED"),
      (e: AgentlabError) => e instanceof AgentlabError && e.code === "NOT_FOUND",
    );
    assert.throws(
      () => job("job_a", 1000, "QUEUED"),
      (e: AgentlabError) => e instanceof AgentlabError && e.code === "CONFLICT",
    );
  });

  test("listLeaseExpired: live rows whose lease is at or before now, compared as fixed-width time", () => {
    const base = Date.parse("2026-03-01T13:00:00.000Z");
    const at = (ms: number) => new Date(base + ms);
    store.sandboxes.insert({
      vmid: 2000,
      name: "a",
      profile: "p",
      state: "RUNNING",
      lease_expires_at: at(0),
    });
    // 13:00:00.5 sorts before 13:00:00 as trimmed RFC 3339 text; fixed-width storage keeps it after.
    store.sandboxes.insert({
      vmid: 2001,
      name: "b",
      profile: "p",
      state: "RUNNING",
      lease_expires_at: at(500),
    });
    store.sandboxes.insert({
      vmid: 2002,
      name: "c",
      profile: "p",
      state: "DESTROYED",
      lease_expires_at: at(-1000),
    });
    store.sandboxes.insert({
      vmid: 2003,
      name: "d",
      profile: "p",
      state: "TIMEOUT",
      lease_expires_at: at(-1000),
    });
    store.sandboxes.insert({ vmid: 2004, name: "e", profile: "p", state: "RUNNING", lease_expires_at: null });
    assert.deepEqual(
      store.sandboxes.listLeaseExpired(at(0)).map((s) => s.vmid),
      [2000, 2003],
    );
    assert.deepEqual(
      store.sandboxes.listLeaseExpired(at(500)).map((s) => s.vmid),
      [2000, 2001, 2003],
    );
  });

  test("listWithSnippet: rows in the given states that still name a snippet", () => {
    store.sandboxes.insert({
      vmid: 3000,
      name: "a",
      profile: "p",
      state: "FAILED",
      snippet_path: "/x/a.yaml",
    });
    store.sandboxes.insert({
      vmid: 3001,
      name: "b",
      profile: "p",
      state: "RUNNING",
      snippet_path: "/x/b.yaml",
    });
    store.sandboxes.insert({
      vmid: 3002,
      name: "c",
      profile: "p",
      state: "DESTROYED",
      snippet_path: "/x/c.yaml",
    });
    store.sandboxes.insert({ vmid: 3003, name: "d", profile: "p", state: "DESTROYED" });
    assert.deepEqual(
      store.sandboxes.listWithSnippet(["DESTROYED", "FAILED"]).map((s) => s.vmid),
      [3000, 3002],
    );
  });
});
