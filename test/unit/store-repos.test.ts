import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { SANDBOX_STATES, type SandboxState } from "../../src/daemon/store/sandboxes.js";
import { catchAgentlab } from "../helpers/errors.js";

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A store on a real file, with a clock that advances one second per read. */
function freshStore(start = "2026-02-14T13:00:00.000Z"): Store {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-store-"));
  tempDirs.push(dir);
  let t = 0;
  const store = openStore(path.join(dir, "agentlab.db"), {
    now: () => {
      const d = new Date(t);
      t += 1000;
      return d;
    },
  });
  // Started after opening so that the migration's applied_at does not shift the times tests expect.
  t = Date.parse(start);
  return store;
}

function sqliteCodeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  assert.fail("expected an error");
}

const sandbox = (vmid: number, state: SandboxState = "RUNNING", extra: Record<string, unknown> = {}) => ({
  vmid,
  name: `sb-${vmid}`,
  profile: "default",
  state,
  ...extra,
});

describe("store: sandboxes", () => {
  it("inserts and reads back typed rows", () => {
    const store = freshStore();
    try {
      const lease = new Date("2026-02-14T14:00:00.000Z");
      const inserted = store.sandboxes.insert({
        vmid: 1001,
        name: "alpha",
        profile: "yolo",
        state: "REQUESTED",
        node: "pve1",
        ip: "10.77.0.10",
        keepalive: true,
        lease_expires_at: lease,
        tags: ["team-a", "nightly"],
        snippet_path: "/var/lib/vz/snippets/agentlab-1001.yaml",
      });
      assert.deepEqual(inserted, {
        vmid: 1001,
        name: "alpha",
        profile: "yolo",
        state: "REQUESTED",
        node: "pve1",
        ip: "10.77.0.10",
        workspace_id: null,
        keepalive: true,
        lease_expires_at: lease,
        tags: ["team-a", "nightly"],
        failure_reason: null,
        vm_created: false,
        snippet_path: "/var/lib/vz/snippets/agentlab-1001.yaml",
        ssh_host_keys: null,
        created_at: new Date("2026-02-14T13:00:00.000Z"),
        updated_at: new Date("2026-02-14T13:00:00.000Z"),
        last_used_at: null,
        pool: null,
      });
      assert.deepEqual(store.sandboxes.get(1001), inserted);
      assert.equal(store.sandboxes.get(9999), undefined);
      const raw = store.db
        .prepare("SELECT created_at, lease_expires_at, tags FROM sandboxes WHERE vmid = 1001")
        .get();
      assert.deepEqual(raw, {
        created_at: "2026-02-14T13:00:00.000000000Z",
        lease_expires_at: "2026-02-14T14:00:00.000000000Z",
        tags: "team-a,nightly",
      });
    } finally {
      store.close();
    }
  });

  it("warm pool members: listed apart, claimed by clearing pool with the new name, pool_claim intents", () => {
    const store = freshStore();
    try {
      store.sandboxes.insert({ vmid: 1001, name: "mine", profile: "yolo", state: "RUNNING" });
      store.sandboxes.insert({
        vmid: 1002,
        name: "sandbox-1002",
        profile: "yolo",
        state: "RUNNING",
        pool: "yolo",
      });
      store.sandboxes.insert({
        vmid: 1003,
        name: "sandbox-1003",
        profile: "dev",
        state: "BOOTING",
        pool: "dev",
      });
      const vmids = (rows: { vmid: number }[]) => rows.map((r) => r.vmid);
      assert.deepEqual(vmids(store.sandboxes.list({ excludePool: true })), [1001]);
      assert.deepEqual(vmids(store.sandboxes.list({ poolOf: "yolo" })), [1002]);
      assert.deepEqual(vmids(store.sandboxes.list()), [1001, 1002, 1003], "internal callers see members");
      const claimed = store.sandboxes.update(1002, { pool: null, name: "claimed" }, "RUNNING");
      assert.equal(claimed?.pool, null);
      assert.equal(claimed?.name, "claimed");
      assert.deepEqual(vmids(store.sandboxes.list({ excludePool: true })), [1001, 1002]);
      store.sandboxOps.begin(1002, "pool_claim", { name: "claimed", tags: [] });
      assert.equal(store.sandboxOps.get(1002)?.kind, "pool_claim");
      assert.throws(() =>
        store.sandboxes.insert({ vmid: 1004, name: "x", profile: "p", state: "REQUESTED", pool: "" }),
      );
    } finally {
      store.close();
    }
  });

  it("stores the guest's SSH host keys as a list; an empty list or null clears them", () => {
    const store = freshStore();
    try {
      store.sandboxes.insert(sandbox(1, "READY"));
      const keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECV", "ecdsa-sha2-nistp256 AAAAE2Vj"];
      assert.deepEqual(store.sandboxes.update(1, { ssh_host_keys: keys })?.ssh_host_keys, keys);
      assert.deepEqual(store.sandboxes.get(1)?.ssh_host_keys, keys);
      assert.equal(store.sandboxes.update(1, { ssh_host_keys: [] })?.ssh_host_keys, null);
      store.sandboxes.update(1, { ssh_host_keys: keys });
      assert.equal(store.sandboxes.update(1, { ssh_host_keys: null })?.ssh_host_keys, null);
      assert.equal(
        store.db.prepare("SELECT ssh_host_keys FROM sandboxes WHERE vmid = 1").pluck().get(),
        null,
      );
    } finally {
      store.close();
    }
  });

  it("stores an unknown IP as NULL, never ''", () => {
    const store = freshStore();
    try {
      assert.equal(store.sandboxes.insert(sandbox(1, "RUNNING", { ip: "" })).ip, null);
      assert.equal(store.sandboxes.insert(sandbox(2)).ip, null);
      assert.equal(store.db.prepare("SELECT count(*) FROM sandboxes WHERE ip IS NULL").pluck().get(), 2);
      const code = sqliteCodeOf(() =>
        store.db
          .prepare(
            "INSERT INTO sandboxes (vmid, name, profile, state, ip, created_at, updated_at) VALUES (3, 'x', 'p', 'READY', '', ?, ?)",
          )
          .run("2026-02-14T13:00:00.000000000Z", "2026-02-14T13:00:00.000000000Z"),
      );
      assert.equal(code, "SQLITE_CONSTRAINT_CHECK");
    } finally {
      store.close();
    }
  });

  it("refuses two live sandboxes with the same guest IP; destroyed rows do not count", () => {
    const store = freshStore();
    try {
      store.sandboxes.insert(sandbox(1, "DESTROYED", { ip: "10.77.0.177" }));
      store.sandboxes.insert(sandbox(2, "RUNNING", { ip: "10.77.0.177" }));
      store.sandboxes.insert(sandbox(3, "DESTROYED", { ip: "10.77.0.177" }));
      const err = catchAgentlab(() => store.sandboxes.insert(sandbox(4, "BOOTING", { ip: "10.77.0.177" })));
      assert.equal(err.code, "CONFLICT");
      assert.equal(err.message, "guest IP 10.77.0.177 is already used by sandbox 2");
      assert.equal(err.details["conflicting_vmid"], 2);
      assert.equal(store.sandboxes.get(4), undefined);
      store.sandboxes.insert(sandbox(5, "RUNNING", { ip: "10.77.0.178" }));
    } finally {
      store.close();
    }
  });

  it("refuses a taken vmid and an unknown workspace", () => {
    const store = freshStore();
    try {
      store.sandboxes.insert(sandbox(1001));
      const dup = catchAgentlab(() => store.sandboxes.insert(sandbox(1001)));
      assert.equal(dup.code, "CONFLICT");
      assert.equal(dup.message, "sandbox 1001 already exists");
      const ws = catchAgentlab(() =>
        store.sandboxes.insert(sandbox(1002, "READY", { workspace_id: "workspace-nope" })),
      );
      assert.equal(ws.code, "NOT_FOUND");
      assert.match(ws.message, /workspace-nope/);
      const tag = catchAgentlab(() => store.sandboxes.insert(sandbox(1003, "READY", { tags: ["a,b"] })));
      assert.equal(tag.code, "INVALID_PARAMS");
    } finally {
      store.close();
    }
  });

  it("accepts every state of spec 4.1 and the CHECK rejects any other", () => {
    const store = freshStore();
    try {
      assert.equal(SANDBOX_STATES.length, 11);
      SANDBOX_STATES.forEach((state, i) => {
        store.sandboxes.insert(sandbox(100 + i, state));
      });
      const rawInsert = (state: string) =>
        store.db
          .prepare(
            "INSERT INTO sandboxes (vmid, name, profile, state, created_at, updated_at) VALUES (999, 'x', 'p', ?, ?, ?)",
          )
          .run(state, "2026-02-14T13:00:00.000000000Z", "2026-02-14T13:00:00.000000000Z");
      for (const bad of ["BOGUS", "running", "", "DELETED"]) {
        assert.equal(
          sqliteCodeOf(() => rawInsert(bad)),
          "SQLITE_CONSTRAINT_CHECK",
          bad,
        );
      }
      assert.throws(() => store.sandboxes.insert(sandbox(998, "BOGUS" as SandboxState)), /CHECK constraint/);
    } finally {
      store.close();
    }
  });

  it("countByState lists only states that have rows", () => {
    const store = freshStore();
    try {
      assert.deepEqual(store.sandboxes.countByState(), {});
      store.sandboxes.insert(sandbox(1, "RUNNING"));
      store.sandboxes.insert(sandbox(2, "RUNNING"));
      store.sandboxes.insert(sandbox(3, "DESTROYED"));
      store.sandboxes.insert(sandbox(4, "FAILED", { failure_reason: "clone failed" }));
      assert.deepEqual(store.sandboxes.countByState(), { DESTROYED: 1, FAILED: 1, RUNNING: 2 });
    } finally {
      store.close();
    }
  });

  it("list filters by state and profile and hides DESTROYED unless asked", () => {
    const store = freshStore();
    try {
      store.sandboxes.insert({ ...sandbox(3, "RUNNING"), profile: "big" });
      store.sandboxes.insert(sandbox(1, "RUNNING"));
      store.sandboxes.insert(sandbox(2, "DESTROYED"));
      store.sandboxes.insert(sandbox(4, "STOPPED"));
      const vmids = (rows: Array<{ vmid: number }>) => rows.map((r) => r.vmid);
      assert.deepEqual(vmids(store.sandboxes.list()), [1, 3, 4]);
      assert.deepEqual(vmids(store.sandboxes.list({ includeDestroyed: true })), [1, 2, 3, 4]);
      assert.deepEqual(vmids(store.sandboxes.list({ state: "RUNNING" })), [1, 3]);
      assert.deepEqual(vmids(store.sandboxes.list({ state: "DESTROYED" })), [2]);
      assert.deepEqual(vmids(store.sandboxes.list({ profile: "big" })), [3]);
      assert.deepEqual(vmids(store.sandboxes.list({ profile: "default", state: "STOPPED" })), [4]);
      assert.deepEqual(vmids(store.sandboxes.list({ profile: "none" })), []);
    } finally {
      store.close();
    }
  });
});

