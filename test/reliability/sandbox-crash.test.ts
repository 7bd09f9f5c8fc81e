/**
 * kill -9 of the daemon inside a given Proxmox call of sandbox destroy, stop, start, revert and
 * snapshot save, and after READY in `sandbox new` with the VM removed while the daemon is down; then a
 * restart. The simulator's `hang_calls` knob holds the daemon exactly inside the named call (logged as
 * begun, not yet carried out); the daemon is killed there, the knob cleared, and the call the dead daemon
 * sent is let through to its end before the restart (Proxmox carries out a request it received). After
 * the first maintenance pass of the new daemon: no intent left, no row stuck, the row says what Proxmox
 * shows, a `sandbox.recovered` event records it, no VM is orphaned, and a later operation on the sandbox
 * works. Real daemon and CLI, both backends.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { rpcOnce } from "../helpers/raw-rpc.js";
import type { BackendKind } from "../helpers/simhost.js";
import { MaintenanceHost, type SandboxBody, until } from "../integration/maintenance-host.js";
import { callLogPath } from "../pvesim/call-log.js";
import { runTool, setControl } from "../pvesim/harness.js";

/** Fault points: regular expressions over `METHOD /path` as the simulator logs calls. */
const CALL = {
  stop: String.raw`^POST /nodes/[^/]+/qemu/\d+/status/stop$`,
  start: String.raw`^POST /nodes/[^/]+/qemu/\d+/status/start$`,
  destroy: String.raw`^DELETE /nodes/[^/]+/qemu/\d+$`,
  /** The poll of the destroy's task: Proxmox has removed the VM, the daemon has not recorded it. */
  destroyDone: String.raw`^GET /nodes/[^/]+/tasks/[^/]*:qmdestroy:[^/]*/status$`,
  stopDone: String.raw`^GET /nodes/[^/]+/tasks/[^/]*:qmstop:[^/]*/status$`,
  rollback: String.raw`^POST /nodes/[^/]+/qemu/\d+/snapshot/clean/rollback$`,
  snapshot: String.raw`^POST /nodes/[^/]+/qemu/\d+/snapshot$`,
};

