import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { retryOnLock } from "../../src/daemon/proxmox/retry.js";
import {
  parseUpid,
  TaskDurations,
  TaskTimeoutError,
  taskSucceeded,
  waitForTask,
} from "../../src/daemon/proxmox/tasks.js";
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

  test("waiting backs off from 100 ms doubling to 500 ms; a started task is first asked after 50 ms", async () => {
    const time = fakeTime();
    let polls = 0;
    const status = await waitForTask(
      async () => (++polls < 8 ? { status: "running" } : { status: "stopped", exitstatus: "OK" }),
      "U",
      { ...time, timeoutMs: 60_000, firstPollAfterMs: 50 },
    );
    assert.equal(status.exitstatus, "OK");
    assert.deepEqual(time.sleeps, [50, 100, 200, 400, 500, 500, 500, 500]);
  });

  test("a 2 s task is noticed within 500 ms of its end, in at most 7 polls (it was 3.5 s and 4 polls)", async () => {
    for (const endsAt of [2000, 1000, 300, 10_000]) {
      const time = fakeTime();
      let polls = 0;
      await waitForTask(
        async () => {
          polls++;
          return time.now() >= endsAt ? { status: "stopped", exitstatus: "OK" } : { status: "running" };
        },
        "U",
        { ...time, timeoutMs: 60_000, firstPollAfterMs: 50 },
      );
      const late = time.now() - endsAt;
      assert.ok(late >= 0 && late <= 500, `a task ending at ${endsAt} ms noticed ${late} ms late`);
      if (endsAt === 2000) assert.ok(polls <= 7, `${polls} polls for a 2 s task`);
    }
  });

  test("a task known to be over (pvesh ran it) is asked at once", async () => {
    const time = fakeTime();
    await waitForTask(async () => ({ status: "stopped", exitstatus: "OK" }), "U", {
      ...time,
      timeoutMs: 1000,
    });
    assert.deepEqual(time.sleeps, []);
  });

  test("a task of a kind seen before is first asked about when the last one ended: one or two polls, noticed within 100 ms", async () => {
    const durations = new TaskDurations();
    assert.equal(durations.schedule("qmclone:9000:0").firstPollAfterMs, 50, "an unknown kind: after 50 ms");
    const endsAt = 2000;
    const noticed: number[] = [];
    const polls: number[] = [];
    for (let run = 0; run < 6; run++) {
      const time = fakeTime();
      let count = 0;
      await waitForTask(
        async () => {
          count++;
          return time.now() >= endsAt ? { status: "stopped", exitstatus: "OK" } : { status: "running" };
        },
        "U",
        {
          ...time,
          timeoutMs: 60_000,
          ...durations.schedule("qmclone:9000:0"),
          onStopped: (trace) => durations.learn("qmclone:9000:0", trace),
        },
      );
      noticed.push(time.now() - endsAt);
      polls.push(count);
    }
    // The first run knows nothing (7 polls); from the second on the estimate holds.
    assert.equal(polls[0], 7);
    for (const [i, n] of polls.slice(1).entries()) assert.ok(n <= 2, `run ${i + 1}: ${n} polls`);
    for (const [i, late] of noticed.slice(1).entries())
      assert.ok(late <= 100, `run ${i + 1}: ${late} ms late`);
    // Mostly one poll: the first poll is aimed at where the last task was seen over.
    assert.ok(polls.slice(1).filter((n) => n === 1).length >= 3, `polls per run: ${polls.join(" ")}`);
    // Other kinds are not affected, and no estimate makes the first poll later than 3 s.
    assert.equal(durations.schedule("qmstart:").firstPollAfterMs, 50);
    durations.learn("vzdump:", { lastRunningMs: 60_000, stoppedMs: 60_500, polls: 3 });
    assert.equal(durations.schedule("vzdump:").firstPollAfterMs, 3000);
  });

  test("a kind whose tasks are over by the time their call is answered is asked at once, with no wait", async () => {
    const durations = new TaskDurations();
    const waits: number[][] = [];
    for (let run = 0; run < 3; run++) {
      const time = fakeTime();
      await waitForTask(async () => ({ status: "stopped", exitstatus: "OK" }), "U", {
        ...time,
        timeoutMs: 60_000,
        ...durations.schedule("resize:"),
        onStopped: (trace) => durations.learn("resize:", trace),
      });
      waits.push(time.sleeps);
    }
    assert.deepEqual(waits, [[50], [], []], "50 ms for the unknown kind, then no wait at all");
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