describe("store: events", () => {
  it("appends with the injected clock and JSON payload", () => {
    const store = freshStore("2026-02-14T13:26:17.898Z");
    try {
      const e = store.events.append({
        kind: "sandbox.state",
        sandbox_vmid: 1001,
        msg: "REQUESTED -> PROVISIONING",
        payload: { from_state: "REQUESTED", to_state: "PROVISIONING" },
      });
      assert.deepEqual(e, {
        id: 1,
        ts: new Date("2026-02-14T13:26:17.898Z"),
        kind: "sandbox.state",
        sandbox_vmid: 1001,
        job_id: null,
        workspace_id: null,
        msg: "REQUESTED -> PROVISIONING",
        payload: { from_state: "REQUESTED", to_state: "PROVISIONING" },
      });
      const raw = store.db.prepare("SELECT ts, json FROM events WHERE id = 1").get();
      assert.deepEqual(raw, {
        ts: "2026-02-14T13:26:17.898000000Z",
        json: '{"from_state":"REQUESTED","to_state":"PROVISIONING"}',
      });
      const ws = store.events.append({ kind: "workspace.fsck.started", workspace_id: "workspace-1" });
      assert.equal(ws.workspace_id, "workspace-1");
      assert.equal(ws.payload, null);
      const found = store.db
        .prepare("SELECT id FROM events WHERE workspace_id = ?")
        .pluck()
        .all("workspace-1");
      assert.deepEqual(found, [ws.id]);
      assert.equal(catchAgentlab(() => store.events.append({ kind: "" })).code, "INVALID_PARAMS");
    } finally {
      store.close();
    }
  });

  it("listForSandbox with a kind gives that kind's events only (the last one with tail 1)", () => {
    const store = freshStore();
    try {
      for (let i = 1; i <= 5; i++) {
        store.events.append({ kind: "sandbox.idle_stop", sandbox_vmid: 1, msg: `stop-${i}` });
        store.events.append({ kind: "k", sandbox_vmid: 1, msg: `other-${i}` });
        store.events.append({ kind: "sandbox.idle_stop", sandbox_vmid: 2, msg: `two-${i}` });
      }
      const msgs = (rows: Array<{ msg: string | null }>) => rows.map((r) => r.msg);
      const kind = "sandbox.idle_stop";
      assert.deepEqual(msgs(store.events.listForSandbox(1, { kind, tail: 1 })), ["stop-5"]);
      assert.deepEqual(msgs(store.events.listForSandbox(1, { kind, tail: 2 })), ["stop-4", "stop-5"]);
      assert.deepEqual(msgs(store.events.listForSandbox(1, { kind })), [
        "stop-1",
        "stop-2",
        "stop-3",
        "stop-4",
        "stop-5",
      ]);
      assert.deepEqual(store.events.listForSandbox(1, { kind: "none", tail: 1 }), []);
      assert.deepEqual(store.events.listForSandbox(3, { kind, tail: 1 }), []);
      assert.equal(store.events.listForSandbox(1).length, 10);
    } finally {
      store.close();
    }
  });

  it("listForSandbox returns one sandbox's events oldest first, with tail and afterId", () => {
    const store = freshStore();
    try {
      for (let i = 1; i <= 10; i++) {
        store.events.append({ kind: "k", sandbox_vmid: 1, msg: `one-${i}` });
        store.events.append({ kind: "k", sandbox_vmid: 2, msg: `two-${i}` });
      }
      const msgs = (rows: Array<{ msg: string | null }>) => rows.map((r) => r.msg);
      const all = store.events.listForSandbox(1);
      assert.equal(all.length, 10);
      assert.deepEqual(
        msgs(all),
        Array.from({ length: 10 }, (_, i) => `one-${i + 1}`),
      );
      assert.ok(all.every((e, i) => i === 0 || e.id > all[i - 1]!.id));
      assert.ok(all.every((e, i) => i === 0 || e.ts > all[i - 1]!.ts));

      assert.deepEqual(msgs(store.events.listForSandbox(1, { tail: 3 })), ["one-8", "one-9", "one-10"]);
      assert.deepEqual(store.events.listForSandbox(1, { tail: 0 }), []);
      assert.equal(store.events.listForSandbox(1, { tail: 50 }).length, 10);

      const cursor = all[6]!.id;
      assert.deepEqual(msgs(store.events.listForSandbox(1, { afterId: cursor })), [
        "one-8",
        "one-9",
        "one-10",
      ]);
      assert.deepEqual(msgs(store.events.listForSandbox(1, { afterId: all[2]!.id, tail: 2 })), [
        "one-9",
        "one-10",
      ]);
      assert.deepEqual(store.events.listForSandbox(1, { afterId: all[9]!.id }), []);
      assert.deepEqual(store.events.listForSandbox(3), []);

      assert.equal(catchAgentlab(() => store.events.listForSandbox(1, { tail: -1 })).code, "INVALID_PARAMS");
      assert.equal(
        catchAgentlab(() => store.events.listForSandbox(1, { afterId: 1.5 })).code,
        "INVALID_PARAMS",
      );
    } finally {
      store.close();
    }
  });
});

