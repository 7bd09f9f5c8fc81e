/**
 * The lease reaper, the reconciler and start-up recovery, in-process: the real SQLite store in a temp
 * directory, the real shell backend against the Proxmox simulator, and injected time (a fake clock and
 * a fake scheduler), so that no test waits for an interval or a lease.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { loadConfig } from "../../src/config/config.js";
import { loadProfiles } from "../../src/config/profiles.js";
import type { DaemonContext } from "../../src/daemon/context.js";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import { ShellTransport } from "../../src/daemon/proxmox/transport-shell.js";
import { MaintenanceService } from "../../src/daemon/services/maintenance.js";
import { backgroundOperation } from "../../src/daemon/services/operation.js";
import { PeriodicTask } from "../../src/daemon/services/periodic.js";
import { SandboxService } from "../../src/daemon/services/sandboxes.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import type { NewSandbox, SandboxState } from "../../src/daemon/store/sandboxes.js";
import { writeConfig } from "../helpers/daemon.js";
import { FakeClock, FakeScheduler } from "../helpers/fake-time.js";
import { PROFILES_DIR } from "../helpers/paths.js";
import { api, apiTask, clearFaults, createSim, inspect, type Sim, setControl } from "../pvesim/harness.js";

const log = pino({ level: "silent" });
const FAST = {
  clone_ms: 20,
  full_clone_ms: 40,
  start_ms: 20,
  stop_ms: 10,
  agent_ready_ms: 20,
  task_ms: 10,
  fail_ms: 5,
};

function fastSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return sleep(Math.min(ms, 20), undefined, signal ? { signal } : {});
}

interface Harness {
  sim: Sim;
  clock: FakeClock;
  scheduler: FakeScheduler;
  store: Store;
  ctx: DaemonContext;
  sandboxes: SandboxService;
  maintenance: MaintenanceService;
  snippetsDir: string;
  cleanup(): void;
}

function harness(): Harness {
  const sim = createSim({ knobs: FAST });
  const dir = mkdtempSync(join(tmpdir(), "agentlab-maint-"));
  const snippetsDir = join(sim.dir, "storage", "local", "snippets");
  const configPath = join(dir, "config.yaml");
  writeConfig(
    configPath,
    `profiles_dir: ${PROFILES_DIR}\ndata_dir: data\nrun_dir: run\nsnippets_dir: ${snippetsDir}\nsnippet_storage: local\nprovisioning_timeout: 30s\nproxmox_command_timeout: 30s\n`,
  );
  const { config } = loadConfig(configPath);
  const clock = new FakeClock(Date.now());
  const scheduler = new FakeScheduler(clock);
  const store = openStore(join(dir, "data", "agentlab.db"), { now: () => clock.now() });
  const transport = new ShellTransport({ timeoutMs: 30_000, env: sim.env });
  const backend = new PveBackend({
    transport,
    log,
    timeoutMs: 30_000,
    lockRetryBudgetMs: 300,
    sleep: fastSleep,
  });
  const ctx: DaemonContext = {
    config,
    configPath,
    profiles: loadProfiles(PROFILES_DIR).profiles,
    store,
    backend,
    log,
    clock,
    startedAt: clock.now(),
    version: "test",
  };
  const sandboxes = new SandboxService(ctx);
  // Recovery's waits between guest-agent questions move the fake clock (and yield a moment to the simulator).
  const maintenance = new MaintenanceService(ctx, sandboxes, {
    scheduler,
    sleep: async (ms) => {
      clock.ms += ms;
      await sleep(5);
    },
  });
  return {
    sim,
    clock,
    scheduler,
    store,
    ctx,
    sandboxes,
    maintenance,
    snippetsDir,
    cleanup() {
      store.close();
      rmSync(dir, { recursive: true, force: true });
      sim.cleanup();
    },
  };
}

const op = () => backgroundOperation(log);
const never = new AbortController().signal;

/** A VM made directly in the simulator (as a crash or an operator would leave it). */
async function makeVm(
  h: Harness,
  vmid: number,
  opts: { name?: string; start?: boolean; tags?: string } = {},
) {
  await apiTask(h.sim, "POST", "/nodes/pve/qemu/9000/clone", {
    newid: String(vmid),
    name: opts.name ?? `sandbox-${vmid}`,
  });
  if (opts.tags) await api(h.sim, "PUT", `/nodes/pve/qemu/${vmid}/config`, { tags: opts.tags });
  if (opts.start) await apiTask(h.sim, "POST", `/nodes/pve/qemu/${vmid}/status/start`);
}

