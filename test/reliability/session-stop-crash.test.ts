/**
 * kill -9 of the daemon inside each Proxmox call of `session stop` (the forced destroy of the session's
 * sandbox, its workspace attached: clean shutdown, stop, the workspace's disk unplugged, destroy), then
 * a restart. Each fault point has its own session; the stops are held one after the other inside their
 * calls by the simulator's `hang_calls` (an alternation naming each sandbox's VMID), so one kill -9
 * interrupts them all. After the first maintenance pass, for each: the stop the user asked for is
 * finished (session stopped, no current sandbox; sandbox DESTROYED and its VM gone), the workspace is
 * detached and released, no config references its volume, its bytes are intact, no workspace_ops or
 * sandbox_ops row is left, `workspace check` finds no error, and the session resumes. Complements
 * test/integration/session-crash.test.ts (kills timed by slow tasks). Real daemon, API backend.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { call } from "../../src/cli/client.js";
import { sessionCreate, sessionResume, sessionStop } from "../../src/protocol/session.js";
import { workspaceCheck } from "../../src/protocol/workspace.js";
import { type Held, MaintenanceHost, STUCK_STATES } from "../integration/maintenance-host.js";
import { volumeBackingFile } from "../integration/workspace-volume.js";
import { setControl } from "../pvesim/harness.js";

const PROFILE = "yolo-workspace";
const MiB = 1024 * 1024;
const DATA_AT = 16 * MiB;
const N = String.raw`/nodes/pve/qemu/V`;
const task = (type: string) => String.raw`^GET /nodes/pve/tasks/UPID:[^/]*:${type}:V:[^/]*/status$`;

/** The calls of a session stop, `V` the sandbox's VMID (as the call log shows them). */
const POINTS: Array<{ what: string; call: string }> = [
  { what: "the clean shutdown request", call: String.raw`^POST ${N}/status/shutdown$` },
  { what: "the shutdown's finished task (VM down, not recorded)", call: task("qmshutdown") },
  { what: "the stop request after it", call: String.raw`^POST ${N}/status/stop$` },
  { what: "unplugging the workspace's disk", call: String.raw`^PUT ${N}/config$` },
  { what: "the destroy request", call: String.raw`^DELETE ${N}$` },
  { what: "the destroy's finished task (VM gone, not recorded)", call: task("qmdestroy") },
];

interface Run {
  what: string;
  call: string;
  session: string;
  workspace: string;
  vmid: number;
  digest: string;
  held?: Held;
}

describe("kill -9 inside each Proxmox call of session stop, then restart (api backend)", () => {
  let m: MaintenanceHost;
  const runs: Run[] = POINTS.map((point, i) => ({
    ...point,
    session: `k${i}`,
    workspace: `kw${i}`,
    vmid: 0,
    digest: "",
  }));
  const rpc = () => ({ socketPath: m.h.host.socketPath, timeoutMs: 600_000 });

  before(async () => {
    m = await MaintenanceHost.start("api", "proxmox_command_timeout: 10m\nproxmox_max_reads: 64\n");
    await setControl(m.h.sim.dir, {
      clone_ms: 50,
      start_ms: 30,
      stop_ms: 20,
      shutdown_ms: 20,
      agent_ready_ms: 60,
      task_ms: 20,
    });
    for (let i = 0; i < runs.length; i += 3) {
      await Promise.all(
        runs.slice(i, i + 3).map(async (run) => {
          const made = await call(rpc(), sessionCreate, {
            name: run.session,
            profile: PROFILE,
            workspace_create: run.workspace,
            workspace_size_gb: 1,
          });
          run.vmid = made.sandbox.vmid;
          const file = await volumeBackingFile(m.h, made.workspace.volid);
          const fd = openSync(file, "r+");
          try {
            writeSync(fd, randomBytes(MiB), 0, MiB, DATA_AT);
          } finally {
            closeSync(fd);
          }
          run.digest = await digest(made.workspace.volid);
        }),
      );
    }
  });
  after(async () => {
    await m.stop();
  });

  async function digest(volid: string): Promise<string> {
    const fd = openSync(await volumeBackingFile(m.h, volid), "r");
    try {
      const bytes = Buffer.alloc(MiB);
      readSync(fd, bytes, 0, MiB, DATA_AT);
      return createHash("sha256").update(bytes).digest("hex");
    } finally {
      closeSync(fd);
    }
  }

  /** No row before READY; every VM is the template, a workspace holder or a live sandbox's. */
  async function assertNoOrphan(): Promise<void> {
    const rows = m.db((d) => d.prepare("SELECT vmid, state FROM sandboxes").all()) as Array<{
      vmid: number;
      state: string;
    }>;
    assert.deepEqual(
      rows.filter((r) => STUCK_STATES.includes(r.state)),
      [],
      "no sandbox stays before READY",
    );
    const known = new Set([
      9000,
      ...rows.filter((r) => !["DESTROYED", "FAILED"].includes(r.state)).map((r) => r.vmid),
      ...(
        m.db((d) => d.prepare("SELECT holder_vmid FROM workspaces").all()) as Array<{ holder_vmid: number }>
      ).map((r) => r.holder_vmid),
    ]);
    const vms = await m.simVms();
    assert.deepEqual(
      Object.keys(vms)
        .map(Number)
        .filter((vmid) => !known.has(vmid)),
      [],
      "no VM is orphaned",
    );
    assert.deepEqual(
      Object.entries(vms)
        .filter(([, vm]) => vm.lock !== undefined)
        .map(([vmid, vm]) => `${vmid}:${vm.lock}`),
      [],
      "no VM is left locked",
    );
  }

  const pattern = (run: Run) => run.call.replaceAll("V", String(run.vmid));

  test("every stop held at its point, one kill -9, one restart: no op left, nothing orphaned", async (t) => {
    const t0 = Date.now();
    const held: Run[] = [];
    for (const run of runs) {
      const hang = [...held, run].map((r) => `(?:${pattern(r)})`).join("|");
      run.held = await m.holdRequest(
        `session stop ${run.session}`,
        () => call(rpc(), sessionStop, { session: run.session }),
        hang,
        (calls) => calls.some((c) => new RegExp(pattern(run)).test(c)),
      );
      held.push(run);
      t.diagnostic(`${Date.now() - t0} ms: session ${run.session} held in ${run.what}`);
    }
    await m.killHeldAndRestart(runs.map((run) => run.held!));
    t.diagnostic(`${Date.now() - t0} ms: restarted, first maintenance pass done`);
    const ops = m.db((d) => ({
      workspace: d.prepare("SELECT kind, step FROM workspace_ops").all(),
      sandbox: d.prepare("SELECT * FROM sandbox_ops").all(),
    }));
    assert.deepEqual(ops, { workspace: [], sandbox: [] }, "no intent is left");
    await assertNoOrphan();
  });

  for (const run of runs) {
    test(`killed inside ${run.what}: the session is stopped, the workspace detached and intact`, async () => {
      assert.ok(run.held, "the stop was held and killed (the test above)");
      const session = m.db((d) =>
        d.prepare("SELECT id, current_vmid FROM sessions WHERE name = ?").get(run.session),
      ) as { id: string; current_vmid: number | null };
      assert.equal(session.current_vmid, null, "the session has no current sandbox");
      assert.equal(m.row(run.vmid)?.state, "DESTROYED");
      assert.equal((await m.simVms())[run.vmid], undefined, "its VM is gone");
      const ws = m.db((d) => d.prepare("SELECT * FROM workspaces WHERE name = ?").get(run.workspace)) as {
        state: string;
        volid: string;
        holder_vmid: number;
        attached_vmid: number | null;
        lease_owner: string | null;
      };
      assert.equal(ws.state, "ready");
      assert.equal(ws.attached_vmid, null, "the workspace is detached");
      assert.equal(ws.lease_owner, null, "and released");
      assert.deepEqual(await m.referencing(ws.volid, ws.holder_vmid), [], "no config references its volume");
      assert.equal(await digest(ws.volid), run.digest, "its bytes are intact");
      const check = await call(rpc(), workspaceCheck, { workspace: run.workspace });
      assert.deepEqual(
        check.findings.filter((f) => f.severity === "error"),
        [],
      );
      const stopped = m.db((d) =>
        d
          .prepare("SELECT msg FROM events WHERE kind = 'session.stopped' AND sandbox_vmid = ? ORDER BY id")
          .all(run.vmid),
      ) as Array<{ msg: string }>;
      assert.deepEqual(
        stopped.map((e) => e.msg),
        [`session ${run.session} stopped: sandbox ${run.vmid} destroyed (finished after a restart)`],
      );
    });
  }

  test("afterwards a session resumes with its workspace and stops again", async () => {
    const run = runs[runs.length - 1]!;
    const resumed = await call(rpc(), sessionResume, { session: run.session });
    assert.equal(resumed.session.state, "running");
    assert.equal(resumed.workspace.attached_vmid, resumed.sandbox.vmid);
    assert.equal(await digest(resumed.workspace.volid), run.digest);
    const stopped = await m.h.cli(["session", "stop", run.session]);
    assert.equal(stopped.code, 0, stopped.stderr);
    await assertNoOrphan();
  });
});
