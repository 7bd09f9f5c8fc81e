import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { newSessionId, SESSION_ID_RE } from "../../src/daemon/store/sessions.js";
import { type NewWorkspace, newWorkspaceId } from "../../src/daemon/store/workspaces.js";
import { WORKSPACE_ID_RE } from "../../src/protocol/workspace.js";
import { catchAgentlab } from "../helpers/errors.js";

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A store on a real file; `clock.t` is the time every write is stamped with. */
function freshStore(): { store: Store; clock: { t: number }; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-ws-store-"));
  tempDirs.push(dir);
  const clock = { t: Date.parse("2026-02-14T13:00:00.000Z") };
  const file = path.join(dir, "agentlab.db");
  const store = openStore(file, { now: () => new Date(clock.t) });
  return { store, clock, file };
}

const workspace = (name: string, holder: number, extra: Partial<NewWorkspace> = {}): NewWorkspace => ({
  name,
  node: "pve1",
  storage: "local-zfs",
  storage_type: "zfspool",
  volid: `local-zfs:vm-${holder}-disk-0`,
  format: "raw",
  size_gb: 10,
  holder_vmid: holder,
  state: "ready",
  ...extra,
});

const sandbox = (vmid: number) => ({ vmid, name: `sb-${vmid}`, profile: "p", state: "STOPPED" as const });