async function stopVmBehindBack(h: Harness, vmid: number) {
  await apiTask(h.sim, "POST", `/nodes/pve/qemu/${vmid}/status/stop`);
}

function simVms(h: Harness): Promise<Record<string, { status: string; snapshots: string[] }>> {
  return inspect(h.sim.dir, (ctx) =>
    Object.fromEntries(
      Object.values(ctx.state.vms).map((vm) => [
        String(vm.vmid),
        { status: vm.runtime.status, snapshots: Object.keys(vm.snapshots) },
      ]),
    ),
  );
}

function row(h: Harness, vmid: number, state: SandboxState, extra: Partial<NewSandbox> = {}) {
  return h.store.sandboxes.insert({
    vmid,
    name: `sandbox-${vmid}`,
    profile: "yolo-ephemeral",
    state,
    node: "pve",
    vm_created: true,
    ...extra,
  });
}

function job(h: Harness, id: string, vmid: number, status: "QUEUED" | "RUNNING" | "COMPLETED" = "RUNNING") {
  return h.store.jobs.insert({
    id,
    repo_url: "https://example.com/r.git",
    ref: "main",
    profile: "p",
    status,
    sandbox_vmid: vmid,
  });
}

function stateMoves(h: Harness, vmid: number): string[] {
  return h.store.events
    .listForSandbox(vmid)
    .filter((e) => e.kind === "sandbox.state")
    .map((e) => String(e.msg));
}

function snippet(h: Harness, name: string): string {
  mkdirSync(h.snippetsDir, { recursive: true });
  const path = join(h.snippetsDir, name);
  writeFileSync(path, "#cloud-config\n", { mode: 0o600 });
  return path;
}