describe("store: schema constraints of migration 1", () => {
  const T = "2026-02-14T13:00:00.000000000Z";

  it("stores only fixed-width timestamps", () => {
    const store = freshStore();
    try {
      const insert = (ts: string) =>
        store.db.prepare("INSERT INTO events (ts, kind) VALUES (?, 'k')").run(ts);
      insert(T);
      for (const bad of ["2026-02-14T13:00:00Z", "2026-02-14T13:00:00.000Z", "2026-02-14 13:00:00", "now"]) {
        assert.equal(
          sqliteCodeOf(() => insert(bad)),
          "SQLITE_CONSTRAINT_CHECK",
          bad,
        );
      }
    } finally {
      store.close();
    }
  });

  it("allows one workspace per VM and cascades snapshots; sandboxes keep their row", () => {
    const store = freshStore();
    try {
      const ws = store.db.prepare(
        "INSERT INTO workspaces (id, name, storage, volid, size_gb, attached_vmid, created_at, updated_at) VALUES (?, ?, 'local-zfs', ?, 10, ?, ?, ?)",
      );
      ws.run("w1", "one", "local-zfs:vm-0-disk-1", 1001, T, T);
      ws.run("w2", "two", "local-zfs:vm-0-disk-2", null, T, T);
      ws.run("w3", "three", "local-zfs:vm-0-disk-3", null, T, T);
      assert.equal(
        sqliteCodeOf(() => ws.run("w4", "four", "local-zfs:vm-0-disk-4", 1001, T, T)),
        "SQLITE_CONSTRAINT_UNIQUE",
      );
      assert.equal(
        sqliteCodeOf(() => ws.run("w5", "one", "local-zfs:vm-0-disk-5", null, T, T)),
        "SQLITE_CONSTRAINT_UNIQUE",
      );
      store.db
        .prepare(
          "INSERT INTO workspace_snapshots (workspace_id, name, backend_ref, created_at) VALUES ('w2', 'clean', 'clean', ?)",
        )
        .run(T);
      store.sandboxes.insert(sandbox(1001, "RUNNING", { workspace_id: "w2" }));
      store.db.prepare("DELETE FROM workspaces WHERE id = 'w2'").run();
      assert.equal(store.db.prepare("SELECT count(*) FROM workspace_snapshots").pluck().get(), 0);
      assert.equal(store.sandboxes.get(1001)?.workspace_id, null);
    } finally {
      store.close();
    }
  });

  it("cascades artifacts and artifact tokens with their job and keeps only token hashes", () => {
    const store = freshStore();
    try {
      store.db
        .prepare(
          "INSERT INTO jobs (id, repo_url, ref, profile, status, created_at, updated_at) VALUES ('job_1', 'https://x/r.git', 'main', 'p', 'QUEUED', ?, ?)",
        )
        .run(T, T);
      store.db
        .prepare(
          "INSERT INTO artifacts (job_id, name, path, size_bytes, sha256, created_at) VALUES ('job_1', 'a.tgz', '/x/a.tgz', 1, 'h', ?)",
        )
        .run(T);
      const token = store.db.prepare(
        "INSERT INTO artifact_tokens (token_hash, job_id, expires_at, created_at) VALUES (?, 'job_1', ?, ?)",
      );
      token.run("a".repeat(64), T, T);
      assert.equal(
        sqliteCodeOf(() => token.run("not-a-sha256-hex", T, T)),
        "SQLITE_CONSTRAINT_CHECK",
      );
      assert.equal(
        sqliteCodeOf(() =>
          store.db
            .prepare(
              "INSERT INTO jobs (id, repo_url, ref, profile, status, created_at, updated_at) VALUES ('job_2', 'r', 'main', 'p', 'DONE', ?, ?)",
            )
            .run(T, T),
        ),
        "SQLITE_CONSTRAINT_CHECK",
      );
      store.db.prepare("DELETE FROM jobs WHERE id = 'job_1'").run();
      assert.equal(store.db.prepare("SELECT count(*) FROM artifacts").pluck().get(), 0);
      assert.equal(store.db.prepare("SELECT count(*) FROM artifact_tokens").pluck().get(), 0);
    } finally {
      store.close();
    }
  });
});
