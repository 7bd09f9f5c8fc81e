/**
 * Faults aimed at one call (`call=<regex>`, `nth=<N>`; test/pvesim/call-faults.ts), through the real
 * `pvesh` on PATH as the shell backend runs it: the Nth matching call meets the fault, the calls
 * before and after it do not, and each kind shows as Proxmox shows it.
 */
import assert from "node:assert/strict";
import { after, beforeEach, describe, it } from "node:test";
import { parseFault, updateControl } from "../pvesim/control.js";
import { createSim, inspect, runTool, type Sim } from "../pvesim/harness.js";

const FAST = { clone_ms: 40, start_ms: 20, stop_ms: 20, task_ms: 20, agent_ready_ms: 40 };

async function aim(sim: Sim, name: string, args: Record<string, string>): Promise<string> {
  const fault = parseFault(name);
  delete fault.args["times"];
  Object.assign(fault.args, args);
  await updateControl(sim.dir, (c) => {
    c.faults = [fault];
  });
  return fault.id;
}

const pvesh = (sim: Sim, ...args: string[]) => runTool(sim, "pvesh", [...args, "--output-format", "json"]);
const configOf = (sim: Sim, vmid: number) => pvesh(sim, "get", `/nodes/pve/qemu/${vmid}/config`);

describe("pvesim: faults aimed at the Nth matching call", () => {
  let sim: Sim;
  beforeEach(async () => {
    sim?.cleanup();
    sim = createSim({ knobs: FAST });
    const clone = await runTool(sim, "qm", ["clone", "9000", "101", "--full", "0", "--name", "sbx-101"]);
    assert.equal(clone.code, 0, clone.stderr);
  });
  after(() => sim.cleanup());

  it("http500 fails only the 2nd matching call, as a handler's die: the message on stderr, exit 255", async () => {
    await aim(sim, "http500", { call: "^GET /nodes/pve/qemu/\\d+/config$", nth: "2", message: "boom" });
    assert.equal((await pvesh(sim, "get", "/nodes/pve/qemu/9000/status/current")).code, 0, "not matching");
    assert.equal((await configOf(sim, 101)).code, 0, "1st match");
    const second = await configOf(sim, 101);
    assert.equal(second.code, 255);
    assert.equal(second.stderr, "boom\n");
    assert.equal((await configOf(sim, 101)).code, 0, "the fault was spent by its call");
  });

  it("lock kind=flock: the config PUT meets qemu-server's lock timeout, the next one does not", async () => {
    const id = await aim(sim, "lock", { kind: "flock", call: "^PUT /nodes/pve/qemu/\\d+/config$" });
    const first = await pvesh(sim, "set", "/nodes/pve/qemu/101/config", "--cores", "2");
    assert.notEqual(first.code, 0);
    assert.match(first.stderr, /can't lock file '\/var\/lock\/qemu-server\/lock-101\.conf' - got timeout/);
    assert.equal(
      (await pvesh(sim, "set", "/nodes/pve/qemu/101/config", "--cores", "2")).code,
      0,
      first.stderr,
    );
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.faultUse[id]), 1, "counted once");
  });

  it("lock kind=flock on a worker call: the worker's lock_config times out, which is the task's status", async () => {
    await aim(sim, "lock", { kind: "flock", call: "^POST /nodes/pve/qemu/\\d+/status/start$" });
    const start = await pvesh(sim, "create", "/nodes/pve/qemu/101/status/start");
    assert.equal(start.code, 0, "pvesh exits 0 whatever the task did");
    assert.match(start.stderr, /can't lock file '\/var\/lock\/qemu-server\/lock-101\.conf' - got timeout/);
    const status = await inspect(sim.dir, (ctx) => ctx.state.vms["101"]!.runtime.status);
    assert.equal(status, "stopped");
  });

  it("fail_task fails the task the aimed call started, and only that one", async () => {
    await aim(sim, "fail_task", { call: "^POST /nodes/pve/qemu/\\d+/status/start$", nth: "1" });
    const start = await pvesh(sim, "create", "/nodes/pve/qemu/101/status/start");
    assert.equal(start.stderr, "start failed: QEMU exited with code 1\n");
    const again = await pvesh(sim, "create", "/nodes/pve/qemu/101/status/start");
    assert.equal(again.stderr, "");
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["101"]!.runtime.status), "running");
  });

  it("slow_task makes the aimed call's task last `by` ms longer than its kind does", async () => {
    await aim(sim, "slow_task", { call: "^POST /nodes/pve/qemu/\\d+/status/start$", by: "1500" });
    assert.equal((await pvesh(sim, "create", "/nodes/pve/qemu/101/status/start")).code, 0);
    const task = await inspect(sim.dir, (ctx) => ctx.state.tasks.find((t) => t.type === "qmstart")!);
    assert.equal(task.endAt! - task.beginAt!, FAST.start_ms + 1500, "the model's duration, not a clock");
    assert.equal(task.exitstatus, "OK");
  });

  it("vm_vanish deletes the call's VM before the call, never a template", async () => {
    await aim(sim, "vm_vanish", { call: "^GET /nodes/pve/qemu/\\d+/config$", nth: "1" });
    assert.equal((await configOf(sim, 9000)).code, 0, "the template stays");
    await aim(sim, "vm_vanish", { call: "^GET /nodes/pve/qemu/\\d+/config$", nth: "1" });
    const gone = await configOf(sim, 101);
    assert.equal(gone.code, 2);
    assert.equal(gone.stderr, "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\n");
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["101"]), undefined);
  });

  it("parseFault refuses a call= that is no regular expression and an nth= below 1", () => {
    assert.throws(() => parseFault("http500=call=(,nth=1"), /call= is not a regular expression/);
    assert.throws(() => parseFault("http500=call=GET,nth=0"), /nth= wants a number >= 1, got '0'/);
  });
});
