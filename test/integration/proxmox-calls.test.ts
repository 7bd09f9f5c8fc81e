import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { call } from "../../src/cli/client.js";
import { sandboxList, sandboxShow } from "../../src/protocol/sandbox.js";
import { REALISTIC_KNOBS, splitCalls as split } from "../helpers/proxmox-calls.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { callStats, resetCalls, setControl } from "../pvesim/harness.js";

/**
 * What the daemon costs Proxmox, counted by the simulator (call-log.ts): calls per `sandbox new` and
 * `destroy` at a realistic latency (50 ms per call, 1-2 s tasks), the pool's bound on calls in flight
 * under a burst of `sandbox show`, and database-only requests answered while Proxmox is stuck. Counts
 * and peaks, never durations, are asserted.
 */

/**
 * Issue 15 measured 27 calls per create at this latency (19 of them polls); the goal is 8. Calls other
 * than task-status polls are the same on every run: 8 per create and 5-6 per destroy on both backends,
 * plus up to BACKGROUND of the daemon's own periodic passes (maintenance and idle stop each read
 * /cluster/resources) when they fall inside the measurement. Polls depend on how long the simulator's tasks really take, so a loaded
 * machine makes more: they are bounded per task started, not by a total (a total failed in CI).
 */
const MAX_OTHER_CALLS: Record<"create" | "destroy", number> = { create: 8, destroy: 6 };
const BACKGROUND = 3;
/**
 * The api backend polls at 50 ms, then 100 ms doubling to 500 ms: a 2 s task slowed to 4 s is ~10. The
 * shell backend reads no status when pvesh's output proves the task ended OK: none here.
 */
const MAX_POLLS_PER_TASK = 12;
const MAX_READS = 3;

const REALISTIC = REALISTIC_KNOBS;