/** Whether a process runs (a zombie no longer does: it waits only to be reaped). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

interface Event {
  kind: string;
  msg: string;
  json: string | null;
}

// The backends run side by side, each on its own simulator and daemon.
describe("kill -9 inside a Proxmox call, both backends", { concurrency: 2 }, () => {
  for (const kind of ["shell", "api"] as BackendKind[]) {
    // One test at a time on a host (they kill its daemon); `concurrency` is inherited, so it is set again here.
    describe(`kill -9 inside a Proxmox call of a sandbox operation, then restart (${kind} backend)`, {
      concurrency: 1,
    }, () => {
      let m: MaintenanceHost;
      before(async () => {
        m = await MaintenanceHost.start(kind);
      });
      after(async () => {
        await m.stop();
      });

      /** Set-up over the socket (the RPC the CLI sends, without a CLI process); the operations killed use the CLI. */
      async function viaRpc(method: string, params: unknown): Promise<SandboxBody> {
        const answer = await rpcOnce(m.h.host.socketPath, method, params);
        assert.ok(answer.result, `${method}: ${JSON.stringify(answer.error)}`);
        return answer.result as SandboxBody;
      }

      async function newSandbox(): Promise<number> {
        const body = await viaRpc("sandbox.create", { profile: "yolo-ephemeral" });
        assert.equal(body.state, "RUNNING");
        return body.vmid;
      }

      async function stopSandbox(vmid: number): Promise<void> {
        assert.equal((await viaRpc("sandbox.stop", { vmid })).state, "STOPPED");
      }

      function logLines(): string[] {
        const path = callLogPath(m.h.sim.dir);
        return existsSync(path) ? readFileSync(path, "utf8").split("\n").filter(Boolean) : [];
      }

      /**
       * Let the held calls the dead daemon began (from line `from` on) end, as far as they can: an HTTPS
       * request or pvesh runs to its end, but a pvesh whose reader died may die of SIGPIPE while writing
       * its task log, unlogged. So this waits for the ends within a bound and then goes on; recovery
       * itself waits for any Proxmox task still running on the VM.
       */
      async function deadCallsEnded(from: number, held: RegExp): Promise<void> {
        const parsed = () =>
          logLines().map(
            (line) =>
              JSON.parse(line) as {
                e: string;
                id: string;
                face?: string;
                pid?: number;
                method?: string;
                path?: string;
              },
          );
        const begun = parsed()
          .slice(from)
          .filter((line) => line.e === "b" && held.test(`${line.method} ${line.path}`));
        await until(
          "the dead daemon's held calls to end",
          () => {
            const ended = new Set(
              parsed()
                .filter((line) => line.e === "e")
                .map((line) => line.id),
            );
            // A pvesh that is no longer running has ended, logged or not (its reader died).
            const over = (call: (typeof begun)[number]) =>
              ended.has(call.id) || (call.face === "pvesh" && call.pid !== undefined && !running(call.pid));
            return begun.every(over) ? true : undefined;
          },
          30_000,
        ).catch(() => undefined);
      }

      /**
       * Run the CLI with `args` while calls matching `hang` are held; once one has begun (and `ready`, if
       * given, agrees), kill -9 the daemon, let the held call through to its end, and restart.
       */
      async function killInside(args: string[], hang: string, ready?: () => Promise<boolean>): Promise<void> {
        const from = logLines().length;
        await setControl(m.h.sim.dir, { hang_calls: hang });
        const child = spawn(process.execPath, [AGENTLAB_BIN, "--socket", m.h.host.socketPath, ...args], {
          stdio: ["ignore", "pipe", "pipe"],
        });
        let stderr = "";
        child.stderr.on("data", (chunk) => (stderr += chunk));
        const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
        const pattern = new RegExp(hang);
        await until(
          `a call matching ${hang} (${args.join(" ")})`,
          async () => {
            const held = logLines()
              .slice(from)
              .map((line) => JSON.parse(line) as { e: string; method?: string; path?: string })
              .some((line) => line.e === "b" && pattern.test(`${line.method} ${line.path}`));
            return held && (ready === undefined || (await ready())) ? true : undefined;
          },
          120_000,
        ).catch((error: Error) => {
          throw new Error(`${error.message}; the CLI printed: ${stderr}`);
        });
        m.daemon.proc.kill("SIGKILL");
        assert.equal(await m.daemon.exited, "SIGKILL");
        assert.equal(await closed, 1, `the CLI reports the lost daemon (${stderr})`);
        await setControl(m.h.sim.dir, { hang_calls: "" });
        // Proxmox carries out what it received: the held call (a pvesh process, an HTTPS request) runs to
        // its end, as on a real host, before the new daemon looks.
        await deadCallsEnded(from, pattern);
        await m.restart();
      }

      function events(vmid: number, kindName: string): Event[] {
        return m.db((d) =>
          d
            .prepare("SELECT kind, msg, json FROM events WHERE sandbox_vmid = ? AND kind = ? ORDER BY id")
            .all(vmid, kindName),
        ) as Event[];
      }

      function recovered(vmid: number): Array<{ op_kind: string; outcome: string; msg: string }> {
        return events(vmid, "sandbox.recovered").map((e) => ({
          ...(JSON.parse(e.json ?? "{}") as { op_kind: string; outcome: string }),
          msg: e.msg,
        }));
      }

      function intentsLeft(): number {
        return (m.db((d) => d.prepare("SELECT count(*) AS n FROM sandbox_ops").get()) as { n: number }).n;
      }

      /** Right after the first pass of the new daemon: settled, without waiting for reconciler passes. */
      async function assertSettled(vmid: number, state: string, vmStatus: string | undefined): Promise<void> {
        assert.equal(intentsLeft(), 0, "no intent is left");
        assert.equal(m.row(vmid)?.state, state, `sandbox ${vmid}: ${m.row(vmid)?.failure_reason ?? ""}`);
        assert.equal((await m.simVms())[vmid]?.status, vmStatus, "the row says what Proxmox shows");
        await m.assertNothingStuckOrOrphaned();
      }

      async function destroyWorks(vmid: number): Promise<void> {
        const result = await m.h.json<SandboxBody>(["sandbox", "destroy", String(vmid)]);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.body.state, "DESTROYED");
        assert.equal((await m.simVms())[vmid], undefined);
      }

      // Held at the task-status read after the task: the shell backend makes none when pvesh's stderr
      // proves TASK OK (transport-shell.ts endedOk), so it records the outcome right after pvesh exits and
      // there is no Proxmox call to hold in between.
      const afterTaskSkip =
        kind === "shell"
          ? "shell: no Proxmox call between pvesh's exit and the record (no status read after TASK OK)"
          : false;

      test("destroy, killed before its stop reached Proxmox: the destroy is finished", async () => {
        const vmid = await newSandbox();
        await killInside(["sandbox", "destroy", String(vmid)], CALL.stop);
        await assertSettled(vmid, "DESTROYED", undefined);
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["destroy", "finished"]],
        );
      });

      test("destroy, killed inside the destroy call (VM stopped, row RUNNING): the destroy is finished", async () => {
        const vmid = await newSandbox();
        await killInside(["sandbox", "destroy", String(vmid)], CALL.destroy);
        await assertSettled(vmid, "DESTROYED", undefined);
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["destroy", "finished"]],
        );
      });

      test("destroy, killed after Proxmox removed the VM, before the record: DESTROYED", {
        skip: afterTaskSkip,
      }, async () => {
        const vmid = await newSandbox();
        await killInside(
          ["sandbox", "destroy", String(vmid)],
          CALL.destroyDone,
          async () => !(await m.simVms())[vmid],
        );
        await assertSettled(vmid, "DESTROYED", undefined);
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["destroy", "finished"]],
        );
      });

      test("stop, killed inside the stop call: STOPPED, and it starts again", async () => {
        const vmid = await newSandbox();
        await killInside(["sandbox", "stop", String(vmid)], CALL.stop);
        await assertSettled(vmid, "STOPPED", "stopped");
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["stop", "finished"]],
        );
        const started = await m.h.json<SandboxBody>(["sandbox", "start", String(vmid)]);
        assert.equal(started.code, 0, started.stderr);
        assert.equal(started.body.state, "RUNNING");
        await destroyWorks(vmid);
      });

      test("stop, killed after Proxmox stopped the VM (row still RUNNING): STOPPED, not FAILED", {
        skip: afterTaskSkip,
      }, async () => {
        const vmid = await newSandbox();
        await killInside(["sandbox", "stop", String(vmid)], CALL.stopDone, async () =>
          (await m.simVms())[vmid]?.status === "stopped" ? true : false,
        );
        await assertSettled(vmid, "STOPPED", "stopped");
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["stop", "finished"]],
        );
        await destroyWorks(vmid);
      });

      test("start, killed inside the start call (row BOOTING): the start is finished, the VM kept", async () => {
        const vmid = await newSandbox();
        await stopSandbox(vmid);
        await killInside(["sandbox", "start", String(vmid)], CALL.start);
        // The guest may still be booting: the start's recovery waits for its address in the first pass.
        await assertSettled(vmid, "RUNNING", "running");
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["start", "finished"]],
        );
        assert.match((await m.show(vmid)).ip ?? "", /^10\.77\./);
        await destroyWorks(vmid);
      });

      test("revert, killed inside the rollback call: the revert is finished and the sandbox restarted", async () => {
        const vmid = await newSandbox();
        await killInside(["sandbox", "revert", "--force", String(vmid)], CALL.rollback);
        await assertSettled(vmid, "RUNNING", "running");
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["revert", "finished"]],
        );
        assert.deepEqual((await m.simVms())[vmid]?.snapshots, ["clean"], "the clean snapshot is kept");
        const again = await m.h.json(["sandbox", "revert", "--force", String(vmid)]);
        assert.equal(again.code, 0, again.stderr);
        await destroyWorks(vmid);
      });

      test("snapshot save, killed inside the snapshot call: recorded as taken, and it restores", async () => {
        const vmid = await newSandbox();
        await stopSandbox(vmid);
        await killInside(["sandbox", "snapshot", "save", String(vmid), "before-crash"], CALL.snapshot);
        await assertSettled(vmid, "STOPPED", "stopped");
        // Whether Proxmox carried the request out depends on the face: pvesh runs it to its end, the
        // simulator's HTTPS face drops a request whose client is gone. Either way the record agrees.
        const taken = (await m.simVms())[vmid]?.snapshots.includes("before-crash") === true;
        assert.deepEqual(
          recovered(vmid).map((r) => [r.op_kind, r.outcome]),
          [["snapshot_save", taken ? "finished" : "undone"]],
        );
        assert.equal(events(vmid, "sandbox.snapshot.created").length, taken ? 1 : 0);
        if (!taken) {
          const saved = await m.h.json(["sandbox", "snapshot", "save", String(vmid), "before-crash"]);
          assert.equal(saved.code, 0, saved.stderr);
        }
        const restored = await m.h.json(["sandbox", "snapshot", "restore", String(vmid), "before-crash"]);
        assert.equal(restored.code, 0, restored.stderr);
        await destroyWorks(vmid);
      });

      test("sandbox new, killed after READY, VM removed while the daemon was down: DESTROYED at start-up", async () => {
        const stderr = await killNew();
        const vmid = Number(/reserved VMID (\d+)/.exec(stderr)?.[1]);
        assert.equal(m.row(vmid)?.state, "DESTROYED", "settled by start-up recovery, not reconciler passes");
        assert.equal(intentsLeft(), 0);
        const [event] = recovered(vmid);
        assert.equal(event?.op_kind, "vm_check");
        assert.match(
          event?.msg ?? "",
          /^READY -> DESTROYED: its VM no longer exists in Proxmox \(found at daemon start-up\)$/,
        );
        await m.assertNothingStuckOrOrphaned();
      });

      /** `sandbox new` held inside its clean snapshot (after READY); the VM is removed while down. */
      async function killNew(): Promise<string> {
        const from = logLines().length;
        await setControl(m.h.sim.dir, { hang_calls: CALL.snapshot });
        const child = spawn(
          process.execPath,
          [AGENTLAB_BIN, "--socket", m.h.host.socketPath, "sandbox", "new", "--profile", "yolo-ephemeral"],
          { stdio: ["ignore", "pipe", "pipe"] },
        );
        let stderr = "";
        child.stderr.on("data", (chunk) => (stderr += chunk));
        const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
        await until(
          "the clean snapshot call",
          () =>
            logLines()
              .slice(from)
              .some((line) =>
                new RegExp(CALL.snapshot).test(`${JSON.parse(line).method} ${JSON.parse(line).path}`),
              )
              ? true
              : undefined,
          120_000,
        );
        const vmid = Number(/reserved VMID (\d+)/.exec(stderr)?.[1]);
        assert.equal(m.row(vmid)?.state, "READY");
        m.daemon.proc.kill("SIGKILL");
        assert.equal(await m.daemon.exited, "SIGKILL");
        assert.equal(await closed, 1);
        await setControl(m.h.sim.dir, { hang_calls: "" });
        await deadCallsEnded(from, new RegExp(CALL.snapshot));
        for (const args of [
          ["stop", String(vmid)],
          ["destroy", String(vmid), "--purge", "1"],
        ]) {
          const result = await runTool(m.h.sim, "qm", args);
          assert.equal(result.code, 0, result.stderr);
        }
        await m.restart();
        return stderr;
      }
    });
  }
});
