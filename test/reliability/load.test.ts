/**
 * Load: 200 clients on the daemon's real Unix socket for 60 s, each with its own connection, mixing
 * database-only reads (sandbox.list), daemon.status (its Proxmox probe is shared by every caller while it
 * runs and for PROBE_TTL_MS after it), Proxmox-touching reads (sandbox.show), lease
 * renewals, and five clients that create and destroy sandboxes the whole time; a real daemon on the
 * simulator (api backend, 20 ms per call, short tasks).
 *
 * Asserted: no answer is an error other than the documented refusals a racing client can get (the
 * sandbox it picked was destroyed meanwhile, or its lease is not renewable in that state); no
 * `database is locked` (or SQLITE_BUSY) in any answer or in the daemon's log; the daemon answers
 * afterwards; every sandbox created ends RUNNING or DESTROYED and no VM is left without a row.
 * Figures (requests/s, read latencies, create time under load against unloaded) go to the test's
 * diagnostic output and docs/reliability.md; no duration is asserted (speed goals live in bench/).
 */
import assert from "node:assert/strict";
import { availableParallelism, loadavg } from "node:os";
import { test } from "node:test";
import { PROBE_TTL_MS } from "../../src/daemon/services/probes.js";
import { type RawAnswer, RawRpcClient } from "../helpers/raw-rpc.js";
import { startSimHost } from "../helpers/simhost.js";
import { callStats, resetCalls } from "../pvesim/call-log.js";
import { inspect } from "../pvesim/harness.js";

const CLIENTS = 200;
const WRITERS = 5;
const DURATION_MS = 60_000;
/** Refusals a client racing others is documented to get (docs/rpc.md). */
const DOCUMENTED = new Set(["SANDBOX_NOT_FOUND", "LEASE_NOT_RENEWABLE", "INVALID_STATE"]);
const LOCKED = /database is locked|SQLITE_BUSY/i;

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0
    ? Number.NaN
    : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Sample {
  method: string;
  ms: number;
  answer: RawAnswer;
}

