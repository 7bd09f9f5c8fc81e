import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import type { HttpMethod, Params, PveTransport } from "../../src/daemon/proxmox/transport.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const log = pino({ level: "silent" });
const UPID = "UPID:pve:0000A1B2:00C0FFEE:6B15ED87:qmclone:9000:agentlab@pve!daemon:";
const VM = { vmid: 9000, node: "pve" };

interface Sent {
  method: HttpMethod;
  path: string;
  params?: Params;
  taskTimeoutMs?: number;
}

/**
 * An API-like transport: worker calls answer with UPID at once; the task's status is whatever
 * `status(sent)` says, given what was sent so far (so a DELETE can stop it).
 */
function fakeApi(
  status: (sent: Sent[]) => { status: string; exitstatus?: string },
  kind: "api" | "shell" = "api",
) {
  const sent: Sent[] = [];
  const transport: PveTransport = {
    kind,
    calls: { count: 0 },
    async request(method, apiPath, params, signal, taskTimeoutMs) {
      const path = String(apiPath);
      sent.push({
        method,
        path,
        ...(params ? { params } : {}),
        ...(taskTimeoutMs !== undefined ? { taskTimeoutMs } : {}),
      });
      if (method === "GET" && path.endsWith("/status")) {
        signal?.throwIfAborted();
        return status(sent);
      }
      if (method === "DELETE" && path.includes("/tasks/")) return null;
      if (method === "PUT" && path.endsWith("/config")) return null;
      return UPID;
    },
  };
  return { transport, sent };
}

/** A clock that moves only when the backend sleeps. */
function fakeTime() {
  let now = 0;
  return {
    now: () => now,
    sleep: async (ms: number, signal?: AbortSignal) => {
      signal?.throwIfAborted();
      now += ms;
    },
  };
}

const stopped = (sent: Sent[]) => sent.some((s) => s.method === "DELETE");
const deletes = (sent: Sent[]) => sent.filter((s) => s.method === "DELETE").map((s) => s.path);

async function rejection(promise: Promise<unknown>): Promise<AgentlabError> {
  return promise.then(
    () => assert.fail("expected a failure"),
    (error: unknown) => {
      assert.ok(error instanceof AgentlabError, String(error));
      return error;
    },
  );
}

describe("task limits in the backend (fake API)", () => {
  test("a task over proxmox_task_timeout is stopped with DELETE and waited for; the error says how it ended", async () => {
    const { transport, sent } = fakeApi((s) =>
      stopped(s)
        ? { status: "stopped", exitstatus: "clone failed: interrupted by signal" }
        : { status: "running" },
    );
    const backend = new PveBackend({ transport, log, timeoutMs: 2000, taskTimeoutMs: 60_000, ...fakeTime() });
    const error = await rejection(backend.clone(VM, 101, { name: "x", full: true }));
    assert.equal(error.code, "PROXMOX_TIMEOUT");
    assert.match(
      error.message,
      /^clone 9000 -> 101: the qmclone task ran longer than 1m \(proxmox_task_timeout\); it was stopped: clone failed: interrupted by signal$/,
    );
    assert.match(error.hint ?? "", /raise proxmox_task_timeout/);
    assert.deepEqual(deletes(sent), [`/nodes/pve/tasks/${UPID}`]);
    assert.equal(sent.at(-1)?.method, "GET", "the task's end is read after the stop");
  });

  test("a task that runs longer than the per-call timeout but within the task limit succeeds", async () => {
    let polls = 0;
    const { transport, sent } = fakeApi(() =>
      // Nine polls running: 50 ms, then 100 ms doubling to 500 ms between them, so past 2 s.
      ++polls < 10 ? { status: "running" } : { status: "stopped", exitstatus: "OK" },
    );
    const time = fakeTime();
    const backend = new PveBackend({ transport, log, timeoutMs: 2000, taskTimeoutMs: 60_000, ...time });
    await backend.clone(VM, 101, { name: "x", full: true });
    assert.ok(time.now() > 2000, "the wait outlasted the per-call timeout");
    assert.deepEqual(deletes(sent), []);
  });

  test("a task that finished just as it was given up on counts as done: nothing is stopped", async () => {
    let polls = 0;
    // Running for every poll of the wait (at 50, 150, 350, 750 ms, then every 500 ms up to the 3 s
    // limit: nine), stopped OK at the look before the stop.
    const { transport, sent } = fakeApi(() =>
      ++polls <= 9 ? { status: "running" } : { status: "stopped", exitstatus: "OK" },
    );
    const backend = new PveBackend({ transport, log, timeoutMs: 1000, taskTimeoutMs: 3000, ...fakeTime() });
    await backend.clone(VM, 101, { name: "x", full: true });
    assert.deepEqual(deletes(sent), []);
  });

  test("a task still running after the stop grace is reported as such, with the commands to check and stop it", async () => {
    const { transport } = fakeApi(() => ({ status: "running" }));
    const backend = new PveBackend({
      transport,
      log,
      timeoutMs: 1000,
      taskTimeoutMs: 5000,
      taskStopGraceMs: 10_000,
      ...fakeTime(),
    });
    const error = await rejection(backend.clone(VM, 101, { name: "x", full: true }));
    assert.equal(error.code, "PROXMOX_TIMEOUT");
    assert.match(error.message, /it is still running after it was told to stop$/);
    assert.match(error.hint ?? "", /pvesh delete \/nodes\/pve\/tasks\/UPID:pve:/);
  });

  test("a cancelled operation stops its task before the error returns", async () => {
    const controller = new AbortController();
    let polls = 0;
    const { transport, sent } = fakeApi((s) => {
      if (stopped(s)) return { status: "stopped", exitstatus: "clone failed: interrupted by signal" };
      if (++polls === 2) controller.abort(new AgentlabError("CANCELLED", "cancelled by the client"));
      return { status: "running" };
    });
    const backend = new PveBackend({ transport, log, timeoutMs: 1000, taskTimeoutMs: 60_000, ...fakeTime() });
    const error = await rejection(
      backend.clone(VM, 101, { name: "x", full: true }, { signal: controller.signal }),
    );
    assert.equal(error.code, "CANCELLED");
    assert.match(
      error.message,
      /cancelled, and the qmclone task with it; it was stopped: clone failed: interrupted by signal/,
    );
    assert.equal(deletes(sent).length, 1);
  });

  test("worker calls carry the task limit to the transport (a shutdown its own), synchronous config changes none", async () => {
    const { transport, sent } = fakeApi(() => ({ status: "stopped", exitstatus: "OK" }), "shell");
    const backend = new PveBackend({
      transport,
      log,
      timeoutMs: 1000,
      taskTimeoutMs: 1_800_000,
      ...fakeTime(),
    });
    await backend.clone(VM, 101, { name: "x", full: true });
    await backend.shutdown(VM, { timeoutSeconds: 120, forceStop: true });
    await backend.shutdown(VM);
    await backend.setConfig(VM, { cores: 2 });
    const limits = sent
      .filter((s) => s.method !== "GET")
      .map((s) => [s.method, s.path.replace("/nodes/pve/qemu/9000", ""), s.taskTimeoutMs]);
    assert.deepEqual(limits, [
      ["POST", "/clone", 1_800_000],
      ["POST", "/status/shutdown", 180_000],
      ["POST", "/status/shutdown", 120_000],
      ["PUT", "/config", undefined],
    ]);
  });
});