describe("workspace store: rows", () => {
  it("inserts a typed row with a generated id and resolves it by name or id", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1005, { state: "creating", meta: { a: 1 } }));
      assert.match(ws.id, WORKSPACE_ID_RE);
      assert.deepEqual(ws, {
        id: ws.id,
        name: "alpha",
        node: "pve1",
        storage: "local-zfs",
        storage_type: "zfspool",
        volid: "local-zfs:vm-1005-disk-0",
        format: "raw",
        size_gb: 10,
        holder_vmid: 1005,
        state: "creating",
        broken_reason: null,
        attached_vmid: null,
        last_attached_vmid: null,
        lease_owner: null,
        lease_nonce: null,
        lease_expires_at: null,
        forked_from: null,
        fork_origin_snapshot: null,
        copy_mode: null,
        meta: { a: 1 },
        created_at: new Date("2026-02-14T13:00:00.000Z"),
        updated_at: new Date("2026-02-14T13:00:00.000Z"),
      });
      assert.deepEqual(store.workspaces.resolve("alpha"), ws);
      assert.deepEqual(store.workspaces.resolve(ws.id), ws);
      assert.deepEqual(store.workspaces.require(ws.id), ws);
      assert.equal(store.workspaces.resolve("beta"), undefined);
      const missing = catchAgentlab(() => store.workspaces.require("beta"));
      assert.equal(missing.code, "WORKSPACE_NOT_FOUND");
      assert.equal(missing.message, "workspace not found");
      assert.deepEqual(missing.details, { workspace: "beta" });
    } finally {
      store.close();
    }
  });

  it("refuses a duplicate name, a duplicate holder VMID and a name shaped like an id, changing nothing", () => {
    const { store } = freshStore();
    try {
      const first = store.workspaces.insert(workspace("alpha", 1005));
      const dupName = catchAgentlab(() => store.workspaces.insert(workspace("alpha", 1006)));
      assert.equal(dupName.code, "CONFLICT");
      assert.equal(dupName.message, "workspace already exists");
      const dupHolder = catchAgentlab(() => store.workspaces.insert(workspace("beta", 1005)));
      assert.equal(dupHolder.code, "CONFLICT");
      assert.equal(dupHolder.message, "holder VMID 1005 already belongs to workspace alpha");
      const idLike = catchAgentlab(() => store.workspaces.insert(workspace(newWorkspaceId(), 1007)));
      assert.equal(idLike.code, "INVALID_PARAMS");
      assert.match(idLike.message, /looks like a workspace id/);
      assert.deepEqual(
        store.workspaces.list().map((w) => w.id),
        [first.id],
      );
      assert.equal(store.vmidAllocator.highestUsed(), 1005, "refused inserts did not move the VMID mark");
    } finally {
      store.close();
    }
  });

  it("lists by name with filters, updates with a state compare-and-set, and lists forks", () => {
    const { store, clock } = freshStore();
    try {
      const b = store.workspaces.insert(workspace("b", 1002, { state: "creating" }));
      const a = store.workspaces.insert(workspace("a", 1001, { node: "pve2" }));
      store.workspaces.insert(
        workspace("c", 1003, { forked_from: a.id, fork_origin_snapshot: "s1", copy_mode: "cow" }),
      );
      assert.deepEqual(
        store.workspaces.list().map((w) => w.name),
        ["a", "b", "c"],
      );
      assert.deepEqual(
        store.workspaces.list({ state: "creating" }).map((w) => w.name),
        ["b"],
      );
      assert.deepEqual(
        store.workspaces.list({ node: "pve2" }).map((w) => w.name),
        ["a"],
      );
      assert.deepEqual(
        store.workspaces.listForks(a.id).map((w) => w.name),
        ["c"],
      );

      clock.t += 60_000;
      const ready = store.workspaces.update(
        b.id,
        { state: "ready", volid: "local-zfs:vm-1002-disk-0", meta: { last_fsck: { status: "clean" } } },
        "creating",
      );
      assert.equal(ready?.state, "ready");
      assert.deepEqual(ready?.meta, { last_fsck: { status: "clean" } });
      assert.equal(ready?.updated_at.toISOString(), "2026-02-14T13:01:00.000Z");
      assert.equal(ready?.created_at.toISOString(), "2026-02-14T13:00:00.000Z");
      assert.equal(
        store.workspaces.update(b.id, { state: "broken", broken_reason: "x" }, "creating"),
        undefined,
        "the CAS fails once the state moved on",
      );
      assert.equal(store.workspaces.get(b.id)?.state, "ready");
      assert.equal(store.workspaces.update("workspace-0000000000000000", { state: "broken" }), undefined);
      const bad = catchAgentlab(() =>
        store.workspaces.update(b.id, { attached_vmid: 5 } as unknown as Parameters<
          Store["workspaces"]["update"]
        >[1]),
      );
      assert.equal(bad.code, "INTERNAL", "attachment is not patchable: it goes through attach/detach");
    } finally {
      store.close();
    }
  });

  it("delete cascades snapshots and ops, refuses while attached or named by a session", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1005));
      store.workspaceSnapshots.insert({ workspace_id: ws.id, name: "s1", state: "ready", kind: "user" });
      store.workspaceOps.begin({ workspace_id: ws.id, kind: "destroy", step: "start" });
      store.sandboxes.insert(sandbox(1010));
      store.workspaces.attach(ws.id, 1010);
      const attached = catchAgentlab(() => store.workspaces.delete(ws.id));
      assert.equal(attached.code, "WORKSPACE_ATTACHED");
      store.workspaces.detach(ws.id, 1010);
      const session = store.sessions.insert({ name: "s", workspace_id: ws.id, profile: "p" });
      const used = catchAgentlab(() => store.workspaces.delete(ws.id));
      assert.equal(used.code, "CONFLICT");
      assert.equal(used.message, "workspace is used by session s");
      assert.ok(store.workspaces.get(ws.id), "still there after both refusals");

      store.tx(() => {
        store.sessions.delete(session.id);
        assert.equal(store.workspaces.delete(ws.id), true);
      });
      assert.equal(store.workspaces.get(ws.id), undefined);
      assert.deepEqual(store.workspaceSnapshots.list(ws.id), []);
      assert.equal(store.workspaceOps.getByWorkspace(ws.id), undefined);
      assert.equal(store.workspaces.delete(ws.id), false);
    } finally {
      store.close();
    }
  });
});