describe("lease reaper", () => {
  test("an expired sandbox goes TIMEOUT then DESTROYED on the pass after its lease; its VM, snippet and job follow", async () => {
    const h = harness();
    try {
      const created = await h.sandboxes.create({ profile: "yolo-ephemeral", ttl_minutes: 1 }, op());
      const vmid = created.vmid;
      const snippetPath = h.store.sandboxes.get(vmid)?.snippet_path;
      assert.ok(snippetPath && existsSync(snippetPath));
      job(h, "job_running", vmid, "RUNNING");
      job(h, "job_done", vmid, "COMPLETED");

      h.maintenance.start();
      await h.maintenance.idle();
      assert.equal(h.store.sandboxes.get(vmid)?.state, "RUNNING", "not expired yet at start");
      assert.deepEqual(h.scheduler.pending, [30_000], "the next pass waits 30 s on the scheduler");
      h.scheduler.advance(30_000);
      await h.maintenance.idle();
      assert.equal(h.store.sandboxes.get(vmid)?.state, "RUNNING", "30 s in: the 1-minute lease still runs");
      h.scheduler.advance(30_000);
      await h.maintenance.idle();

      const reaped = h.store.sandboxes.get(vmid)!;
      assert.equal(reaped.state, "DESTROYED");
      assert.equal(reaped.snippet_path, null);
      assert.match(reaped.failure_reason ?? "", /^lease expired at /);
      const moves = stateMoves(h, vmid);
      assert.match(moves.at(-2) ?? "", /^RUNNING -> TIMEOUT: lease expired at \S+Z$/);
      assert.equal(moves.at(-1), "TIMEOUT -> DESTROYED");
      assert.equal((await simVms(h))[String(vmid)], undefined, "the VM is destroyed");
      assert.equal(existsSync(snippetPath), false, "the snippet is deleted");
      const ended = h.store.jobs.get("job_running")!;
      assert.equal(ended.status, "TIMEOUT");
      assert.equal(ended.failure_reason, "sandbox lease expired");
      assert.equal(h.store.jobs.get("job_done")?.status, "COMPLETED");
      assert.ok(
        h.store.events
          .listForSandbox(vmid)
          .some((e) => e.kind === "job.timeout" && e.job_id === "job_running"),
      );
      assert.equal(h.maintenance.completedPasses, 3);
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("sandboxes without a lease, or whose lease is still running, are left alone", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000, { start: true });
      await makeVm(h, 1001, { start: true });
      row(h, 1000, "RUNNING", { ip: "10.77.4.2", lease_expires_at: null });
      row(h, 1001, "RUNNING", { ip: "10.77.4.3", lease_expires_at: new Date(h.clock.ms + 1000) });
      const result = await h.maintenance.reaper.pass(op(), never);
      assert.deepEqual(result, { reaped: [], errors: [] });
      assert.equal(h.store.sandboxes.get(1000)?.state, "RUNNING");
      assert.equal(h.store.sandboxes.get(1001)?.state, "RUNNING");
    } finally {
      h.cleanup();
    }
  });

  test("crash between steps: TIMEOUT rows whose VM is gone or stopped, and expired STOPPED rows, still reach DESTROYED", async () => {
    const h = harness();
    try {
      const past = new Date(h.clock.ms - 1000);
      row(h, 1000, "TIMEOUT", { lease_expires_at: past, failure_reason: "lease expired" }); // VM already destroyed
      await makeVm(h, 1001);
      row(h, 1001, "TIMEOUT", { lease_expires_at: past }); // stopped, not destroyed yet
      await makeVm(h, 1002);
      row(h, 1002, "STOPPED", { lease_expires_at: past });
      row(h, 1003, "FAILED", { lease_expires_at: past, vm_created: false });
      job(h, "job_1000", 1000);

      const result = await h.maintenance.reaper.pass(op(), never);
      assert.deepEqual(result, { reaped: [1000, 1001, 1002, 1003], errors: [] });
      for (const vmid of [1000, 1001, 1002, 1003])
        assert.equal(h.store.sandboxes.get(vmid)?.state, "DESTROYED");
      assert.deepEqual(
        stateMoves(h, 1002),
        ["STOPPED -> DESTROYED"],
        "a stopped sandbox is not marked TIMEOUT first",
      );
      assert.deepEqual(Object.keys(await simVms(h)), ["9000"]);
      assert.equal(
        h.store.jobs.get("job_1000")?.status,
        "TIMEOUT",
        "the job is finalised on the retried pass too",
      );
      assert.deepEqual(
        await h.maintenance.reaper.pass(op(), never),
        { reaped: [], errors: [] },
        "idempotent",
      );
    } finally {
      h.cleanup();
    }
  });

  test("a Proxmox failure leaves the sandbox TIMEOUT with its lease, and the next pass finishes it", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000, { start: true });
      row(h, 1000, "RUNNING", { ip: "10.77.4.2", lease_expires_at: new Date(h.clock.ms - 1) });
      await setControl(h.sim.dir, {}, ["fail_task=qmdestroy"]);
      const first = await h.maintenance.reaper.pass(op(), never);
      assert.deepEqual(first.reaped, []);
      assert.equal(first.errors[0]?.vmid, 1000);
      const stuck = h.store.sandboxes.get(1000)!;
      assert.equal(stuck.state, "TIMEOUT");
      assert.ok(h.store.events.listForSandbox(1000).some((e) => e.kind === "sandbox.destroy.failed"));
      assert.equal((await simVms(h))["1000"]?.status, "stopped", "stopped before the destroy was tried");
      await clearFaults(h.sim.dir);
      const second = await h.maintenance.reaper.pass(op(), never);
      assert.deepEqual(second, { reaped: [1000], errors: [] });
      assert.deepEqual(stateMoves(h, 1000).at(-1), "TIMEOUT -> DESTROYED");
      assert.equal((await simVms(h))["1000"], undefined);
    } finally {
      h.cleanup();
    }
  });

  test("a sandbox an operation holds is skipped, and reaped by a pass once it is free", async () => {
    const h = harness();
    try {
      row(h, 1000, "STOPPED", { lease_expires_at: new Date(h.clock.ms - 1), vm_created: false });
      let release!: () => void;
      const held = h.sandboxes.exclusive(1000, () => new Promise<void>((resolve) => (release = resolve)));
      assert.deepEqual(await h.maintenance.reaper.pass(op(), never), { reaped: [], errors: [] });
      assert.equal(h.store.sandboxes.get(1000)?.state, "STOPPED");
      release();
      await held;
      assert.deepEqual(await h.maintenance.reaper.pass(op(), never), { reaped: [1000], errors: [] });
    } finally {
      h.cleanup();
    }
  });
});

