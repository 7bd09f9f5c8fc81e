/**
 * The workspace lease keeper (design §9.3) on a real SQLite file with injected time: a fake clock and a
 * fake scheduler, so TTLs of seconds pass without sleeping. Live owners keep their leases (renewed when
 * half the TTL or less is left, and re-extended after downtime); gone owners lose them with an event; a
 * renew that changes no row is recorded as lost.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { pino } from "pino";
import type { Config } from "../../src/config/config.js";
import type { DaemonContext } from "../../src/daemon/context.js";
import { LeaseKeeper, leaseLiveness } from "../../src/daemon/services/workspaces/lease-keeper.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { TEMP_LEASE_TTL_MS, tempLeaseOwner } from "../../src/daemon/store/leases.js";
import type { Workspace } from "../../src/daemon/store/workspaces.js";
import { FakeClock, FakeScheduler } from "../helpers/fake-time.js";

const T0 = Date.parse("2026-03-01T10:00:00.000Z");
const TTL = 5_000;
const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

interface Harness {
  clock: FakeClock;
  scheduler: FakeScheduler;
  store: Store;
  keeper: LeaseKeeper;
  ws: Workspace;
  events(kind: string): Array<{ msg: string; payload: Record<string, unknown> }>;
  lease(): { owner: string | null; expires: number | null };
}

function harness(ttlMs = TTL): Harness {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-keeper-"));
  tempDirs.push(dir);
  const clock = new FakeClock(T0);
  const scheduler = new FakeScheduler(clock);
  const store = openStore(path.join(dir, "agentlab.db"), { now: () => clock.now() });
  const ctx = {
    config: { workspace_lease_ttl_ms: ttlMs } as unknown as Config,
    store,
    clock,
    log: pino({ level: "silent" }),
  } as unknown as DaemonContext;
  const ws = store.workspaces.insert({
    name: "ws1",
    node: "pve",
    storage: "local-zfs",
    volid: "local-zfs:vm-1005-disk-0",
    size_gb: 10,
    holder_vmid: 1005,
    state: "ready",
  });
  return {
    clock,
    scheduler,
    store,
    keeper: new LeaseKeeper(ctx, { scheduler }),
    ws,
    events: (kind) =>
      store.events
        .listForWorkspace(ws.id)
        .filter((e) => e.kind === kind)
        .map((e) => ({ msg: e.msg ?? "", payload: (e.payload ?? {}) as Record<string, unknown> })),
    lease: () => {
      const row = store.workspaces.require(ws.id);
      return { owner: row.lease_owner, expires: row.lease_expires_at?.getTime() ?? null };
    },
  };
}

function attachSandbox(h: Harness, vmid: number): void {
  h.store.sandboxes.insert({
    vmid,
    name: `sandbox-${vmid}`,
    profile: "yolo-ephemeral",
    state: "RUNNING",
    node: "pve",
    vm_created: true,
  });
  h.store.workspaces.attach(h.ws.id, vmid);
  assert.ok(h.store.workspaceLeases.acquire(h.ws.id, `sandbox:${vmid}`, TTL, h.clock.now()).ok);
}

describe("lease keeper", () => {
  test("ticks every min(30 s, ttl/2)", () => {
    assert.equal(harness(5_000).keeper.intervalMs, 2_500);
    assert.equal(harness(30 * 60_000).keeper.intervalMs, 30_000);
  });

  test("an attached sandbox's lease stays valid for 20 s with a 5 s TTL, renewed only when half is left", async () => {
    const h = harness();
    attachSandbox(h, 1012);
    assert.deepEqual(h.keeper.pass().renewed, [], "5 s left of 5: nothing to do yet");
    h.keeper.start();
    await h.keeper.idle();
    assert.deepEqual(h.scheduler.pending, [2_500]);
    for (let t = 0; t < 20_000; t += 500) {
      await h.scheduler.advanceSettling(500);
      const { owner, expires } = h.lease();
      assert.equal(owner, "sandbox:1012");
      assert.ok(expires !== null && expires > h.clock.ms, `valid at +${h.clock.ms - T0} ms`);
    }
    assert.ok(h.keeper.completedPasses >= 8);
    assert.deepEqual(h.events("workspace.lease.released"), []);
    await h.keeper.stop(100);
    assert.deepEqual(h.scheduler.pending, [], "nothing scheduled after stop");
  });

  test("without the keeper the same lease runs out (the control case)", async () => {
    const h = harness();
    attachSandbox(h, 1012);
    await h.scheduler.advanceSettling(20_000);
    assert.ok(h.lease().expires! < h.clock.ms);
  });

  test("a lease that expired while the daemon was down is re-extended for a live owner, same owner", () => {
    const h = harness();
    attachSandbox(h, 1012);
    const nonce = h.store.workspaces.require(h.ws.id).lease_nonce;
    h.clock.ms += 60_000;
    const report = h.keeper.pass();
    assert.equal(report.renewed.length, 1);
    assert.deepEqual(h.lease(), { owner: "sandbox:1012", expires: h.clock.ms + TTL });
    assert.equal(h.store.workspaces.require(h.ws.id).lease_nonce, nonce, "renewed, not re-taken");
  });

  test("a session's lease is kept while it has a sandbox and released once it is stopped", () => {
    const h = harness();
    h.store.sandboxes.insert({
      vmid: 1012,
      name: "s",
      profile: "p",
      state: "RUNNING",
      node: "pve",
      vm_created: true,
    });
    const session = h.store.sessions.insert({
      name: "s1",
      workspace_id: h.ws.id,
      profile: "yolo-workspace",
      current_vmid: 1012,
    });
    assert.ok(h.store.workspaceLeases.acquire(h.ws.id, `session:${session.id}`, TTL, h.clock.now()).ok);
    h.clock.ms += 3_000;
    assert.equal(h.keeper.pass().renewed.length, 1);
    h.store.sessions.update(session.id, { current_vmid: null });
    const report = h.keeper.pass();
    assert.deepEqual(report.released, [
      { workspace: "ws1", owner: `session:${session.id}`, reason: "session s1 is stopped" },
    ]);
    assert.equal(h.lease().owner, null);
    const released = h.events("workspace.lease.released");
    assert.equal(released.length, 1);
    assert.equal(released[0]!.payload.reason, "owner gone");
    assert.match(
      released[0]!.msg,
      /^lease of session:session_[0-9a-f]+ released: owner gone \(session s1 is stopped\)$/,
    );
  });

  test("leases of destroyed sandboxes and of sandboxes the workspace is not attached to are released", () => {
    const h = harness();
    attachSandbox(h, 1012);
    h.store.workspaces.detach(h.ws.id, 1012);
    assert.equal(leaseLiveness(h.store, h.store.workspaces.require(h.ws.id)).state, "gone");
    h.keeper.pass();
    assert.equal(h.lease().owner, null);

    h.store.sandboxes.insert({ vmid: 1013, name: "t", profile: "p", state: "DESTROYED", node: "pve" });
    assert.ok(h.store.workspaceLeases.acquire(h.ws.id, "sandbox:1013", TTL, h.clock.now()).ok);
    assert.deepEqual(
      h.keeper.pass().released.map((r) => r.reason),
      ["sandbox 1013 is DESTROYED"],
    );
  });

  test("an operation's temporary lease lives exactly as long as its op row", () => {
    const h = harness();
    const owner = tempLeaseOwner("snapshot", h.ws.id);
    const got = h.store.workspaceLeases.acquire(h.ws.id, owner, TEMP_LEASE_TTL_MS, h.clock.now());
    assert.ok(got.ok);
    const op = h.store.workspaceOps.begin({
      workspace_id: h.ws.id,
      kind: "snapshot",
      step: "begin",
      lease: got,
    });
    h.clock.ms += TEMP_LEASE_TTL_MS / 2 - 1;
    assert.deepEqual(h.keeper.pass().renewed, [], "more than half of 10 min left");
    h.clock.ms += 2;
    assert.equal(h.keeper.pass().renewed.length, 1);
    assert.equal(h.lease().expires, h.clock.ms + TEMP_LEASE_TTL_MS);
    h.store.workspaceOps.finish(op.id);
    assert.deepEqual(
      h.keeper.pass().released.map((r) => r.reason),
      ["no snapshot operation is in flight"],
    );
  });

  test("while an attach is between its lease and its commit, the sandbox lease is not taken away", () => {
    const h = harness();
    h.store.sandboxes.insert({
      vmid: 1012,
      name: "s",
      profile: "p",
      state: "RUNNING",
      node: "pve",
      vm_created: true,
    });
    assert.ok(h.store.workspaceLeases.acquire(h.ws.id, "sandbox:1012", TTL, h.clock.now()).ok);
    h.store.workspaceOps.begin({
      workspace_id: h.ws.id,
      kind: "attach",
      step: "begin",
      params: { vmid: 1012 },
    });
    assert.deepEqual(h.keeper.pass().released, []);
    assert.equal(h.lease().owner, "sandbox:1012");
  });

  test("a renew that changes no row is recorded as lost; owners agentlab does not make are left alone", () => {
    const h = harness();
    attachSandbox(h, 1012);
    h.clock.ms += 4_000;
    // Someone clears the lease between the keeper's read and its renew.
    const leases = h.store.workspaceLeases;
    const renew = leases.renew.bind(leases);
    leases.renew = (...args) => {
      leases.clear(h.ws.id);
      return renew(...args);
    };
    const report = h.keeper.pass();
    assert.deepEqual(report.lost, [{ workspace: "ws1", owner: "sandbox:1012" }]);
    const lost = h.events("workspace.lease.lost");
    assert.equal(lost.length, 1);
    assert.match(lost[0]!.msg, /cleared or taken over/);

    leases.renew = renew;
    h.store.db
      .prepare(
        "UPDATE workspaces SET lease_owner = 'backup-tool', lease_nonce = 'x', lease_expires_at = NULL",
      )
      .run();
    assert.deepEqual(h.keeper.pass(), { renewed: [], released: [], lost: [] });
    assert.equal(h.lease().owner, "backup-tool");
  });
});