describe("workspace store: attach and detach", () => {
  it("attach sets attached, last attached and the sandbox's workspace_id; a second attach is refused", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1005));
      store.sandboxes.insert(sandbox(1010));
      store.sandboxes.insert(sandbox(1011));
      const attached = store.workspaces.attach(ws.id, 1010);
      assert.equal(attached.attached_vmid, 1010);
      assert.equal(attached.last_attached_vmid, 1010);
      assert.equal(store.sandboxes.get(1010)?.workspace_id, ws.id);
      assert.equal(store.workspaces.byAttachedVmid(1010)?.id, ws.id);

      const again = catchAgentlab(() => store.workspaces.attach(ws.id, 1011));
      assert.equal(again.code, "WORKSPACE_ATTACHED");
      assert.equal(again.message, "workspace already attached");
      assert.equal(again.details["attached_vmid"], 1010);
      assert.equal(store.workspaces.get(ws.id)?.attached_vmid, 1010, "unchanged");
      assert.equal(store.sandboxes.get(1011)?.workspace_id, null, "unchanged");
    } finally {
      store.close();
    }
  });

  it("one workspace per VM: a second workspace cannot attach to the same sandbox", () => {
    const { store } = freshStore();
    try {
      const a = store.workspaces.insert(workspace("a", 1001));
      const b = store.workspaces.insert(workspace("b", 1002));
      store.sandboxes.insert(sandbox(1010));
      store.workspaces.attach(a.id, 1010);
      const err = catchAgentlab(() => store.workspaces.attach(b.id, 1010));
      assert.equal(err.code, "CONFLICT");
      assert.equal(err.message, "vmid already has workspace attached");
      assert.equal(err.details["workspace_name"], "a");
      assert.equal(store.workspaces.get(b.id)?.attached_vmid, null, "the refused attach left b detached");
      assert.equal(store.workspaces.get(b.id)?.last_attached_vmid, null);
      assert.equal(store.sandboxes.get(1010)?.workspace_id, a.id);
    } finally {
      store.close();
    }
  });

  it("attach to a missing sandbox or from a missing workspace is refused and rolled back", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("a", 1001));
      const noSandbox = catchAgentlab(() => store.workspaces.attach(ws.id, 4242));
      assert.equal(noSandbox.code, "SANDBOX_NOT_FOUND");
      assert.equal(store.workspaces.get(ws.id)?.attached_vmid, null, "the workspace update was rolled back");
      store.sandboxes.insert(sandbox(1010));
      const noWs = catchAgentlab(() => store.workspaces.attach("workspace-0000000000000000", 1010));
      assert.equal(noWs.code, "WORKSPACE_NOT_FOUND");
    } finally {
      store.close();
    }
  });

  it("detach is a CAS on the attached VM: it keeps last_attached_vmid and clears the sandbox row", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("a", 1001));
      store.sandboxes.insert(sandbox(1010));
      store.workspaces.attach(ws.id, 1010);
      const wrong = catchAgentlab(() => store.workspaces.detach(ws.id, 1011));
      assert.equal(wrong.code, "CONFLICT");
      assert.equal(wrong.message, "workspace a is attached to sandbox 1010, not to sandbox 1011");
      assert.equal(store.workspaces.get(ws.id)?.attached_vmid, 1010);

      const detached = store.workspaces.detach(ws.id, 1010);
      assert.equal(detached.attached_vmid, null);
      assert.equal(detached.last_attached_vmid, 1010);
      assert.equal(store.sandboxes.get(1010)?.workspace_id, null);
      assert.equal(store.workspaces.byAttachedVmid(1010), undefined);

      const twice = catchAgentlab(() => store.workspaces.detach(ws.id, 1010));
      assert.equal(twice.code, "CONFLICT");
      assert.match(twice.message, /is not attached/);
    } finally {
      store.close();
    }
  });

  it("attach inside an outer transaction rolls back with it", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("a", 1001));
      store.sandboxes.insert(sandbox(1010));
      assert.throws(
        () =>
          store.tx(() => {
            store.workspaces.attach(ws.id, 1010);
            throw new Error("proxmox step failed");
          }),
        /proxmox step failed/,
      );
      assert.equal(store.workspaces.get(ws.id)?.attached_vmid, null);
      assert.equal(store.sandboxes.get(1010)?.workspace_id, null);
    } finally {
      store.close();
    }
  });

  it("lists holder VMIDs and the leased rows", () => {
    const { store } = freshStore();
    try {
      const b = store.workspaces.insert(workspace("b", 1020));
      store.workspaces.insert(workspace("a", 1003));
      assert.deepEqual(store.workspaces.holderVmids(), [1003, 1020]);
      assert.deepEqual(store.workspaces.listLeased(), []);
      store.workspaceLeases.acquire(b.id, "sandbox:1010", 60_000);
      assert.deepEqual(
        store.workspaces.listLeased().map((w) => w.name),
        ["b"],
      );
    } finally {
      store.close();
    }
  });
});

