import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CallPool, PooledTransport } from "../../src/daemon/proxmox/call-pool.js";
import { SharedReadsTransport } from "../../src/daemon/proxmox/shared-reads.js";
import {
  type ApiPath,
  apiPath,
  type HttpMethod,
  type PveTransport,
} from "../../src/daemon/proxmox/transport.js";
import { AgentlabError } from "../../src/protocol/errors.js";

/** A transport whose calls stay open until the test answers them, recording what was sent. */
class HeldTransport implements PveTransport {
  readonly kind = "api" as const;
  readonly calls = { count: 0 };
  readonly open: Array<{
    method: HttpMethod;
    path: string;
    signal: AbortSignal | undefined;
    answer: (data: unknown) => void;
    fail: (error: unknown) => void;
  }> = [];
  peak = 0;
  private running = 0;

  request(method: HttpMethod, path: ApiPath, _params?: unknown, signal?: AbortSignal): Promise<unknown> {
    this.calls.count++;
    this.running++;
    this.peak = Math.max(this.peak, this.running);
    return new Promise((resolve, reject) => {
      const done = () => {
        this.running--;
        this.open.splice(this.open.indexOf(entry), 1);
      };
      const entry = {
        method,
        path: String(path),
        signal,
        answer: (data: unknown) => {
          done();
          resolve(data);
        },
        fail: (error: unknown) => {
          done();
          reject(error);
        },
      };
      this.open.push(entry);
      signal?.addEventListener("abort", () => entry.fail(new Error("aborted")), { once: true });
    });
  }
}

const tick = () => new Promise((resolve) => setImmediate(resolve));
const resources = apiPath`/cluster/resources`;

describe("the Proxmox call pool", () => {
  test("no more than the limit per kind run at once; the rest wait first come, first served", async () => {
    const inner = new HeldTransport();
    const pooled = new PooledTransport(inner, new CallPool({ read: 3, write: 1 }));
    const order: number[] = [];
    const reads = Array.from({ length: 10 }, (_, i) =>
      pooled.request("GET", apiPath`/nodes/pve/qemu/${100 + i}/status/current`).then(() => order.push(i)),
    );
    const write = pooled.request("POST", apiPath`/nodes/pve/qemu/200/status/start`);
    await tick();
    // Reads and writes have their own limits: the write does not wait behind the reads.
    assert.equal(inner.open.length, 4);
    assert.equal(inner.open.filter((c) => c.method === "GET").length, 3);
    while (inner.open.some((c) => c.method === "GET")) {
      inner.open.find((c) => c.method === "GET")!.answer({});
      await tick();
    }
    await Promise.all(reads);
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(inner.peak, 4);
    inner.open[0]!.answer("UPID");
    await write;
  });

  test("a call cancelled while it waits leaves the queue and is never sent", async () => {
    const inner = new HeldTransport();
    const pooled = new PooledTransport(inner, new CallPool({ read: 1, write: 1 }));
    const first = pooled.request("GET", apiPath`/version`);
    const controller = new AbortController();
    const waiting = pooled.request("GET", apiPath`/nodes`, undefined, controller.signal);
    const third = pooled.request("GET", apiPath`/cluster/status`);
    await tick();
    controller.abort(new Error("client went away"));
    await assert.rejects(
      waiting,
      (error: unknown) => error instanceof AgentlabError && error.code === "CANCELLED",
    );
    inner.open[0]!.answer({});
    await first;
    await tick();
    assert.deepEqual(
      inner.open.map((c) => c.path),
      ["/cluster/status"],
    );
    inner.open[0]!.answer({});
    await third;
    assert.equal(inner.calls.count, 2, "the cancelled call never reached Proxmox");
  });

  test("limits must be positive integers", () => {
    assert.throws(() => new CallPool({ read: 0, write: 4 }), /read limit must be a positive integer/);
  });
});

