import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ProbeCache } from "../../src/daemon/proxmox/probe-cache.js";

/** A probe whose runs stay open until the test ends them, counting how many were started. */
function heldProbe<T>() {
  const runs: Array<{ answer: (value: T) => void; fail: (error: unknown) => void }> = [];
  const probe = () =>
    new Promise<T>((answer, fail) => {
      runs.push({ answer, fail });
    });
  return { runs, probe };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

describe("ProbeCache", () => {
  test("200 concurrent callers cause one probe and all get its answer and its time", async () => {
    let now = 1_000;
    const cache = new ProbeCache<string>({ ttlMs: 1_500, now: () => now });
    const { runs, probe } = heldProbe<string>();
    const answers = Array.from({ length: 200 }, () => cache.get("status", probe));
    await turn();
    assert.equal(runs.length, 1, "one probe for 200 callers");
    now = 1_200;
    runs[0]!.answer("up");
    for (const answer of await Promise.all(answers))
      assert.deepEqual(answer, { value: "up", checkedAt: 1_000 });
    assert.equal(cache.probes, 1);
    assert.equal(cache.saved.joined, 199);
  });

  test("within the TTL the last answer is given; once older, the next caller probes again and gets the new one", async () => {
    let now = 0;
    const cache = new ProbeCache<number>({ ttlMs: 1_500, staleMs: 5_000, now: () => now });
    let runs = 0;
    const probe = async () => ++runs;
    assert.deepEqual(await cache.get("k", probe), { value: 1, checkedAt: 0 });
    now = 1_499;
    assert.deepEqual(await cache.get("k", probe), { value: 1, checkedAt: 0 }, "still fresh");
    assert.equal(runs, 1);
    now = 1_500;
    assert.deepEqual(await cache.get("k", probe), { value: 2, checkedAt: 1_500 }, "repeated after the TTL");
    assert.equal(runs, 2);
  });

  test("while a refresh runs, other callers get the last answer (up to staleMs), then wait for the probe", async () => {
    let now = 0;
    const cache = new ProbeCache<string>({ ttlMs: 1_000, staleMs: 5_000, now: () => now });
    const { runs, probe } = heldProbe<string>();
    const first = cache.get("k", probe);
    await turn();
    runs[0]!.answer("old");
    await first;
    now = 2_000;
    const starter = cache.get("k", probe);
    await turn();
    assert.equal(runs.length, 2, "the TTL passed: a new probe");
    assert.deepEqual(await cache.get("k", probe), { value: "old", checkedAt: 0 }, "the crowd is not held up");
    now = 5_000;
    const late = cache.get("k", probe);
    await turn();
    assert.equal(runs.length, 2, "still one probe in flight");
    runs[1]!.answer("new");
    assert.deepEqual(
      await starter,
      { value: "new", checkedAt: 2_000 },
      "the caller who started it waits for it",
    );
    assert.deepEqual(await late, { value: "new", checkedAt: 2_000 }, "past staleMs a caller waits too");
  });

  test("a failed probe is not kept: its callers get the error, the next caller probes again", async () => {
    const now = 0;
    const cache = new ProbeCache<string>({ ttlMs: 1_500, staleMs: 5_000, now: () => now });
    const { runs, probe } = heldProbe<string>();
    const a = cache.get("k", probe);
    const b = cache.get("k", probe);
    await turn();
    runs[0]!.fail(new Error("Proxmox did not answer"));
    await assert.rejects(a, /did not answer/);
    await assert.rejects(b, /did not answer/);
    const c = cache.get("k", probe);
    await turn();
    assert.equal(runs.length, 2, "the failure was not cached: a new probe at once");
    runs[1]!.answer("up");
    assert.equal((await c).value, "up");
  });

  test("a failure drops the last success: nobody is told `up` from before it", async () => {
    let now = 0;
    const cache = new ProbeCache<string>({ ttlMs: 1_000, staleMs: 10_000, now: () => now });
    const { runs, probe } = heldProbe<string>();
    const first = cache.get("k", probe);
    await turn();
    runs[0]!.answer("up");
    await first;
    now = 2_000;
    const refresh = cache.get("k", probe);
    await turn();
    runs[1]!.fail(new Error("down"));
    await assert.rejects(refresh, /down/);
    const after = cache.get("k", probe);
    await turn();
    assert.equal(runs.length, 3, "a new probe, not the old success");
    runs[2]!.fail(new Error("still down"));
    await assert.rejects(after, /still down/);
  });

  test("a change the daemon made (generation) makes the kept answer and the probe in flight stale", async () => {
    let generation = 0;
    const cache = new ProbeCache<string>({ ttlMs: 60_000, staleMs: 60_000, generation: () => generation });
    const { runs, probe } = heldProbe<string>();
    const before = cache.get("vm", probe);
    await turn();
    generation++;
    const after = cache.get("vm", probe);
    await turn();
    assert.equal(runs.length, 2, "a probe begun before the change is not joined after it");
    runs[0]!.answer("running");
    runs[1]!.answer("stopped");
    assert.equal((await before).value, "running");
    assert.equal((await after).value, "stopped");
    assert.equal((await cache.get("vm", probe)).value, "stopped", "the newer answer is kept, not the older");
    generation++;
    const again = cache.get("vm", probe);
    await turn();
    assert.equal(runs.length, 3, "kept answers from before a change are not given out");
    runs[2]!.answer("running");
    assert.equal((await again).value, "running");
  });

  test("keys are separate and bounded", async () => {
    const cache = new ProbeCache<string>({ ttlMs: 60_000, maxKeys: 2 });
    let runs = 0;
    const probe = (v: string) => async () => {
      runs++;
      return v;
    };
    assert.equal((await cache.get("a", probe("a"))).value, "a");
    assert.equal((await cache.get("b", probe("b"))).value, "b");
    assert.equal((await cache.get("a", probe("x"))).value, "a");
    assert.equal(runs, 2);
    await cache.get("c", probe("c"));
    assert.equal((await cache.get("b", probe("b2"))).value, "b", "b is still kept");
    assert.equal(
      (await cache.get("a", probe("a2"))).value,
      "a2",
      "the least recently probed key was dropped",
    );
  });
});
