import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { call } from "../../src/cli/client.js";
import { sandboxTouch } from "../../src/protocol/index.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl, setGuestLoad } from "../pvesim/harness.js";

/**
 * Idle stop (issue 17) against the simulator: the real daemon with a 1 s idle_stop_interval, profiles
 * with a 3 s idle window, guest CPU set per VM in the simulator. Each "keeps it running" case ends by
 * taking the use away and seeing the stop, so it proves the sandbox was watched all along.
 */

const WINDOW = "3s";
const WINDOW_MS = 3_000;
/** Long enough for the window and a few passes past it. */
const PAST_WINDOW_MS = WINDOW_MS + 3_000;

const profile = (name: string, extra: string) =>
  `name: ${name}\ntype: vm\ntemplate_vmid: 9000\nresources:\n  cores: 2\n  memory_mb: 1024\n${extra}`;

const PROFILES = {
  "idle-fast.yaml": profile("idle-fast", `idle_stop: ${WINDOW}\nbehavior:\n  ttl_minutes_default: 120\n`),
  "idle-keep.yaml": profile("idle-keep", `idle_stop: ${WINDOW}\nidle_stop_keepalive: true\n`),
  // Upstream's key: 0 turns idle stop off for the profile.
  "idle-off.yaml": profile("idle-off", "behavior:\n  idle_stop_minutes_default: 0\n"),
  // Neither key: the daemon's idle_stop_minutes_default (0 in this config) applies.
  "idle-default.yaml": profile("idle-default", ""),
};

interface Detail {
  vmid: number;
  state: string;
  keepalive: boolean;
  lease_expires_at?: string;
  idle_stop: {
    after_ms: number;
    off?: string;
    last?: { at: string; idle_for_minutes: number; cpu_usage: number };
  };
  events: Array<{ kind: string; msg?: string; payload?: Record<string, unknown> }>;
}