describe("workspace store: VMID allocator", () => {
  it("never goes backwards after a workspace row is deleted", () => {
    const { store } = freshStore();
    try {
      assert.equal(store.vmidAllocator.highestUsed(), undefined);
      store.sandboxes.insert(sandbox(1000));
      assert.equal(store.vmidAllocator.highestUsed(), 1000);
      const ws = store.workspaces.insert(workspace("a", 1001));
      assert.equal(store.vmidAllocator.highestUsed(), 1001);
      assert.equal(store.vmidAllocator.lastRecorded(), 1001, "insert records the holder VMID itself");
      assert.equal(store.vmidAllocator.isUsed(1001), true);
      store.workspaces.delete(ws.id);
      assert.equal(store.vmidAllocator.highestUsed(), 1001, "the holder VMID stays used after destroy");
      assert.equal(store.vmidAllocator.isUsed(1001), false, "no row has it any more");

      store.vmidAllocator.record(1500);
      store.vmidAllocator.record(1200);
      assert.equal(store.vmidAllocator.lastRecorded(), 1500, "record never lowers the mark");
      assert.equal(store.vmidAllocator.highestUsed(), 1500);
      store.sandboxes.insert(sandbox(2000));
      assert.equal(store.vmidAllocator.highestUsed(), 2000, "sandbox rows count without record()");
      assert.equal(catchAgentlab(() => store.vmidAllocator.record(0)).code, "INVALID_PARAMS");
    } finally {
      store.close();
    }
  });

  it("a mark recorded in a rolled-back reservation is rolled back too", () => {
    const { store } = freshStore();
    try {
      assert.throws(
        () =>
          store.tx(() => {
            store.vmidAllocator.record(3000);
            throw new Error("insert failed");
          }),
        /insert failed/,
      );
      assert.equal(store.vmidAllocator.lastRecorded(), undefined);
    } finally {
      store.close();
    }
  });
});

describe("workspace store: snapshots", () => {
  it("insert, markReady with Proxmox's snaptime, list oldest first, delete", () => {
    const { store, clock } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("a", 1001));
      const s1 = store.workspaceSnapshots.insert({
        workspace_id: ws.id,
        name: "s1",
        state: "creating",
        kind: "user",
      });
      assert.deepEqual(s1, {
        workspace_id: ws.id,
        name: "s1",
        backend_ref: "s1",
        state: "creating",
        kind: "user",
        created_at: new Date("2026-02-14T13:00:00.000Z"),
      });
      clock.t -= 3_600_000;
      store.workspaceSnapshots.insert({
        workspace_id: ws.id,
        name: "agentlab-fork-1002",
        state: "ready",
        kind: "fork-base",
      });
      const snaptime = new Date("2026-02-14T13:00:05.000Z");
      assert.deepEqual(store.workspaceSnapshots.markReady(ws.id, "s1", snaptime), {
        ...s1,
        state: "ready",
        created_at: snaptime,
      });
      assert.deepEqual(
        store.workspaceSnapshots.list(ws.id).map((s) => [s.name, s.kind, s.state]),
        [
          ["agentlab-fork-1002", "fork-base", "ready"],
          ["s1", "user", "ready"],
        ],
      );
      assert.equal(store.workspaceSnapshots.markDeleting(ws.id, "agentlab-fork-1002")?.state, "deleting");
      assert.equal(store.workspaceSnapshots.markReady(ws.id, "nope"), undefined);

      const dup = catchAgentlab(() =>
        store.workspaceSnapshots.insert({ workspace_id: ws.id, name: "s1", state: "creating", kind: "user" }),
      );
      assert.equal(dup.code, "CONFLICT");
      assert.equal(dup.message, "workspace snapshot already exists");
      const noWs = catchAgentlab(() =>
        store.workspaceSnapshots.insert({
          workspace_id: "workspace-0000000000000000",
          name: "s1",
          state: "creating",
          kind: "user",
        }),
      );
      assert.equal(noWs.code, "WORKSPACE_NOT_FOUND");

      assert.equal(store.workspaceSnapshots.delete(ws.id, "s1"), true);
      assert.equal(store.workspaceSnapshots.delete(ws.id, "s1"), false);
      assert.equal(store.workspaceSnapshots.get(ws.id, "s1"), undefined);
    } finally {
      store.close();
    }
  });
});

