/**
 * kill -9 of the daemon in the middle of `session create`, `session stop`, `session resume` and
 * `workspace rebind`, then a restart on the same state (docs/workspaces-design.md §10.2, §12). After
 * start-up recovery: the workspace's bytes are intact; its record says what Proxmox shows (attached to a
 * live sandbox whose scsi1 is the volume, or detached and referenced by nobody); at most one VM config
 * references the volume; no workspace_ops row is left; `workspace check` has no error finding; the
 * session is running on a live sandbox or stopped with no current sandbox; and `session resume` and
 * `session stop` work afterwards. Mid-task kills use the simulator's slow tasks, as
 * test/integration/workspace-crash.test.ts does. Real daemon and CLI, both backends.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import type { WorkspaceFinding } from "../../src/protocol/workspace.js";
import type { BackendKind } from "../helpers/simhost.js";
import { inspect, setControl } from "../pvesim/harness.js";
import { MaintenanceHost, STUCK_STATES } from "./maintenance-host.js";
import { volumeFile, writeData } from "./workspace-volume.js";

const PROFILE = "yolo-workspace";
const TEMPLATE = 9000;
const DEFAULT_KNOBS = { task_ms: 50, stop_ms: 50, clone_ms: 200, start_ms: 100, agent_ready_ms: 300 };

interface WsRow {
  id: string;
  name: string;
  state: string;
  volid: string;
  holder_vmid: number;
  attached_vmid: number | null;
  lease_owner: string | null;
}

interface SessionRow {
  id: string;
  name: string;
  current_vmid: number | null;
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`kill -9 during session operations and rebind, then restart (${kind} backend)`, () => {
    let m: MaintenanceHost;
    let file = "";
    /** sha256 of the volume's first 2 MiB (the first MiB and the data written at 1 MiB), before any kill. */
    let bytes = "";

    before(async () => {
      m = await MaintenanceHost.start(kind);
      await setControl(m.h.sim.dir, DEFAULT_KNOBS);
      const made = await m.h.json<{ volid: string }>(["workspace", "create", "--name", "kw", "--size", "1G"]);
      assert.equal(made.code, 0, made.stderr);
      file = await volumeFile(m.h, made.body.volid);
      writeData(file);
      bytes = firstBytes(file);
    });
    after(async () => {
      await m.stop();
    });

    function firstBytes(path: string): string {
      const buffer = Buffer.alloc(2 << 20);
      const fd = openSync(path, "r");
      try {
        readSync(fd, buffer, 0, buffer.length, 0);
      } finally {
        closeSync(fd);
      }
      return createHash("sha256").update(buffer).digest("hex");
    }

    function ws(): WsRow {
      return m.db((d) => d.prepare("SELECT * FROM workspaces WHERE name = 'kw'").get()) as WsRow;
    }

    function session(name: string): SessionRow | undefined {
      return m.db((d) => d.prepare("SELECT * FROM sessions WHERE name = ?").get(name)) as
        | SessionRow
        | undefined;
    }

    function sandboxState(vmid: number): string | undefined {
      return (
        m.db((d) => d.prepare("SELECT state FROM sandboxes WHERE vmid = ?").get(vmid)) as
          | { state: string }
          | undefined
      )?.state;
    }

    function opsLeft(): Array<{ kind: string; step: string }> {
      return m.db((d) => d.prepare("SELECT kind, step FROM workspace_ops").all()) as Array<{
        kind: string;
        step: string;
      }>;
    }

    /**
     * The design's invariant after every row of §10.2, plus the session's: what a user relies on after
     * a crash. Returns the session's state.
     */
    async function assertRecovered(name: string): Promise<"running" | "stopped"> {
      assert.deepEqual(opsLeft(), [], "no workspace_ops row is left");
      assert.equal(firstBytes(file), bytes, "the workspace's bytes are intact");
      const w = ws();
      assert.equal(w.state, "ready");
      const vms = await inspect(m.h.sim.dir, (ctx) =>
        Object.fromEntries(
          Object.values(ctx.state.vms).map((vm) => [
            vm.vmid,
            { status: vm.runtime.status, lock: vm.config["lock"] },
          ]),
        ),
      );
      const refs = await m.referencing(w.volid, w.holder_vmid);
      if (w.attached_vmid === null) {
        assert.deepEqual(refs, [], "detached, and no config references the volume");
        assert.equal(w.lease_owner, null, "a detached workspace has no lease");
      } else {
        assert.deepEqual(
          refs,
          [{ vmid: w.attached_vmid, keys: ["scsi1"] }],
          "only the recorded sandbox references it",
        );
        assert.ok(vms[w.attached_vmid], `the attached sandbox ${w.attached_vmid} has a VM`);
        assert.ok(
          !["DESTROYED", "FAILED", ...STUCK_STATES].includes(sandboxState(w.attached_vmid) ?? "DESTROYED"),
          `the attached sandbox ${w.attached_vmid} is live (${sandboxState(w.attached_vmid)})`,
        );
      }
      // No row stuck before READY; every VM but the template and the holder is a live sandbox's.
      const rows = m.db((d) => d.prepare("SELECT vmid, state FROM sandboxes").all()) as Array<{
        vmid: number;
        state: string;
      }>;
      assert.deepEqual(
        rows.filter((r) => STUCK_STATES.includes(r.state)),
        [],
        "no sandbox stays before READY",
      );
      const live = new Set(rows.filter((r) => !["DESTROYED", "FAILED"].includes(r.state)).map((r) => r.vmid));
      const orphans = Object.keys(vms)
        .map(Number)
        .filter((vmid) => vmid !== TEMPLATE && vmid !== w.holder_vmid && !live.has(vmid));
      assert.deepEqual(orphans, [], "no VM is orphaned");
      assert.deepEqual(
        Object.entries(vms)
          .filter(([, vm]) => vm.lock !== undefined)
          .map(([vmid]) => vmid),
        [],
        "no VM is left locked",
      );
      const check = await m.h.json<{ findings: WorkspaceFinding[] }>(["workspace", "check", "kw"]);
      assert.deepEqual(
        check.body.findings.filter((f) => f.severity === "error"),
        [],
        "workspace check has no error finding",
      );
      assert.equal(check.code, 0);

      const s = session(name);
      assert.ok(s, `session ${name} exists`);
      const shown = await m.h.json<{ session: { state: string; current_vmid?: number } }>([
        "session",
        "show",
        name,
      ]);
      assert.equal(shown.code, 0, shown.stderr);
      if (shown.body.session.state === "stopped") {
        assert.equal(s.current_vmid, null, "a stopped session has no current sandbox");
        return "stopped";
      }
      const vmid = s.current_vmid!;
      // RUNNING; or STOPPED when an interrupted rebind put the workspace back on the old sandbox.
      const sandbox = sandboxState(vmid);
      assert.ok(
        sandbox === "RUNNING" || sandbox === "STOPPED",
        `a running session's sandbox is live (${sandbox})`,
      );
      assert.equal(vms[vmid]?.status, sandbox === "RUNNING" ? "running" : "stopped", "as its VM is");
      assert.equal(w.attached_vmid, vmid, "with the session's workspace attached");
      assert.equal(w.lease_owner, `session:${s.id}`, "under the session's lease");
      return "running";
    }

    /** resume and stop work afterwards; the session ends stopped, the workspace detached. */
    async function resumeAndStop(name: string, state: "running" | "stopped"): Promise<void> {
      if (state === "running") {
        const stopped = await m.h.cli(["session", "stop", name]);
        assert.equal(stopped.code, 0, stopped.stderr);
      }
      const resumed = await m.h.json<{ session: { state: string }; sandbox: { vmid: number } }>([
        "session",
        "resume",
        name,
      ]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal(resumed.body.session.state, "running");
      assert.equal(await assertRecovered(name), "running");
      const stopped = await m.h.cli(["session", "stop", name]);
      assert.equal(stopped.code, 0, stopped.stderr);
      assert.equal(await assertRecovered(name), "stopped");
      assert.equal(ws().attached_vmid, null);
    }

    /** kill -9 the daemon in the middle of `args` (see MaintenanceHost.killDuringCli) and restart it. */
    async function killDuring(
      args: string[],
      knobs: Record<string, number>,
      ready: (stderr: string) => Promise<boolean> | boolean,
    ): Promise<void> {
      await m.killDuringCli(args, knobs, ready, DEFAULT_KNOBS);
    }

    /** The outcome start-up recovery reported for the last interrupted rebind. */
    function recoveredRebind(): string | undefined {
      const rows = m.db((d) =>
        d.prepare("SELECT json FROM events WHERE kind = 'workspace.recovered' ORDER BY id").all(),
      ) as Array<{ json: string }>;
      return rows
        .map((r) => JSON.parse(r.json) as { op_kind: string; outcome: string })
        .filter((e) => e.op_kind === "rebind")
        .at(-1)?.outcome;
    }

    const taskRunning = (type: string) =>
      inspect(m.h.sim.dir, (ctx) => ctx.state.tasks.some((t) => t.type === type && t.phase !== "done"));

    test("session create, killed while the sandbox is cloned", async () => {
      await killDuring(
        ["session", "create", "--name", "k1", "--profile", PROFILE, "--workspace", "kw"],
        { clone_ms: 3000 },
        async (stderr) => stderr.includes("cloning template") && (await taskRunning("qmclone")),
      );
      await resumeAndStop("k1", await assertRecovered("k1"));
    });

    test("session create, killed while the sandbox starts", async () => {
      await killDuring(
        ["session", "create", "--name", "k2", "--profile", PROFILE, "--workspace", "kw"],
        { start_ms: 3000 },
        async (stderr) => stderr.includes("starting the VM") && (await taskRunning("qmstart")),
      );
      await resumeAndStop("k2", await assertRecovered("k2"));
    });

    test("session create, killed while waiting for the guest", async () => {
      await killDuring(
        ["session", "create", "--name", "k3", "--profile", PROFILE, "--workspace", "kw"],
        { agent_ready_ms: 3000 },
        (stderr) => stderr.includes("waiting for the guest"),
      );
      await resumeAndStop("k3", await assertRecovered("k3"));
    });

    test("session stop, killed while the sandbox is destroyed", async () => {
      const resumed = await m.h.cli(["session", "resume", "k1"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      const vmid = session("k1")!.current_vmid!;
      await killDuring(
        ["session", "stop", "k1"],
        { task_ms: 3000 },
        async (stderr) =>
          stderr.includes("destroying") &&
          (await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(vmid)]?.config["lock"] === "destroyed")),
      );
      const state = await assertRecovered("k1");
      assert.equal(state, "stopped", "the stop the user asked for is finished");
      assert.equal(sandboxState(vmid), "DESTROYED");
      await resumeAndStop("k1", state);
    });

    test("session stop, killed while the sandbox is being stopped", async () => {
      const resumed = await m.h.cli(["session", "resume", "k1"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      const vmid = session("k1")!.current_vmid!;
      // The session's workspace is attached: the sandbox is shut down cleanly (qmshutdown), not stopped.
      await killDuring(
        ["session", "stop", "k1"],
        { shutdown_ms: 3000 },
        async (stderr) => stderr.includes("destroying") && (await taskRunning("qmshutdown")),
      );
      const state = await assertRecovered("k1");
      assert.equal(state, "stopped", "the stop the user asked for is finished");
      assert.equal(sandboxState(vmid), "DESTROYED");
      await resumeAndStop("k1", state);
    });

    test("session resume, killed while the sandbox is cloned", async () => {
      await killDuring(
        ["session", "resume", "k2"],
        { clone_ms: 3000 },
        async (stderr) => stderr.includes("cloning template") && (await taskRunning("qmclone")),
      );
      await resumeAndStop("k2", await assertRecovered("k2"));
    });

    test("workspace rebind of a session's workspace, killed while the new sandbox starts (after the detach)", async () => {
      const resumed = await m.h.cli(["session", "resume", "k3"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      const old = session("k3")!.current_vmid!;
      await killDuring(
        ["workspace", "rebind", "kw", "--profile", PROFILE],
        { start_ms: 3000 },
        async (stderr) =>
          stderr.includes("starting the VM") && ws().attached_vmid !== old && (await taskRunning("qmstart")),
      );
      const state = await assertRecovered("k3");
      assert.equal(state, "running", "the session keeps its workspace");
      const now = session("k3")!.current_vmid!;
      const outcome = recoveredRebind();
      if (now === old) {
        // The new sandbox did not come up in time: the workspace is back on the old one, stopped.
        assert.equal(sandboxState(old), "STOPPED");
        assert.equal(outcome, "rolled_back");
      } else {
        assert.equal(sandboxState(now), "RUNNING", "the session follows its workspace to the new sandbox");
        assert.equal(sandboxState(old), "DESTROYED", "and the old sandbox is destroyed, as rebind does");
        assert.equal(outcome, "committed");
      }
      await resumeAndStop("k3", state);
    });

    test("workspace rebind of a sandbox's workspace, killed while the new sandbox starts (after the detach)", async () => {
      const made = await m.h.json<{ vmid: number }>([
        "sandbox",
        "new",
        "--profile",
        PROFILE,
        "--workspace",
        "kw",
      ]);
      assert.equal(made.code, 0, made.stderr);
      const old = made.body.vmid;
      assert.equal(ws().attached_vmid, old);
      await killDuring(
        ["workspace", "rebind", "kw", "--profile", PROFILE],
        { start_ms: 3000 },
        async (stderr) =>
          stderr.includes("starting the VM") && ws().attached_vmid !== old && (await taskRunning("qmstart")),
      );
      assert.deepEqual(opsLeft(), [], "no workspace_ops row is left");
      assert.equal(firstBytes(file), bytes, "the workspace's bytes are intact");
      const w = ws();
      const refs = await m.referencing(w.volid, w.holder_vmid);
      assert.ok(w.attached_vmid !== null, "the workspace is on a sandbox again");
      assert.deepEqual(refs, [{ vmid: w.attached_vmid, keys: ["scsi1"] }]);
      assert.equal(w.lease_owner, `sandbox:${w.attached_vmid}`);
      if (w.attached_vmid === old) {
        assert.equal(sandboxState(old), "STOPPED", "back on the old one, stopped");
        assert.equal(recoveredRebind(), "rolled_back");
      } else {
        assert.equal(sandboxState(w.attached_vmid), "RUNNING", "or on the new one, running");
        assert.equal(sandboxState(old), "DESTROYED", "and the old one destroyed");
        assert.equal(recoveredRebind(), "committed");
      }
      const check = await m.h.json<{ findings: WorkspaceFinding[] }>(["workspace", "check", "kw"]);
      assert.deepEqual(
        check.body.findings.filter((f) => f.severity === "error"),
        [],
      );
      const destroyed = await m.h.cli(["sandbox", "destroy", "--force", String(w.attached_vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      assert.equal(ws().attached_vmid, null);
      await resumeAndStop("k3", "stopped");
    });
  });
}
