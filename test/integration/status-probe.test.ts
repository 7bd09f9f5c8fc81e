/**
 * `daemon.status` and `sandbox.show` under many callers, against a real daemon on the simulator (api
 * backend): concurrent callers share one probe of Proxmox (services/probes.ts), each answer says when
 * its probe began (`checked_at`), and a view is never older than a change the daemon made itself.
 * Counts of the simulator's call log, no durations.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type RawAnswer, RawRpcClient } from "../helpers/raw-rpc.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { callStats, resetCalls } from "../pvesim/call-log.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface StatusAnswer {
  backend: { reachable: boolean; checked_at?: string };
  isolation?: { checked_at?: string };
}

describe("shared probes of status and show", () => {
  let h: SimHost;
  let clients: RawRpcClient[];

  before(async () => {
    h = await startSimHost("api", "", { knobs: FAST_KNOBS });
    clients = await Promise.all(Array.from({ length: 100 }, () => RawRpcClient.open(h.host.socketPath)));
  });
  after(async () => {
    for (const c of clients ?? []) c.destroy();
    await h?.stop();
  });

  const versionCalls = () => callStats(h.sim.dir).byRoute["GET /version"] ?? 0;

  test("100 concurrent daemon.status calls cost Proxmox what one costs, and say when it was asked", async () => {
    resetCalls(h.sim.dir);
    const answers = await Promise.all(clients.map((c) => c.request("daemon.status")));
    const statuses = answers.map((a: RawAnswer) => a.result as StatusAnswer);
    assert.ok(
      statuses.every((s) => s.backend.reachable),
      JSON.stringify(answers.find((a) => !a.result) ?? {}),
    );
    // One probe per distinct checked_at. A probe starts only when none runs and the last is older than
    // the TTL, so a loaded machine stretching the burst past it may add one, never one per caller.
    const checked = new Set(statuses.map((s) => s.backend.checked_at));
    assert.ok(
      [...checked].every((at) => at !== undefined && !Number.isNaN(Date.parse(at))),
      "checked_at is a time",
    );
    assert.ok(checked.size <= 5, `100 callers shared ${checked.size} probes`);
    const burst = versionCalls();

    // Once the answer is older than the TTL, the next caller probes again, alone.
    await sleep(1_700);
    resetCalls(h.sim.dir);
    const single = (await clients[0]!.request("daemon.status")).result as StatusAnswer;
    assert.ok(!checked.has(single.backend.checked_at), "a new probe after the TTL");
    const perProbe = versionCalls();
    assert.ok(perProbe > 0, "the probe asked Proxmox its version");
    assert.equal(burst, perProbe * checked.size, "100 callers cost Proxmox the calls of their probes only");
  });

  test("sandbox.show after the daemon stopped the VM shows it stopped, never the kept `running`", async () => {
    const made = await clients[0]!.request("sandbox.create", { profile: "yolo-ephemeral" });
    const vmid = (made.result as { vmid: number } | undefined)?.vmid;
    assert.ok(vmid !== undefined, JSON.stringify(made.error));
    type Show = { proxmox: { status?: string; checked_at?: string } };
    const shows = await Promise.all(clients.slice(0, 50).map((c) => c.request("sandbox.show", { vmid })));
    assert.ok(
      shows.every((s) => (s.result as Show).proxmox.status === "running"),
      JSON.stringify(shows[0]),
    );
    const stopped = await clients[1]!.request("sandbox.stop", { vmid });
    assert.ok(stopped.result, JSON.stringify(stopped.error));
    const show = (await clients[2]!.request("sandbox.show", { vmid })).result as Show;
    assert.equal(show.proxmox.status, "stopped", JSON.stringify(show));
    assert.ok(show.proxmox.checked_at, "the live view says when it was read");
  });
});
