import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, setControl } from "../pvesim/harness.js";
import { createWorkspace } from "./workspace-volume.js";

/**
 * Proxmox tasks are bounded by proxmox_task_timeout, not by the per-call proxmox_command_timeout; a
 * task the daemon gives up on (over its limit, or cancelled) is stopped in Proxmox before the undo, on
 * both backends. The per-call timeout here is 5s, the task limit 15s, and clones are full clones.
 */

interface ErrorBody {
  code: string;
  message: string;
  details: Record<string, unknown>;
}

/** The clone tasks to `vmid`, the VM, the template's lock and any volume left for `vmid`. */
function cloneAftermath(h: SimHost, vmid: number) {
  return inspect(h.sim.dir, (ctx) => ({
    clones: ctx.state.tasks
      .filter((t) => t.type === "qmclone" && String(t.op.params["newid"]) === String(vmid))
      .map((t) => ({ phase: t.phase, exitstatus: t.exitstatus })),
    vm: ctx.state.vms[String(vmid)],
    templateLock: ctx.state.vms["9000"]?.config["lock"],
    volumes: Object.keys(ctx.state.volumes).filter((v) => v.includes(`vm-${vmid}-`)),
    files: readdirSync(join(h.sim.dir, "storage", "local-zfs")).filter((f) => f.includes(`vm-${vmid}-`)),
  }));
}

/** Nothing of the sandbox's VM is left, and its one clone task ended stopped with clone_vm's text. */
async function assertStoppedAndGone(h: SimHost, vmid: number): Promise<void> {
  const left = await cloneAftermath(h, vmid);
  assert.deepEqual(left.clones, [{ phase: "done", exitstatus: "clone failed: interrupted by signal" }]);
  assert.equal(left.vm, undefined, "no VM is left behind");
  assert.equal(left.templateLock, undefined, "no lock is left on the template");
  assert.deepEqual(left.volumes, [], "no volume is left behind");
  assert.deepEqual(left.files, [], "no volume file is left behind");
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`task limits (${kind} backend)`, () => {
    let h: SimHost;
    before(async () => {
      h = await startSimHost(
        kind,
        "proxmox_command_timeout: 5s\nproxmox_task_timeout: 15s\nproxmox_clone_mode: full\n",
      );
    });
    after(async () => {
      await h.stop();
    });

    test("a clone that runs longer than the per-call timeout but within the task limit succeeds", async () => {
      await setControl(h.sim.dir, { full_clone_ms: 9000 });
      const result = await h.json<{ vmid: number; state: string } & ErrorBody>([
        "new",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(result.code, 0, JSON.stringify(result.body));
      assert.equal(result.body.state, "RUNNING");
      const left = await cloneAftermath(h, result.body.vmid);
      assert.deepEqual(left.clones, [{ phase: "done", exitstatus: "OK" }]);
    });

    test("a clone over the task limit is stopped in Proxmox, leaves nothing, and the sandbox is FAILED with the reason", async () => {
      await setControl(h.sim.dir, { full_clone_ms: 600_000 });
      const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(result.body.code, "PROVISIONING_FAILED", JSON.stringify(result.body));
      assert.equal(result.body.details.cause_code, "PROXMOX_TIMEOUT");
      const vmid = Number(result.body.details.vmid);
      const reason =
        /the qmclone task ran longer than 15s \(proxmox_task_timeout\); it was stopped: clone failed: interrupted by signal/;
      assert.match(result.body.message, reason);
      const show = await h.json<{ state: string; failure_reason?: string }>(["show", String(vmid)]);
      assert.equal(show.body.state, "FAILED");
      assert.match(show.body.failure_reason ?? "", reason);
      await assertStoppedAndGone(h, vmid);
    });

    test("Ctrl-C during the clone of sandbox new stops the clone task and leaves nothing", async () => {
      await setControl(h.sim.dir, { full_clone_ms: 600_000 });
      const child = spawn(
        process.execPath,
        [AGENTLAB_BIN, "--socket", h.host.socketPath, "new", "--profile", "yolo-ephemeral"],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      let stderr = "";
      child.stderr.on("data", (chunk) => {
        stderr += chunk;
      });
      const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
      // Interrupt only once the clone is copying: its new VM exists, locked `clone`.
      let vmid: number | undefined;
      for (let i = 0; i < 1200 && vmid === undefined; i++) {
        vmid = await inspect(h.sim.dir, (ctx) => {
          const task = ctx.state.tasks.find((t) => t.type === "qmclone" && t.phase === "active");
          const newid = Number(task?.op.params["newid"]);
          return task && ctx.state.vms[String(newid)]?.config["lock"] === "clone" ? newid : undefined;
        });
        if (vmid === undefined) await sleep(50);
      }
      assert.ok(vmid !== undefined, `the clone never began: ${stderr}`);
      child.kill("SIGINT");
      const code = await closed;
      assert.equal(code, 1, stderr);
      assert.match(
        stderr,
        new RegExp(`^error: sandbox ${vmid} cancelled; what was created has been removed$`, "m"),
      );
      const show = await h.json<{ state: string; failure_reason?: string }>(["show", String(vmid)]);
      assert.equal(show.body.state, "FAILED");
      assert.match(show.body.failure_reason ?? "", /^cancelled/);
      await assertStoppedAndGone(h, vmid);
    });

    test("a full-copy workspace fork over the task limit is stopped and leaves neither a holder VM nor a fork", async () => {
      await setControl(h.sim.dir, { full_clone_ms: 9000 });
      const source = await createWorkspace<{ name: string; holder_vmid: number }>(h, "slow-src", "local");
      const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort());
      await setControl(h.sim.dir, { full_clone_ms: 600_000 });
      const failed = await h.json<ErrorBody>(["workspace", "fork", source.name, "--name", "slow-fork"]);
      assert.equal(failed.body.code, "PROXMOX_TIMEOUT", JSON.stringify(failed.body));
      assert.match(
        failed.body.message,
        /the qmclone task ran longer than 15s \(proxmox_task_timeout\); it was stopped: clone failed: interrupted by signal/,
      );
      const clones = await inspect(h.sim.dir, (ctx) =>
        ctx.state.tasks
          .filter((t) => t.type === "qmclone" && t.op.vmid === source.holder_vmid)
          .map((t) => ({ phase: t.phase, exitstatus: t.exitstatus })),
      );
      assert.deepEqual(clones, [{ phase: "done", exitstatus: "clone failed: interrupted by signal" }]);
      assert.equal(
        (await h.json<ErrorBody>(["workspace", "show", "slow-fork"])).body.code,
        "WORKSPACE_NOT_FOUND",
      );
      assert.deepEqual(
        await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort()),
        vmsBefore,
        "no holder VM was left",
      );
      assert.equal(
        await inspect(h.sim.dir, (ctx) => ctx.state.vms[String(source.holder_vmid)]?.config["lock"]),
        undefined,
        "the source holder is not left locked",
      );
    });
  });
}