// One backend: what idle stop reads (/cluster/resources) goes through the request both backends share.
describe("idle stop (api backend)", () => {
  let h: SimHost;

  const show = async (vmid: number): Promise<Detail> => {
    const result = await h.json<Detail>(["sandbox", "show", String(vmid), "--events", "50"]);
    assert.equal(result.code, 0, result.stderr);
    return result.body;
  };
  const create = async (profileName: string, ...extra: string[]): Promise<number> => {
    const result = await h.json<{ vmid: number; state: string }>([
      "sandbox",
      "new",
      "--profile",
      profileName,
      ...extra,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.body.state, "RUNNING");
    return result.body.vmid;
  };
  const untilState = async (vmid: number, state: string, ms = 30_000): Promise<Detail> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const detail = await show(vmid);
      if (detail.state === state) return detail;
      if (Date.now() > deadline) throw new Error(`sandbox ${vmid} is ${detail.state}, not ${state}`);
      await sleep(250);
    }
  };
  const idleStops = (d: Detail) => d.events.filter((e) => e.kind === "sandbox.idle_stop");

  before(async () => {
    // A guest listener the job's runner could reach (jobs are refused without one).
    const port = await freePort();
    h = await startSimHost(
      "api",
      `idle_stop_interval: 1s\nidle_stop_minutes_default: 0\nbootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\n`,
      {},
      { profiles: PROFILES },
    );
    // runner 0: a job's guest never runs it, so the job stays active until cancelled.
    await setControl(h.sim.dir, { ...FAST_KNOBS, runner: 0 });
  });

  after(async () => {
    await h?.stop();
  });

  test("an idle sandbox is stopped with an event and a show line, its lease kept; sandbox start brings it back; off, keepalive and default-0 sandboxes stay", async () => {
    // Created first, so they have been idle longer than the window when the idle one is stopped.
    const [off, keepalive, byDefault] = await Promise.all([
      create("idle-off"),
      create("idle-fast", "--keepalive"),
      create("idle-default"),
    ]);
    const vmid = await create("idle-fast");
    const before = await show(vmid);
    assert.equal(before.idle_stop.after_ms, WINDOW_MS);

    const stopped = await untilState(vmid, "STOPPED");
    const [event, ...more] = idleStops(stopped);
    assert.ok(event, "a sandbox.idle_stop event");
    assert.equal(more.length, 0);
    const payload = event.payload ?? {};
    assert.ok(Number(payload.idle_for_minutes) >= WINDOW_MS / 60_000 - 0.05, JSON.stringify(payload));
    assert.ok(Number(payload.cpu_usage) <= 0.05, JSON.stringify(payload));
    assert.equal(stopped.lease_expires_at, before.lease_expires_at, "the lease is kept");
    assert.equal(stopped.idle_stop.last?.cpu_usage, payload.cpu_usage);
    const text = await h.cli(["sandbox", "show", String(vmid)]);
    assert.match(
      text.stdout,
      /idle stop:\s+after 3s idle; stopped it at \S+ after [\d.]+ min idle \(guest CPU [\d.]+\)/,
    );

    for (const [other, why] of [
      [off, /the profile turns it off/],
      [keepalive, /keepalive sandbox/],
      [byDefault, /idle_stop_minutes_default is 0/],
    ] as const) {
      const d = await show(other);
      assert.equal(d.state, "RUNNING", `sandbox ${other} (${why}) is left running`);
      assert.equal(idleStops(d).length, 0);
      assert.equal(d.idle_stop.after_ms, 0);
      assert.match(d.idle_stop.off ?? "", why);
    }

    const started = await h.json<{ state: string }>(["sandbox", "start", String(vmid)]);
    assert.equal(started.code, 0, started.stderr);
    assert.equal(started.body.state, "RUNNING");
    // Watched again from the start: idle for another window, stopped again.
    const again = await untilState(vmid, "STOPPED");
    assert.equal(idleStops(again).length, 2);
    for (const other of [off, keepalive, byDefault]) {
      await h.cli(["sandbox", "destroy", String(other)]);
    }
  });

  test("guest CPU above the threshold keeps it running; when the guest goes quiet it is stopped", async () => {
    const vmid = await create("idle-fast");
    // 1 of 2 vCPUs busy: Proxmox reports cpu 0.5.
    await setGuestLoad(h.sim.dir, vmid, 1);
    await sleep(PAST_WINDOW_MS);
    assert.equal((await show(vmid)).state, "RUNNING");
    await setGuestLoad(h.sim.dir, vmid, 0);
    const stopped = await untilState(vmid, "STOPPED");
    assert.equal(Number(idleStops(stopped)[0]?.payload?.cpu_usage), 0);
  });

  test("use recorded through sandbox.touch (what agentlab ssh sends while its session lasts) keeps it running", async () => {
    const vmid = await create("idle-fast");
    const rpc = { socketPath: h.host.socketPath, timeoutMs: 10_000 };
    const touched = await call(rpc, sandboxTouch, { vmid });
    assert.equal(touched.idle_stop_after_ms, WINDOW_MS);
    const end = Date.now() + PAST_WINDOW_MS;
    while (Date.now() < end) {
      await call(rpc, sandboxTouch, { vmid });
      await sleep(800);
    }
    assert.equal((await show(vmid)).state, "RUNNING");
    await untilState(vmid, "STOPPED");

    const missing = await h.json<{ code: string }>(["sandbox", "show", "999999"]);
    assert.equal(missing.body.code, "SANDBOX_NOT_FOUND");
    await assert.rejects(call(rpc, sandboxTouch, { vmid: 999999 }), { code: "SANDBOX_NOT_FOUND" });
  });

  test("a queued or running job keeps its sandbox running; a keepalive sandbox of an idle_stop_keepalive profile is stopped", async () => {
    const run = await h.json<{ id: string }>([
      "job",
      "run",
      "--repo",
      "https://example.invalid/r.git",
      "--task",
      "t",
      "--profile",
      "idle-keep",
      "--keepalive",
    ]);
    assert.equal(run.code, 0, run.stderr);
    const deadline = Date.now() + 30_000;
    let jobVmid: number | undefined;
    while (jobVmid === undefined) {
      const job = await h.json<{ sandbox_vmid?: number }>(["job", "show", run.body.id]);
      const vmid = job.body.sandbox_vmid;
      if (vmid !== undefined && (await show(vmid)).state === "RUNNING") jobVmid = vmid;
      assert.ok(Date.now() < deadline, "the job's sandbox did not come up");
      await sleep(250);
    }
    // Up after the job's sandbox, same profile, keepalive too, but no job: stopped.
    const kept = await create("idle-keep", "--keepalive");
    const stopped = await untilState(kept, "STOPPED");
    assert.equal(stopped.keepalive, true);
    assert.equal(idleStops(stopped).length, 1);
    const during = await show(jobVmid);
    assert.equal(during.state, "RUNNING", "the job's sandbox, idle as long, is left running");
    assert.equal(idleStops(during).length, 0);
    const job = await h.json<{ status: string }>(["job", "show", run.body.id]);
    assert.match(job.body.status, /^(QUEUED|RUNNING)$/);
    await h.cli(["job", "cancel", run.body.id]);
  });

  test("idle_stop_enabled: false (reloaded with SIGHUP) turns it off", async () => {
    const config = readFileSync(h.host.configPath, "utf8");
    writeFileSync(h.host.configPath, `${config}\nidle_stop_enabled: false\n`);
    h.daemon.proc.kill("SIGHUP");
    const deadline = Date.now() + 10_000;
    while (!/idle_stop_enabled/.test(h.daemon.output().stdout)) {
      assert.ok(Date.now() < deadline, "no reload in the log");
      await sleep(100);
    }
    const vmid = await create("idle-fast");
    await sleep(PAST_WINDOW_MS);
    const d = await show(vmid);
    assert.equal(d.state, "RUNNING");
    assert.match(d.idle_stop.off ?? "", /idle_stop_enabled is false/);
  });
});
