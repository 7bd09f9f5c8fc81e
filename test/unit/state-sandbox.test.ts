import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { canTransition, SANDBOX_TRANSITIONS, transitionSandbox } from "../../src/daemon/state/sandbox.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { SANDBOX_STATES, type SandboxState } from "../../src/daemon/store/sandboxes.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

describe("sandbox state machine", () => {
  let dir: string;
  let store: Store;
  let nextVmid = 1000;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-state-"));
    store = openStore(join(dir, "agentlab.db"));
  });
  after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const sandboxIn = (state: SandboxState) =>
    store.sandboxes.insert({ vmid: nextVmid++, name: "s", profile: "p", state }).vmid;

  test("every state is in the table and DESTROYED is terminal", () => {
    assert.deepEqual(Object.keys(SANDBOX_TRANSITIONS).sort(), [...SANDBOX_STATES].sort());
    assert.deepEqual(SANDBOX_TRANSITIONS.DESTROYED, []);
    for (const from of SANDBOX_STATES)
      if (from !== "DESTROYED") assert.ok(canTransition(from, "DESTROYED"), from);
  });

  for (const from of SANDBOX_STATES) {
    test(`from ${from}: allowed moves succeed with an event, others fail with the spec's wording`, () => {
      for (const to of SANDBOX_STATES) {
        if (to === from) continue;
        const vmid = sandboxIn(from);
        if (canTransition(from, to)) {
          const moved = transitionSandbox(store, vmid, to, { reason: "why" });
          assert.equal(moved.state, to);
          const events = store.events.listForSandbox(vmid);
          assert.equal(events.length, 1);
          assert.equal(events[0]?.kind, "sandbox.state");
          assert.equal(events[0]?.msg, `${from} -> ${to}: why`);
        } else {
          assert.throws(
            () => transitionSandbox(store, vmid, to),
            (error: AgentlabError) =>
              error.code === "INVALID_TRANSITION" &&
              error.message === `invalid sandbox state transition: ${from} -> ${to}`,
          );
          assert.equal(store.sandboxes.get(vmid)?.state, from, "a refused move changes nothing");
          assert.equal(store.events.listForSandbox(vmid).length, 0, "a refused move records no event");
        }
      }
    });
  }

  test("moving to the current state is a no-op success without an event", () => {
    const vmid = sandboxIn("RUNNING");
    assert.equal(transitionSandbox(store, vmid, "RUNNING").state, "RUNNING");
    assert.equal(store.events.listForSandbox(vmid).length, 0);
  });

  test("FAILED and TIMEOUT store the reason; a patch lands in the same transaction", () => {
    const vmid = sandboxIn("BOOTING");
    const failed = transitionSandbox(store, vmid, "FAILED", {
      reason: "guest never answered",
      patch: { ip: "10.77.0.9" },
    });
    assert.equal(failed.failure_reason, "guest never answered");
    assert.equal(failed.ip, "10.77.0.9");
  });

  test("booting again clears a stale failure reason; the event history keeps it", () => {
    const vmid = sandboxIn("RUNNING");
    transitionSandbox(store, vmid, "FAILED", { reason: "guest crashed" });
    transitionSandbox(store, vmid, "STOPPED");
    assert.equal(store.sandboxes.get(vmid)?.failure_reason, "guest crashed", "still shown while not running");
    const booting = transitionSandbox(store, vmid, "BOOTING");
    assert.equal(booting.failure_reason, null);
    assert.ok(store.events.listForSandbox(vmid).some((e) => e.msg?.includes("guest crashed")));
  });

  test("an unknown sandbox is SANDBOX_NOT_FOUND", () => {
    assert.throws(
      () => transitionSandbox(store, 99999, "READY"),
      (e: AgentlabError) => e.code === "SANDBOX_NOT_FOUND",
    );
  });

  test("the row update is compare-and-set on the expected state", () => {
    const vmid = sandboxIn("READY");
    assert.equal(store.sandboxes.update(vmid, { state: "RUNNING" }, "BOOTING"), undefined);
    assert.equal(store.sandboxes.get(vmid)?.state, "READY");
    assert.equal(store.sandboxes.update(vmid, { state: "RUNNING" }, "READY")?.state, "RUNNING");
    assert.equal(store.sandboxes.update(vmid, { tags: ["a", "b"], keepalive: true })?.tags.join(), "a,b");
  });

  test("maxVmid remembers the highest VMID ever used", () => {
    assert.equal(store.sandboxes.maxVmid(), nextVmid - 1);
  });
});