describe("workspace store: operations", () => {
  it("one op per workspace: a second begin is WORKSPACE_BUSY naming the first", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      const other = store.workspaces.insert(workspace("beta", 1002));
      const op = store.workspaceOps.begin({
        workspace_id: ws.id,
        kind: "snapshot",
        step: "start",
        params: { name: "s1" },
        lease: { owner: `snapshot:${ws.id}:abcd1234`, nonce: "0".repeat(32) },
      });
      assert.equal(op.kind, "snapshot");
      assert.deepEqual(op.params, { name: "s1" });
      assert.equal(op.lease_owner, `snapshot:${ws.id}:abcd1234`);

      const busy = catchAgentlab(() =>
        store.workspaceOps.begin({ workspace_id: ws.id, kind: "fsck", step: "start" }),
      );
      assert.equal(busy.code, "WORKSPACE_BUSY");
      assert.equal(busy.message, "workspace alpha is busy: snapshot (step start) in progress");
      assert.equal(busy.details["op_id"], op.id);
      assert.deepEqual(
        store.workspaceOps.list().map((o) => o.id),
        [op.id],
      );
      // Another workspace is not blocked.
      store.workspaceOps.begin({ workspace_id: other.id, kind: "fsck", step: "start" });

      assert.equal(store.workspaceOps.finish(op.id), true);
      assert.equal(store.workspaceOps.finish(op.id), false);
      const next = store.workspaceOps.begin({ workspace_id: ws.id, kind: "fsck", step: "start" });
      assert.ok(next.id > op.id, "ids are never reused");

      const missing = catchAgentlab(() =>
        store.workspaceOps.begin({
          workspace_id: "workspace-0000000000000000",
          kind: "attach",
          step: "start",
        }),
      );
      assert.equal(missing.code, "WORKSPACE_NOT_FOUND");
    } finally {
      store.close();
    }
  });

  it("setStep merges params (null removes a key) and stamps updated_at", () => {
    const { store, clock } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      const op = store.workspaceOps.begin({
        workspace_id: ws.id,
        kind: "fsck",
        step: "start",
        params: { mode: "read-only", activated: { lv: false } },
      });
      clock.t += 5_000;
      const moved = store.workspaceOps.setStep(op.id, "activate", {
        nbd: "/dev/nbd0",
        activated: { nbd: true },
        mode: null,
      });
      assert.equal(moved?.step, "activate");
      assert.deepEqual(moved?.params, { activated: { lv: false, nbd: true }, nbd: "/dev/nbd0" });
      assert.equal(moved?.updated_at.toISOString(), "2026-02-14T13:00:05.000Z");
      assert.equal(moved?.created_at.toISOString(), "2026-02-14T13:00:00.000Z");
      assert.deepEqual(store.workspaceOps.getByWorkspace(ws.id), moved);
      assert.deepEqual(store.workspaceOps.get(op.id), moved);
      assert.equal(store.workspaceOps.setStep(9999, "x"), undefined);
    } finally {
      store.close();
    }
  });

  it("an op begun in a transaction that fails is not left behind", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      assert.throws(() =>
        store.tx(() => {
          store.workspaceOps.begin({
            workspace_id: ws.id,
            kind: "attach",
            step: "start",
            params: { vmid: 1010 },
          });
          const lease = store.workspaceLeases.acquire(ws.id, "sandbox:1010", 60_000);
          assert.ok(lease.ok);
          throw new Error("lease taken, then the precondition failed");
        }),
      );
      assert.equal(store.workspaceOps.getByWorkspace(ws.id), undefined);
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, null);
    } finally {
      store.close();
    }
  });
});