function describeCalls(dir: string): string {
  const stats = callStats(dir);
  return `${stats.total} calls: ${JSON.stringify(stats.byRoute)}`;
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`Proxmox calls per operation and in flight (${kind} backend)`, () => {
    let h: SimHost;
    const rpc = () => ({ socketPath: h.host.socketPath, timeoutMs: 120_000 });

    before(async () => {
      // The guest listener on: simulated guests phone home, as real ones do.
      h = await startSimHost(
        kind,
        `bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\nproxmox_max_reads: ${MAX_READS}\n`,
      );
      await setControl(h.sim.dir, REALISTIC);
    });
    after(async () => {
      await h.stop();
    });

    test("sandbox new and destroy stay within their call budgets at realistic latency", async (t) => {
      // One create and destroy first: start-up reads (node discovery, storage checks) are not counted,
      // and the daemon has seen how long each kind of task takes, as it has after its first sandbox.
      const warm = await h.json<{ vmid: number }>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(warm.code, 0, JSON.stringify(warm.body));
      const unwarm = await h.json(["sandbox", "destroy", String(warm.body.vmid)]);
      assert.equal(unwarm.code, 0, JSON.stringify(unwarm.body));
      resetCalls(h.sim.dir);
      const created = await h.json<{ vmid: number; state: string }>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, JSON.stringify(created.body));
      assert.equal(created.body.state, "RUNNING");
      const perCreate = callStats(h.sim.dir);
      t.diagnostic(`sandbox new: ${describeCalls(h.sim.dir)}`);
      resetCalls(h.sim.dir);
      const destroyed = await h.json(["sandbox", "destroy", String(created.body.vmid)]);
      assert.equal(destroyed.code, 0, JSON.stringify(destroyed.body));
      const perDestroy = callStats(h.sim.dir);
      t.diagnostic(`sandbox destroy: ${describeCalls(h.sim.dir)}`);
      for (const [what, stats] of [
        ["create", perCreate],
        ["destroy", perDestroy],
      ] as const) {
        const { other, polls, writes } = split(stats);
        assert.ok(
          other <= MAX_OTHER_CALLS[what] + BACKGROUND,
          `sandbox ${what} made ${other} Proxmox calls besides task polls, at most ${MAX_OTHER_CALLS[what]} (+${BACKGROUND} of a background pass) expected: ${JSON.stringify(stats.byRoute)}`,
        );
        assert.ok(
          polls <= writes * MAX_POLLS_PER_TASK,
          `sandbox ${what} polled tasks ${polls} times for ${writes} calls that start one: ${JSON.stringify(stats.byRoute)}`,
        );
        // pvesh ran each task in the foreground and said nothing on stderr: each ended OK, and no
        // status read is needed to know it (transport-shell.ts, endedOk).
        if (kind === "shell")
          assert.equal(polls, 0, `sandbox ${what} read task statuses: ${JSON.stringify(stats.byRoute)}`);
      }
      // The daemon's node is known after the first create: no create lists the nodes again.
      assert.equal(
        perCreate.byRoute["GET /nodes"] ?? 0,
        0,
        `GET /nodes per create: ${JSON.stringify(perCreate.byRoute)}`,
      );
      // The template is listed as one, so its config is not read: the clone's is, once.
      assert.equal(
        perCreate.byRoute["GET /nodes/{node}/qemu/{vmid}/config"],
        1,
        `config reads per create: ${JSON.stringify(perCreate.byRoute)}`,
      );
      // The guest phones home: the guest agent is never asked (the old code asked it until then).
      const agentCalls = Object.entries(perCreate.byRoute).filter(([route]) => route.includes("/agent/"));
      assert.deepEqual(agentCalls, [], "no guest-agent call for a guest that phones home");
    });

    test(`50 concurrent sandbox show never have more than proxmox_max_reads (${MAX_READS}) Proxmox reads in flight`, async () => {
      const made = await Promise.all(
        Array.from({ length: 4 }, () => h.json<{ vmid: number }>(["new", "--profile", "yolo-ephemeral"])),
      );
      for (const m of made) assert.equal(m.code, 0, JSON.stringify(m.body));
      const vmids = made.map((m) => m.body.vmid);
      // Slow calls, so that unbounded ones would pile up.
      await setControl(h.sim.dir, { call_latency_ms: 300 });
      try {
        resetCalls(h.sim.dir);
        const shown = await Promise.all(
          Array.from({ length: 50 }, (_, i) => call(rpc(), sandboxShow, { vmid: vmids[i % vmids.length]! })),
        );
        for (const [i, s] of shown.entries()) assert.equal(s.vmid, vmids[i % vmids.length]);
        const stats = callStats(h.sim.dir);
        assert.ok(stats.total >= 1, "the shows asked Proxmox");
        assert.ok(
          stats.maxInFlight <= MAX_READS,
          `${stats.maxInFlight} Proxmox calls were in flight at once, the read limit is ${MAX_READS}: ${JSON.stringify(stats.byRoute)}`,
        );
      } finally {
        await setControl(h.sim.dir, { call_latency_ms: REALISTIC.call_latency_ms });
      }
    });

    test("sandbox.list answers from the database while every Proxmox call is stuck", async () => {
      // A running sandbox to show (the tests before may have made one, or run alone, not).
      const made = await h.json<{ vmid: number }>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(made.code, 0, JSON.stringify(made.body));
      const vmid = made.body.vmid;
      const listed = await call(rpc(), sandboxList, {});
      await setControl(h.sim.dir, { hang_calls: "." });
      const shows: Array<Promise<unknown>> = [];
      let settled = 0;
      try {
        // Fill the read slots and the line behind them with calls that cannot finish.
        for (let i = 0; i < 10; i++) {
          const show = call(rpc(), sandboxShow, { vmid });
          show.then(
            () => settled++,
            () => settled++,
          );
          shows.push(show);
        }
        for (let i = 0; i < 200 && callStats(h.sim.dir).inFlight < MAX_READS; i++)
          await new Promise((resolve) => setTimeout(resolve, 50));
        assert.ok(callStats(h.sim.dir).inFlight >= 1, "the shows are stuck in Proxmox");
        const during = await call(rpc(), sandboxList, {});
        assert.deepEqual(
          during.sandboxes.map((s) => s.vmid),
          listed.sandboxes.map((s) => s.vmid),
        );
        assert.equal(settled, 0, "the list answered while the shows were still stuck");
      } finally {
        await setControl(h.sim.dir, { hang_calls: "" });
      }
      await Promise.allSettled(shows);
    });
  });
}