test("200 clients mixing reads and writes for 60 s: no errors, no `database is locked`", async (t) => {
  const h = await startSimHost("api", "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n", {
    knobs: {
      call_latency_ms: 20,
      clone_ms: 300,
      start_ms: 200,
      stop_ms: 100,
      task_ms: 100,
      agent_ready_ms: 300,
    },
  });
  try {
    const samples: Sample[] = [];
    const created: number[] = [];
    const live = new Set<number>();
    const timed = async (client: RawRpcClient, method: string, params: unknown): Promise<RawAnswer> => {
      const started = performance.now();
      const answer = await client.request(method, params);
      samples.push({ method, ms: performance.now() - started, answer });
      return answer;
    };
    const create = async (client: RawRpcClient): Promise<number | undefined> => {
      const answer = await timed(client, "sandbox.create", { profile: "yolo-ephemeral" });
      const vmid = (answer.result as { vmid?: number } | undefined)?.vmid;
      if (vmid !== undefined) {
        created.push(vmid);
        live.add(vmid);
      }
      return vmid;
    };

    // Unloaded: three creates one after another, and a few sandboxes for the readers to look at.
    const seeder = await RawRpcClient.open(h.host.socketPath);
    const unloaded: number[] = [];
    for (let i = 0; i < 3; i++) {
      const started = performance.now();
      const vmid = await create(seeder);
      assert.ok(vmid !== undefined, `unloaded create ${i}: ${JSON.stringify(samples.at(-1)?.answer)}`);
      unloaded.push(performance.now() - started);
    }
    seeder.destroy();
    samples.length = 0;

    const clients = await Promise.all(
      Array.from({ length: CLIENTS }, () => RawRpcClient.open(h.host.socketPath)),
    );
    const pick = () => {
      const vmids = [...live];
      return vmids[Math.floor(Math.random() * vmids.length)] ?? created[0]!;
    };
    resetCalls(h.sim.dir);
    const deadline = Date.now() + DURATION_MS;
    const loadStarted = performance.now();
    await Promise.all(
      clients.map(async (client, i) => {
        while (Date.now() < deadline) {
          if (i < WRITERS) {
            // A writer: create a sandbox, look at it, destroy it.
            const vmid = await create(client);
            if (vmid === undefined) continue;
            await timed(client, "sandbox.show", { vmid });
            live.delete(vmid);
            await timed(client, "sandbox.destroy", { vmid });
            continue;
          }
          const roll = Math.random();
          if (roll < 0.4) await timed(client, "sandbox.list", { all: roll < 0.1 });
          else if (roll < 0.75) await timed(client, "daemon.status", {});
          else if (roll < 0.9) await timed(client, "sandbox.show", { vmid: pick() });
          else await timed(client, "sandbox.lease.renew", { vmid: pick(), ttl_minutes: 60 });
          // Think time: an agent or a person between two commands (about one a second), not a busy loop.
          await sleep(500 + Math.random() * 1000);
        }
      }),
    );
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    const versionReads = callStats(h.sim.dir).byRoute["GET /version"] ?? 0;
    for (const client of clients) client.destroy();

    const errors = samples.filter((s) => s.answer.error && !DOCUMENTED.has(s.answer.error.data?.code ?? ""));
    const refusals = samples.filter((s) => s.answer.error && DOCUMENTED.has(s.answer.error.data?.code ?? ""));
    const latencies = (method: string) =>
      samples
        .filter((s) => s.method === method)
        .map((s) => s.ms)
        .sort((a, b) => a - b);
    const dbReads = latencies("sandbox.list");
    const statuses = latencies("daemon.status");
    const shows = samples
      .filter((s) => s.method === "sandbox.show")
      .map((s) => s.ms)
      .sort((a, b) => a - b);
    const creates = samples.filter((s) => s.method === "sandbox.create" && s.answer.result).map((s) => s.ms);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const figures = [
      `${samples.length} requests in ${loadSeconds.toFixed(1)} s from ${CLIENTS} clients: ${(samples.length / loadSeconds).toFixed(0)} requests/s`,
      `database-only reads (sandbox.list): ${dbReads.length}, p50 ${percentile(dbReads, 50).toFixed(1)} ms, p99 ${percentile(dbReads, 99).toFixed(1)} ms`,
      `daemon.status (probes Proxmox): ${statuses.length}, p50 ${percentile(statuses, 50).toFixed(1)} ms, p99 ${percentile(statuses, 99).toFixed(1)} ms`,
      `sandbox.show (reads Proxmox): ${shows.length}, p50 ${percentile(shows, 50).toFixed(1)} ms, p99 ${percentile(shows, 99).toFixed(1)} ms`,
      `sandbox.create: ${creates.length} under load, mean ${(mean(creates) / 1000).toFixed(2)} s; unloaded mean ${(mean(unloaded) / 1000).toFixed(2)} s (ratio ${(mean(creates) / mean(unloaded)).toFixed(2)})`,
      `machine load average at the end: ${loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")} on ${availableParallelism()} CPUs`,
      `errors: ${errors.length}; documented refusals: ${refusals.length} (${[...new Set(refusals.map((s) => `${s.method} ${s.answer.error?.data?.code}`))].join(", ")})`,
    ];
    for (const line of figures) t.diagnostic(line);

    assert.deepEqual(
      errors.slice(0, 5).map((s) => `${s.method}: ${s.answer.error?.data?.code} ${s.answer.error?.message}`),
      [],
      `${errors.length} errors under load`,
    );
    assert.ok(creates.length > 0, "sandboxes were created under load");
    // Every daemon.status shares the last probe of Proxmox: a new one starts only once the last is older
    // than PROBE_TTL_MS (each probe reads /version twice: status, then the privilege check).
    const probes = Math.ceil((loadSeconds * 1000) / PROBE_TTL_MS) + 1;
    assert.ok(
      versionReads <= 2 * probes,
      `${statuses.length} daemon.status calls read /version ${versionReads} times, more than ${2 * probes}`,
    );
    assert.ok(
      !samples.some((s) => LOCKED.test(JSON.stringify(s.answer))),
      "no answer says the database is locked",
    );
    const log = h.daemon.output();
    assert.ok(
      !LOCKED.test(log.stdout) && !LOCKED.test(log.stderr),
      "the daemon never logged `database is locked`",
    );

    // Afterwards: the daemon answers, and every sandbox made ends RUNNING or DESTROYED, each live row with its VM.
    const after = await RawRpcClient.open(h.host.socketPath);
    try {
      assert.ok((await after.request("daemon.status")).result, "the daemon answers after the load");
      const listed = (await after.request("sandbox.list", { all: true })).result as {
        sandboxes: Array<{ vmid: number; state: string }>;
      };
      for (const vmid of created) {
        const row = listed.sandboxes.find((s) => s.vmid === vmid);
        assert.ok(
          row && ["RUNNING", "READY", "DESTROYED"].includes(row.state),
          `sandbox ${vmid}: ${row?.state}`,
        );
      }
      const vms = await inspect(h.sim.dir, (ctx) =>
        Object.values(ctx.state.vms)
          .filter((vm) => vm.config["template"] !== "1")
          .map((vm) => vm.vmid),
      );
      const liveRows = listed.sandboxes.filter((s) => s.state !== "DESTROYED").map((s) => s.vmid);
      assert.deepEqual(vms.sort(), liveRows.sort(), "Proxmox holds exactly the VMs of live sandboxes");
    } finally {
      after.destroy();
    }
  } finally {
    await h.stop();
  }
});