describe("reconciler", () => {
  test("one pass fixes each kind of drift it owns, confirming each change with a live status", async () => {
    const h = harness();
    try {
      row(h, 1000, "RUNNING", { ip: "10.77.4.2" }); // its VM was removed behind agentlab's back
      job(h, "job_1000", 1000);
      await makeVm(h, 1001);
      row(h, 1001, "RUNNING", { ip: "10.77.4.3" }); // VM stopped
      await makeVm(h, 1002, { start: true });
      row(h, 1002, "STOPPED"); // VM started outside agentlab
      await makeVm(h, 1003, { start: true });
      row(h, 1003, "RUNNING"); // no address recorded
      await makeVm(h, 1004, { start: true });
      row(h, 1004, "RUNNING", { ip: "10.77.4.6" }); // fine
      row(h, 1005, "FAILED", { vm_created: false }); // failed before its clone: no VM expected
      await makeVm(h, 1006, { start: true });
      row(h, 1006, "RUNNING", { ip: "10.77.4.8" });
      await stopVmBehindBack(h, 1006); // drifted, but an operation holds it

      let release!: () => void;
      const held = h.sandboxes.exclusive(1006, () => new Promise<void>((resolve) => (release = resolve)));
      const before = h.ctx.backend.calls.count;
      const result = await h.maintenance.reconcile(true, op());
      const calls = h.ctx.backend.calls.count - before;
      release();
      await held;

      assert.equal(result.applied, true);
      assert.deepEqual(result.busy, [1006]);
      assert.deepEqual(result.errors, []);
      assert.deepEqual(
        result.changes.map((c) => [c.vmid, c.action, c.from, c.to, c.ip]),
        [
          [1000, "destroyed", "RUNNING", "DESTROYED", undefined],
          [1001, "failed", "RUNNING", "FAILED", undefined],
          [1002, "adopted", "STOPPED", "READY", "10.77.4.4"],
          [1003, "ip", undefined, undefined, "10.77.4.5"],
        ],
      );
      // One VM list for the pass, then a confirming status per state change and one agent question per address.
      assert.equal(calls, 1 + 3 + 2);
      assert.equal(h.store.sandboxes.get(1000)?.state, "DESTROYED");
      assert.equal(h.store.jobs.get("job_1000")?.status, "FAILED");
      assert.equal(h.store.jobs.get("job_1000")?.failure_reason, "its sandbox's VM disappeared from Proxmox");
      const failed = h.store.sandboxes.get(1001)!;
      assert.equal(failed.state, "FAILED");
      assert.match(failed.failure_reason ?? "", /stopped outside agentlab/);
      assert.equal(h.store.sandboxes.get(1002)?.state, "READY");
      assert.equal(h.store.sandboxes.get(1003)?.ip, "10.77.4.5");
      assert.equal(h.store.sandboxes.get(1003)?.state, "RUNNING");
      assert.equal(h.store.sandboxes.get(1004)?.state, "RUNNING");
      assert.equal(h.store.sandboxes.get(1005)?.state, "FAILED");
      assert.equal(h.store.sandboxes.get(1006)?.state, "RUNNING", "left for the next pass");

      const again = await h.maintenance.reconcile(true, op());
      assert.deepEqual(
        again.changes.map((c) => [c.vmid, c.action]),
        [[1006, "failed"]],
      );
    } finally {
      h.cleanup();
    }
  });

  test("in the background a record is ended only when two passes in a row see the same drift", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000, { start: true });
      row(h, 1000, "RUNNING", { ip: "10.77.4.2" }); // its VM goes after the start-up pass
      await makeVm(h, 1001);
      row(h, 1001, "RUNNING", { ip: "10.77.4.3" }); // VM stopped for good
      await makeVm(h, 1002);
      row(h, 1002, "RUNNING", { ip: "10.77.4.4" }); // VM stopped for a moment (a reboot from the host)
      const reconciled = () => h.maintenance.lastPass?.reconciled.map((c) => [c.vmid, c.to]);
      h.maintenance.start();
      await h.maintenance.idle();
      assert.deepEqual(reconciled(), [], "seen once: nothing is ended yet");
      for (const vmid of [1000, 1001, 1002]) assert.equal(h.store.sandboxes.get(vmid)?.state, "RUNNING");
      await apiTask(h.sim, "POST", "/nodes/pve/qemu/1000/status/stop");
      await apiTask(h.sim, "DELETE", "/nodes/pve/qemu/1000");
      await apiTask(h.sim, "POST", "/nodes/pve/qemu/1002/status/start");
      h.scheduler.advance(30_000);
      await h.maintenance.idle();
      assert.deepEqual(reconciled(), [[1001, "FAILED"]]);
      assert.equal(h.store.sandboxes.get(1000)?.state, "RUNNING", "VM gone, seen once: kept");
      h.scheduler.advance(30_000);
      await h.maintenance.idle();
      assert.deepEqual(reconciled(), [[1000, "DESTROYED"]]);
      assert.equal(h.store.sandboxes.get(1002)?.state, "RUNNING");
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("a pass over sandboxes that match Proxmox costs one Proxmox call, whatever their number", async () => {
    const h = harness();
    try {
      for (let i = 0; i < 4; i++) {
        await makeVm(h, 1000 + i, { start: true });
        row(h, 1000 + i, "RUNNING", { ip: `10.77.4.${2 + i}` });
      }
      await makeVm(h, 1004);
      row(h, 1004, "STOPPED");
      const before = h.ctx.backend.calls.count;
      const result = await h.maintenance.reconcile(true, op());
      assert.deepEqual(result.findings, []);
      assert.deepEqual(result.changes, []);
      assert.equal(h.ctx.backend.calls.count - before, 1);
    } finally {
      h.cleanup();
    }
  });

  test("the background pass costs no Proxmox call while there is no sandbox", async () => {
    const h = harness();
    try {
      const before = h.ctx.backend.calls.count;
      h.maintenance.start();
      await h.maintenance.idle();
      h.scheduler.advance(30_000);
      await h.maintenance.idle();
      assert.equal(h.maintenance.completedPasses, 2);
      assert.equal(h.ctx.backend.calls.count, before);
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("a provisioning row with no operation in flight whose VM runs is advanced to READY, never RUNNING", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000, { start: true });
      row(h, 1000, "PROVISIONING");
      const result = await h.maintenance.reconcile(true, op());
      assert.deepEqual(
        result.changes.map((c) => [c.vmid, c.action, c.from, c.to, c.ip]),
        [[1000, "ready", "PROVISIONING", "READY", "10.77.4.2"]],
      );
      assert.deepEqual(stateMoves(h, 1000), ["PROVISIONING -> BOOTING", "BOOTING -> READY"]);
      assert.equal(h.store.sandboxes.get(1000)?.ip, "10.77.4.2");
    } finally {
      h.cleanup();
    }
  });

  test("inventory and a dry run read only: findings with severity, fix and plan; nothing changes", async () => {
    const h = harness();
    try {
      row(h, 1000, "RUNNING", { ip: "10.77.4.2" });
      await makeVm(h, 1001);
      row(h, 1001, "RUNNING", { ip: "10.77.4.3" });
      await makeVm(h, 1002, { tags: "agentlab;ci" }); // no sandbox owns it
      const rowsBefore = JSON.stringify(h.store.sandboxes.list({ includeDestroyed: true }));
      const before = h.ctx.backend.calls.count;
      const inventory = await h.maintenance.inventory();
      assert.equal(h.ctx.backend.calls.count - before, 1, "one VM list");
      assert.equal(inventory.sandboxes, 2);
      assert.equal(inventory.proxmox_vms, 3);
      assert.deepEqual(
        inventory.findings.map((f) => [f.vmid, f.code, f.severity, f.proxmox]),
        [
          [1000, "missing_in_proxmox", "error", "missing"],
          [1001, "stopped_while_marked_running", "error", "stopped"],
          [1002, "unmanaged_proxmox_vm", "warning", "stopped"],
        ],
      );
      const dry = await h.maintenance.reconcile(false, op());
      assert.equal(dry.applied, false);
      assert.deepEqual(dry.changes, []);
      assert.deepEqual(
        dry.findings.map((f) => f.reconcile),
        [
          "mark it DESTROYED (and end its jobs as FAILED)",
          "mark it FAILED (and end its jobs as FAILED)",
          undefined,
        ],
      );
      assert.equal(JSON.stringify(h.store.sandboxes.list({ includeDestroyed: true })), rowsBefore);
      const applied = await h.maintenance.reconcile(true, op());
      assert.equal(applied.changes.length, 2, "the unmanaged VM is never touched");
      assert.ok((await simVms(h))["1002"]);
    } finally {
      h.cleanup();
    }
  });
});

