import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createSim, inspect, type Sim } from "../pvesim/harness.js";

/**
 * A CLI running a worker in the foreground that is killed stops its worker, as tee_worker does
 * (pve-common RESTEnvironment.pm:445-466): the task ends, its effects are undone, the CLI reports it.
 */

function start(sim: Sim, tool: string, args: string[]) {
  const child = spawn(tool, args, { env: sim.env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal })),
  );
  return { child, done, out: () => ({ stdout, stderr }) };
}

/** Waits (generously) until the clone to `newid` has begun copying: the new VM exists with `lock: clone`. */
async function cloneRunning(sim: Sim, newid: number, child: ChildProcess): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const upid = await inspect(sim.dir, (ctx) => {
      const task = ctx.state.tasks.find(
        (t) => t.type === "qmclone" && String(t.op.params["newid"]) === String(newid),
      );
      return task?.phase === "active" && ctx.state.vms[String(newid)]?.config["lock"] === "clone"
        ? task.upid
        : undefined;
    });
    if (upid) return upid;
    assert.equal(child.exitCode, null, "the CLI is still running");
    await sleep(50);
  }
  throw new Error(`clone to ${newid} never began`);
}

async function taskAndVm(sim: Sim, upid: string, vmid: number) {
  return inspect(sim.dir, (ctx) => {
    const task = ctx.state.tasks.find((t) => t.upid === upid);
    return {
      phase: task?.phase,
      exitstatus: task?.exitstatus,
      vm: ctx.state.vms[String(vmid)],
      volumes: Object.keys(ctx.state.volumes).filter((v) => v.includes(`vm-${vmid}-`)),
    };
  });
}

describe("pvesim: a killed foreground CLI stops its worker", () => {
  let sim: Sim;
  before(() => {
    // Full clones that would run for ten minutes: only the kill can end them in this test.
    sim = createSim({ knobs: { full_clone_ms: 600_000 } });
  });
  after(() => sim.cleanup());

  it("pvesh killed with SIGTERM mid-clone: the task ends `clone failed: interrupted by signal`, the clone is gone, pvesh prints the UPID", async () => {
    const run = start(sim, "pvesh", [
      "create",
      "/nodes/pve/qemu/9000/clone",
      "--newid",
      "401",
      "--full",
      "1",
      "--output-format",
      "json",
    ]);
    const upid = await cloneRunning(sim, 401, run.child);
    run.child.kill("SIGTERM");
    const { code } = await run.done;
    const { stdout, stderr } = run.out();
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "clone failed: interrupted by signal\n");
    assert.equal(stdout.trim().split("\n").at(-1), JSON.stringify(upid));
    const after = await taskAndVm(sim, upid, 401);
    assert.equal(after.phase, "done");
    assert.equal(after.exitstatus, "clone failed: interrupted by signal");
    assert.equal(after.vm, undefined, "the new VM's config is removed");
    assert.deepEqual(after.volumes, [], "the new VM's volumes are freed");
    assert.deepEqual(
      readdirSync(join(sim.dir, "storage", "local-zfs")).filter((f) => f.includes("vm-401-")),
      [],
      "no volume file is left behind",
    );
  });

  it("qm clone interrupted with SIGINT (Ctrl-C): the same, and qm exits 255 with the task's error", async () => {
    const run = start(sim, "qm", ["clone", "9000", "402", "--full"]);
    const upid = await cloneRunning(sim, 402, run.child);
    run.child.kill("SIGINT");
    const { code } = await run.done;
    assert.equal(code, 255);
    assert.match(run.out().stderr, /^clone failed: interrupted by signal$/m);
    const after = await taskAndVm(sim, upid, 402);
    assert.equal(after.exitstatus, "clone failed: interrupted by signal");
    assert.equal(after.vm, undefined);
    assert.deepEqual(after.volumes, []);
  });
});