describe("shared reads", () => {
  test("concurrent reads of the cluster list make one call, and everyone gets its answer", async () => {
    const inner = new HeldTransport();
    const shared = new SharedReadsTransport(inner, { listTtlMs: 0 });
    const reads = Array.from({ length: 20 }, () => shared.request("GET", resources, { type: "vm" }));
    await tick();
    assert.equal(inner.calls.count, 1);
    inner.open[0]!.answer([{ vmid: 101 }]);
    for (const answer of await Promise.all(reads)) assert.deepEqual(answer, [{ vmid: 101 }]);
    // Different parameters are a different read.
    const other = shared.request("GET", resources, { type: "storage" });
    const again = shared.request("GET", resources, { type: "vm" });
    await tick();
    assert.equal(inner.calls.count, 3, "no cache with a TTL of 0, no sharing across parameters");
    for (const call of [...inner.open]) call.answer([]);
    await Promise.all([other, again]);
  });

  test("the cluster list is kept for the TTL; a write drops it, and a read begun before a write is not joined after it", async () => {
    let now = 0;
    const inner = new HeldTransport();
    const shared = new SharedReadsTransport(inner, { listTtlMs: 1000, now: () => now });
    const first = shared.request("GET", resources, { type: "vm" });
    await tick();
    inner.open[0]!.answer(["before"]);
    await first;
    now = 900;
    assert.deepEqual(await shared.request("GET", resources, { type: "vm" }), ["before"]);
    assert.equal(inner.calls.count, 1, "served from the cache within the TTL");
    // Other paths are only shared while in flight, never cached.
    const status = shared.request("GET", apiPath`/nodes/pve/qemu/101/status/current`);
    await tick();
    inner.open[0]!.answer({ status: "running" });
    await status;
    const statusAgain = shared.request("GET", apiPath`/nodes/pve/qemu/101/status/current`);
    await tick();
    assert.equal(inner.calls.count, 3);
    inner.open[0]!.answer({ status: "running" });
    await statusAgain;

    // A read in flight while a write is sent: callers after the write get a fresh read.
    now = 5000;
    const stale = shared.request("GET", resources, { type: "vm" });
    await tick();
    const write = shared.request("POST", apiPath`/nodes/pve/qemu/9000/clone`, { newid: 101 });
    await tick();
    const fresh = shared.request("GET", resources, { type: "vm" });
    await tick();
    assert.equal(inner.open.filter((c) => c.path === "/cluster/resources").length, 2);
    inner.open.find((c) => c.method === "POST")!.answer("UPID");
    await write;
    const [old, young] = inner.open.filter((c) => c.path === "/cluster/resources");
    old!.answer(["before"]);
    young!.answer(["after"]);
    assert.deepEqual(await stale, ["before"]);
    assert.deepEqual(await fresh, ["after"]);
    // The pre-write answer was not cached; the post-write one was dropped by the write's end.
    const next = shared.request("GET", resources, { type: "vm" });
    await tick();
    assert.equal(inner.open.length, 1);
    inner.open[0]!.answer(["latest"]);
    assert.deepEqual(await next, ["latest"]);
    // A task's end (the backend says so) drops the cache too.
    shared.invalidate();
    const afterTask = shared.request("GET", resources, { type: "vm" });
    await tick();
    assert.equal(inner.open.length, 1);
    inner.open[0]!.answer(["after the task"]);
    await afterTask;
  });

  test("a caller who gives up stops waiting; the call is cancelled only when nobody waits any more", async () => {
    const inner = new HeldTransport();
    const shared = new SharedReadsTransport(inner, { listTtlMs: 0 });
    const a = new AbortController();
    const b = new AbortController();
    const first = shared.request("GET", resources, { type: "vm" }, a.signal);
    const second = shared.request("GET", resources, { type: "vm" }, b.signal);
    await tick();
    const call = inner.open[0]!;
    a.abort(new Error("gone"));
    await assert.rejects(
      first,
      (error: unknown) => error instanceof AgentlabError && error.code === "CANCELLED",
    );
    assert.equal(call.signal?.aborted, false, "the other caller still waits");
    b.abort(new Error("gone too"));
    await assert.rejects(
      second,
      (error: unknown) => error instanceof AgentlabError && error.code === "CANCELLED",
    );
    assert.equal(call.signal?.aborted, true);
    // The cancelled call is not joined by a later caller.
    const later = shared.request("GET", resources, { type: "vm" });
    await tick();
    assert.equal(inner.calls.count, 2);
    inner.open[0]!.answer([]);
    await later;
  });
});