describe("start-up recovery", () => {
  test("every provisioning a crash left is finished or rolled back: no orphan VM, no row stuck", async () => {
    const h = harness();
    try {
      row(h, 1000, "REQUESTED", { vm_created: false });
      // The clone was in flight when the daemon died and finished while it was down.
      await makeVm(h, 1001);
      row(h, 1001, "PROVISIONING", { vm_created: false });
      // A VM at that VMID that is not this row's clone: never destroyed.
      await makeVm(h, 1002, { name: "someone-elses" });
      row(h, 1002, "PROVISIONING", { vm_created: false });
      await makeVm(h, 1003);
      row(h, 1003, "BOOTING", { snippet_path: snippet(h, "agentlab-1003-0000000000000000.yaml") });
      job(h, "job_1003", 1003);
      await makeVm(h, 1004, { start: true });
      row(h, 1004, "BOOTING");
      const failedSnippet = snippet(h, "agentlab-1005-0000000000000000.yaml");
      row(h, 1005, "FAILED", { snippet_path: failedSnippet, vm_created: false });
      const destroyedSnippet = snippet(h, "agentlab-1006-0000000000000000.yaml");
      row(h, 1006, "DESTROYED", { snippet_path: destroyedSnippet });
      const liveSnippet = snippet(h, "agentlab-1007-0000000000000000.yaml");
      await makeVm(h, 1007, { start: true });
      row(h, 1007, "RUNNING", { ip: "10.77.4.9", snippet_path: liveSnippet });

      h.maintenance.prepare();
      assert.deepEqual([...h.maintenance.recovery.interrupted].sort(), [1000, 1001, 1002, 1003, 1004]);
      assert.equal(existsSync(failedSnippet), false, "snippets of FAILED rows are deleted at start");
      assert.equal(existsSync(destroyedSnippet), false, "and of DESTROYED rows");
      assert.equal(existsSync(liveSnippet), true, "a live sandbox keeps its snippet");
      assert.equal(h.store.sandboxes.get(1005)?.snippet_path, null);

      h.maintenance.start();
      await h.maintenance.idle();

      const state = (vmid: number) => h.store.sandboxes.get(vmid)!;
      for (const vmid of [1000, 1001, 1002, 1003]) {
        assert.equal(state(vmid).state, "FAILED", `sandbox ${vmid}`);
        assert.equal(state(vmid).failure_reason, "interrupted by daemon restart");
      }
      const finished = state(1004);
      assert.equal(finished.state, "RUNNING");
      assert.equal(finished.ip, "10.77.4.6");
      assert.deepEqual(stateMoves(h, 1004), ["BOOTING -> READY", "READY -> RUNNING"]);
      const vms = await simVms(h);
      assert.deepEqual(Object.keys(vms).sort(), ["1002", "1004", "1007", "9000"]);
      assert.deepEqual(vms["1004"]?.snapshots, ["clean"], "the clean snapshot is taken when missing");
      assert.equal(state(1001).vm_created, true, "the in-flight clone was recognised as this row's");
      assert.equal(existsSync(join(h.snippetsDir, "agentlab-1003-0000000000000000.yaml")), false);
      assert.equal(h.store.jobs.get("job_1003")?.status, "FAILED");
      assert.equal(h.store.jobs.get("job_1003")?.failure_reason, "interrupted by daemon restart");
      assert.equal(h.maintenance.recovery.interrupted.size, 0);
      assert.deepEqual(
        h.store.sandboxes.list().filter((s) => ["REQUESTED", "PROVISIONING", "BOOTING"].includes(s.state)),
        [],
      );
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("a live row whose VM went while the daemon was down is settled by the start-up pass, with an event", async () => {
    const h = harness();
    try {
      row(h, 1000, "RUNNING", { ip: "10.77.4.2" }); // its VM was removed while the daemon was down
      job(h, "job_1000", 1000);
      await makeVm(h, 1001, { start: true });
      row(h, 1001, "RUNNING", { ip: "10.77.4.3" }); // fine
      h.maintenance.prepare();
      h.maintenance.start();
      await h.maintenance.idle();
      assert.equal(h.store.sandboxes.get(1000)?.state, "DESTROYED");
      assert.equal(h.store.jobs.get("job_1000")?.status, "FAILED");
      const recovered = h.store.events.listForSandbox(1000).filter((e) => e.kind === "sandbox.recovered");
      assert.equal(recovered.length, 1);
      assert.match(
        recovered[0]!.msg ?? "",
        /RUNNING -> DESTROYED: its VM no longer exists in Proxmox \(found at daemon start-up\)/,
      );
      assert.equal(h.store.sandboxes.get(1001)?.state, "RUNNING");
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("a BOOTING row with a start intent is a start, not a provisioning: finished, its VM kept", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000, { start: true });
      row(h, 1000, "BOOTING");
      h.store.sandboxOps.begin(1000, "start");
      h.store.sandboxOps.setStep(1000, "booting");
      h.maintenance.prepare();
      assert.deepEqual([...h.maintenance.recovery.interrupted], [], "not taken for a provisioning");
      h.maintenance.start();
      await h.maintenance.idle();
      assert.equal(h.store.sandboxes.get(1000)?.state, "RUNNING");
      assert.ok((await simVms(h))["1000"], "the VM is kept");
      assert.deepEqual(h.store.sandboxOps.list(), []);
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });

  test("a rollback Proxmox refused is retried by the reconciler on a later pass", async () => {
    const h = harness();
    try {
      await makeVm(h, 1000);
      row(h, 1000, "BOOTING");
      // Twice: the first pass tries recovery, then its reconciler step tries again.
      await setControl(h.sim.dir, {}, ["fail_task=type=qmdestroy,times=2"]);
      h.maintenance.prepare();
      h.maintenance.start();
      await h.maintenance.idle();
      assert.equal(h.store.sandboxes.get(1000)?.state, "FAILED");
      assert.ok((await simVms(h))["1000"], "the destroy failed");
      assert.deepEqual(
        h.maintenance.lastPass?.errors.map((e) => [e.step, e.vmid]),
        [
          ["recovery", 1000],
          ["reconciler", 1000],
        ],
      );
      assert.deepEqual([...h.maintenance.recovery.interrupted], [1000]);
      const inventory = await h.maintenance.inventory();
      assert.deepEqual(
        inventory.findings.map((f) => [f.code, f.reconcile]),
        [["vm_left_behind", "remove the VM (start-up recovery's rollback did not finish)"]],
      );

      // A daemon restarted now would still know the rollback is unfinished.
      const next = new MaintenanceService(h.ctx, h.sandboxes, { scheduler: h.scheduler });
      next.prepare();
      assert.deepEqual([...next.recovery.interrupted], [1000]);

      await clearFaults(h.sim.dir);
      h.scheduler.advance(30_000);
      await h.maintenance.idle();
      assert.equal((await simVms(h))["1000"], undefined);
      assert.equal(h.maintenance.recovery.interrupted.size, 0);
      assert.deepEqual(h.maintenance.lastPass?.errors, []);
    } finally {
      await h.maintenance.stop(1000);
      h.cleanup();
    }
  });
});

describe("periodic task", () => {
  function task(
    h: { clock: FakeClock; scheduler: FakeScheduler },
    run: (signal: AbortSignal) => Promise<void>,
  ) {
    return new PeriodicTask({
      name: "t",
      intervalMs: 30_000,
      scheduler: h.scheduler,
      log,
      run: ({ signal }) => run(signal),
    });
  }

  test("runs at start, then 30 s after each pass ended; a failed pass does not stop it", async () => {
    const clock = new FakeClock(0);
    const scheduler = new FakeScheduler(clock);
    const starts: number[] = [];
    const t = task({ clock, scheduler }, async () => {
      starts.push(clock.ms);
      if (starts.length === 2) throw new Error("boom");
    });
    t.start();
    await t.idle();
    assert.deepEqual(starts, [0]);
    scheduler.advance(29_999);
    await t.idle();
    assert.deepEqual(starts, [0]);
    scheduler.advance(1);
    await t.idle();
    assert.deepEqual(starts, [0, 30_000]);
    scheduler.advance(30_000);
    await t.idle();
    assert.deepEqual(starts, [0, 30_000, 60_000], "the failed pass was followed by the next");
    assert.equal(t.completedPasses, 3);
    assert.ok(await t.stop(100));
    assert.deepEqual(scheduler.pending, [], "no pass is left scheduled after stop");
    scheduler.advance(60_000);
    t.start();
    await t.idle();
    assert.equal(starts.length, 3);
  });

  test("stop waits for the running pass; past the grace it aborts it", async () => {
    const clock = new FakeClock(0);
    const scheduler = new FakeScheduler(clock);
    let finish!: () => void;
    const quick = task({ clock, scheduler }, () => new Promise<void>((resolve) => (finish = resolve)));
    quick.start();
    const stopping = quick.stop(5_000);
    finish();
    assert.equal(await stopping, true);

    let aborted = false;
    const stuck = task(
      { clock, scheduler },
      (signal) =>
        new Promise<void>((_, reject) =>
          signal.addEventListener("abort", () => {
            aborted = true;
            reject(signal.reason);
          }),
        ),
    );
    stuck.start();
    assert.equal(await stuck.stop(20), false);
    assert.equal(aborted, true);
    assert.equal(stuck.busy, false);
  });
});

describe("idle stop", () => {
  const signals = () => ({ stopping: new AbortController().signal, signal: new AbortController().signal });

  test("an exec in flight keeps a sandbox running however long it takes; its end counts as use; a whole quiet window after it stops the sandbox", async () => {
    const h = harness();
    try {
      const { vmid } = await h.sandboxes.create({ profile: "yolo-ephemeral" }, op());
      const pass = () => h.maintenance.idleStop.pass(signals());
      let endExec: () => void = () => {};
      const exec = h.sandboxes.activity.during(
        vmid,
        () => new Promise<void>((resolve) => (endExec = resolve)),
      );
      assert.equal((await pass()).watched, 0, "a sandbox with an exec in flight is in use");
      h.clock.ms += 45 * 60_000;
      assert.deepEqual((await pass()).stopped, []);
      endExec();
      await exec;
      assert.equal((await pass()).watched, 1);
      h.clock.ms += 29 * 60_000;
      assert.deepEqual((await pass()).stopped, [], "29 minutes after the exec ended: not yet");
      h.clock.ms += 2 * 60_000;
      assert.deepEqual((await pass()).stopped, [vmid], "past the 30-minute default window: stopped");
      const row = h.store.sandboxes.get(vmid);
      assert.equal(row?.state, "STOPPED");
      const event = h.store.events.listForSandbox(vmid).find((e) => e.kind === "sandbox.idle_stop");
      assert.equal(event?.payload?.["window_minutes"], 30);
      assert.ok(Number(event?.payload?.["idle_for_minutes"]) >= 30);
    } finally {
      h.cleanup();
    }
  });

  test("a warm pool member is never idle-stopped: it waits, unused, for a claim", async () => {
    const h = harness();
    try {
      const { vmid } = await h.sandboxes.create({ profile: "yolo-ephemeral" }, op());
      h.store.sandboxes.update(vmid, { pool: "yolo-ephemeral" });
      const pass = () => h.maintenance.idleStop.pass(signals());
      assert.equal((await pass()).watched, 0);
      h.clock.ms += 120 * 60_000;
      assert.deepEqual((await pass()).stopped, []);
      assert.equal(h.store.sandboxes.get(vmid)?.state, "RUNNING");
    } finally {
      h.cleanup();
    }
  });

  test("a Proxmox error counts as use: the window starts again", async () => {
    const h = harness();
    try {
      const { vmid } = await h.sandboxes.create({ profile: "yolo-ephemeral" }, op());
      const pass = () => h.maintenance.idleStop.pass(signals());
      await pass();
      h.clock.ms += 20 * 60_000;
      await setControl(h.sim.dir, {}, ["http500=call=GET /cluster/resources"]);
      assert.equal((await pass()).errors.length, 1);
      await clearFaults(h.sim.dir);
      h.clock.ms += 20 * 60_000;
      assert.deepEqual((await pass()).stopped, [], "40 minutes quiet, but not seen quiet for the last 20");
      h.clock.ms += 11 * 60_000;
      assert.deepEqual((await pass()).stopped, [vmid]);
    } finally {
      h.cleanup();
    }
  });
});
