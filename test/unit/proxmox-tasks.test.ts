import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { retryOnLock } from "../../src/daemon/proxmox/retry.js";
import { parseUpid, TaskTimeoutError, taskSucceeded, waitForTask } from "../../src/daemon/proxmox/tasks.js";
import { AgentlabError } from "../../src/protocol/errors.js";

/** A clock that only moves when the code under test sleeps. */
function fakeTime() {
  let now = 0;
  const sleeps: number[] = [];
  return {
    now: () => now,
    sleep: async (ms: number) => {
      sleeps.push(ms);
      now += ms;
    },
    sleeps,
  };
}

describe("UPIDs and tasks", () => {
  test("a UPID is parsed with its node, type, id and user; the trailing colon is required", () => {
    const upid = parseUpid("UPID:pve2:0035D677:03AB00C3:66DC5987:qmclone:9000:sandbox@pve!orch:");
    assert.equal(upid?.node, "pve2");
    assert.equal(upid?.type, "qmclone");
    assert.equal(upid?.id, "9000");
    assert.equal(upid?.user, "sandbox@pve!orch");
    assert.equal(upid?.startTime, 0x66dc5987);
    assert.equal(parseUpid("UPID:pve:0035D677:03AB00C3:66DC5987:qmclone:9000:root@pam"), undefined);
  });

  test("OK and WARNINGS are success, anything else is the error", () => {
    assert.ok(taskSucceeded({ status: "stopped", exitstatus: "OK" }));
    assert.ok(taskSucceeded({ status: "stopped", exitstatus: "WARNINGS: 3" }));
    assert.ok(!taskSucceeded({ status: "stopped", exitstatus: "VM 101 already running" }));
  });

  test("waiting backs off 0.5 s doubling to 5 s", async () => {
    const time = fakeTime();
    let polls = 0;
    const status = await waitForTask(
      async () => (++polls < 8 ? { status: "running" } : { status: "stopped", exitstatus: "OK" }),
      "U",
      {
        ...time,
        timeoutMs: 60_000,
      },
    );
    assert.equal(status.exitstatus, "OK");
    assert.deepEqual(time.sleeps, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
  });

  test("waiting gives up at the bound", async () => {
    const time = fakeTime();
    await assert.rejects(
      waitForTask(async () => ({ status: "running" }), "U", { ...time, timeoutMs: 3000 }),
      TaskTimeoutError,
    );
    assert.equal(time.now(), 3000);
  });
});

describe("lock retry", () => {
  const locked = () => new AgentlabError("PROXMOX_LOCKED", "VM is locked (clone)");

  test("retries lock errors with jittered growing delays until success", async () => {
    const time = fakeTime();
    let attempts = 0;
    const result = await retryOnLock(
      async () => {
        if (++attempts < 4) throw locked();
        return "done";
      },
      { ...time, budgetMs: 60_000, baseDelayMs: 250, maxDelayMs: 4000, random: () => 1 },
    );
    assert.equal(result, "done");
    assert.deepEqual(time.sleeps, [250, 500, 1000]);
  });

  test("other errors are not retried", async () => {
    const time = fakeTime();
    let attempts = 0;
    await assert.rejects(
      retryOnLock(
        async () => {
          attempts++;
          throw new AgentlabError("PROXMOX_ERROR", "boom");
        },
        { ...time, budgetMs: 60_000, baseDelayMs: 250, maxDelayMs: 4000, random: () => 1 },
      ),
      /boom/,
    );
    assert.equal(attempts, 1);
  });

  test("the lock error is reported when the budget runs out", async () => {
    const time = fakeTime();
    await assert.rejects(
      retryOnLock(
        async () => {
          throw locked();
        },
        { ...time, budgetMs: 2000, baseDelayMs: 250, maxDelayMs: 4000, random: () => 1 },
      ),
      (error: AgentlabError) => error.code === "PROXMOX_LOCKED",
    );
    assert.ok(time.now() <= 2000);
  });
});