describe("session store", () => {
  it("inserts, resolves by name or id, lists by workspace", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      const ws2 = store.workspaces.insert(workspace("beta", 1002));
      const s = store.sessions.insert({
        name: "feature-x",
        workspace_id: ws.id,
        profile: "yolo",
        branch: "feat/x",
      });
      assert.match(s.id, SESSION_ID_RE);
      assert.deepEqual(s, {
        id: s.id,
        name: "feature-x",
        workspace_id: ws.id,
        current_vmid: null,
        profile: "yolo",
        branch: "feat/x",
        created_at: new Date("2026-02-14T13:00:00.000Z"),
        updated_at: new Date("2026-02-14T13:00:00.000Z"),
      });
      store.sessions.insert({ name: "a-first", workspace_id: ws2.id, profile: "yolo" });
      assert.deepEqual(store.sessions.resolve("feature-x"), s);
      assert.deepEqual(store.sessions.resolve(s.id), s);
      assert.deepEqual(store.sessions.require(s.id), s);
      const missing = catchAgentlab(() => store.sessions.require("nope"));
      assert.equal(missing.code, "SESSION_NOT_FOUND");
      assert.equal(missing.message, "session not found");
      assert.deepEqual(
        store.sessions.list().map((x) => x.name),
        ["a-first", "feature-x"],
      );
      assert.deepEqual(
        store.sessions.byWorkspace(ws.id).map((x) => x.name),
        ["feature-x"],
      );
      assert.deepEqual(
        store.sessions.list({ workspace_id: ws2.id }).map((x) => x.name),
        ["a-first"],
      );
    } finally {
      store.close();
    }
  });

  it("refuses a duplicate name, an unknown workspace and an id-shaped name", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      store.sessions.insert({ name: "s", workspace_id: ws.id, profile: "p" });
      const dup = catchAgentlab(() =>
        store.sessions.insert({ name: "s", workspace_id: ws.id, profile: "p" }),
      );
      assert.equal(dup.code, "CONFLICT");
      assert.equal(dup.message, "session already exists");
      const noWs = catchAgentlab(() =>
        store.sessions.insert({ name: "t", workspace_id: "workspace-0000000000000000", profile: "p" }),
      );
      assert.equal(noWs.code, "WORKSPACE_NOT_FOUND");
      const idLike = catchAgentlab(() =>
        store.sessions.insert({ name: newSessionId(), workspace_id: ws.id, profile: "p" }),
      );
      assert.equal(idLike.code, "INVALID_PARAMS");
      assert.equal(store.sessions.list().length, 1);
    } finally {
      store.close();
    }
  });

  it("updates current_vmid with an optional compare-and-set, and clears it when the sandbox goes", () => {
    const { store, clock } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      const s = store.sessions.insert({ name: "s", workspace_id: ws.id, profile: "p" });
      clock.t += 1000;
      const running = store.sessions.update(s.id, { current_vmid: 1010 }, { expectCurrentVmid: null });
      assert.equal(running?.current_vmid, 1010);
      assert.equal(running?.updated_at.toISOString(), "2026-02-14T13:00:01.000Z");
      assert.equal(
        store.sessions.update(s.id, { current_vmid: 1011 }, { expectCurrentVmid: null }),
        undefined,
        "a second resume racing the first loses",
      );
      assert.equal(store.sessions.byCurrentVmid(1010)?.id, s.id);
      assert.equal(store.sessions.update(s.id, { profile: "q", branch: null })?.profile, "q");

      assert.deepEqual(
        store.sessions.clearCurrentVmid(1010).map((x) => x.name),
        ["s"],
      );
      assert.equal(store.sessions.get(s.id)?.current_vmid, null);
      assert.deepEqual(store.sessions.clearCurrentVmid(1010), []);
      assert.equal(store.sessions.delete(s.id), true);
      assert.equal(store.sessions.delete(s.id), false);
    } finally {
      store.close();
    }
  });
});

describe("workspace events", () => {
  it("are listed per workspace, oldest first, with tail and afterId", () => {
    const { store } = freshStore();
    try {
      const ws = store.workspaces.insert(workspace("alpha", 1001));
      const first = store.events.append({ kind: "workspace.created", workspace_id: ws.id });
      store.events.append({ kind: "sandbox.state", sandbox_vmid: 1010 });
      store.events.append({ kind: "workspace.attached", workspace_id: ws.id, sandbox_vmid: 1010 });
      store.events.append({ kind: "workspace.detached", workspace_id: ws.id, sandbox_vmid: 1010 });
      assert.deepEqual(
        store.events.listForWorkspace(ws.id).map((e) => e.kind),
        ["workspace.created", "workspace.attached", "workspace.detached"],
      );
      assert.deepEqual(
        store.events.listForWorkspace(ws.id, { tail: 1 }).map((e) => e.kind),
        ["workspace.detached"],
      );
      assert.deepEqual(
        store.events.listForWorkspace(ws.id, { afterId: first.id, tail: 5 }).map((e) => e.kind),
        ["workspace.attached", "workspace.detached"],
      );
    } finally {
      store.close();
    }
  });
});
