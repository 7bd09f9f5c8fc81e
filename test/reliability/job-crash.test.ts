/**
 * kill -9 of the daemon while a `job run` job's sandbox is being provisioned, then a restart: the job
 * must not stay QUEUED or RUNNING for ever, and its sandbox must not be left behind. The simulator's
 * `hang_calls` knob holds the provisioning inside a named Proxmox call; the daemon is killed there, the
 * held call let through to its end (Proxmox carries out what it received), and the daemon restarted.
 * Whatever start-up recovery decides, finishing the provisioning (the job then runs to its end) or
 * rolling it back (the job FAILED with the reason), the job ends and its sandbox settles: no row before
 * READY, no VM without a live sandbox, no intent left. Real daemon, real guest runner, real git daemon.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createSmokeRepo, type RepoServer, startRepoServer } from "../../src/cli/init/repo-server.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS } from "../helpers/simhost.js";
import { MaintenanceHost, type SandboxBody, until } from "../integration/maintenance-host.js";
import { setControl } from "../pvesim/harness.js";

interface JobBody {
  id: string;
  status: string;
  sandbox_vmid?: number;
  failure_reason?: string;
  result?: { message?: string; result?: { exit_code?: number | null; output_tail?: string } };
}

const RUN = `#!/bin/sh
echo "job-crash-marker $AGENTLAB_JOB_ID"
`;

const TERMINAL = ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"];

/** Fault points: regular expressions over `METHOD /path` as the simulator logs calls. */
const CALL = {
  /** The clone: the job's sandbox is PROVISIONING, its VM not made yet (or made unseen). */
  clone: String.raw`^POST /nodes/[^/]+/qemu/\d+/clone$`,
  /** The poll of the started VM's task: the VM runs, the daemon has not recorded it (BOOTING). */
  started: "^GET /nodes/[^/]+/tasks/[^/]*:qmstart:[^/]*/status$",
};

describe("kill -9 while a job's sandbox is provisioning, then restart (api backend)", {
  concurrency: 1,
}, () => {
  let m: MaintenanceHost;
  let root: string;
  let server: RepoServer;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-job-crash-"));
    // A fixed guest listener port: a runner keeps the report URL it fetched across a daemon restart.
    const port = await freePort();
    m = await MaintenanceHost.start("api", `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\n`);
    await setControl(m.h.sim.dir, FAST_KNOBS);
    server = await startRepoServer("git-daemon", await createSmokeRepo(join(root, "repo"), RUN), "127.0.0.1");
  });
  after(async () => {
    await server?.stop();
    await m?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const show = async (id: string): Promise<JobBody> => {
    const result = await m.h.json<JobBody>(["job", "show", id]);
    assert.equal(result.code, 0, result.stderr);
    return result.body;
  };

  /**
   * `job run --wait` (a client that follows the job, so it sees the daemon die) held inside `hang`;
   * kill -9, restart, and the job once it has ended.
   */
  async function killWhileProvisioning(hang: string): Promise<JobBody> {
    const args = ["job", "run", "--repo", server.url, "--task", "crash", "--profile", "yolo-ephemeral"];
    const held = await m.holdRequest(
      "job run --wait",
      async () => {
        const run = await m.h.cli([...args, "--wait"]);
        if (run.code !== 0) throw new Error(run.stderr);
      },
      hang,
    );
    // Earlier tests' jobs have ended; this one is recorded before its sandbox is provisioned.
    const listed = (await m.h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs;
    const open = listed.filter((j) => !TERMINAL.includes(j.status));
    assert.equal(open.length, 1, `one job in flight: ${JSON.stringify(listed)}`);
    const job = open[0]!;
    await m.killHeldAndRestart([held]);
    // The runner needs the guest up (FAST_KNOBS) and the repository cloned: seconds idle; the bound only
    // stops a job that never ends.
    return until(
      `job ${job.id} to end after the restart`,
      async () => {
        const now = await show(job.id);
        return TERMINAL.includes(now.status) ? now : undefined;
      },
      180_000,
    );
  }

  /** The job's sandbox is settled: not before READY, not running on after its ephemeral job ended. */
  async function assertSandboxSettled(vmid: number, states: string[]): Promise<SandboxBody> {
    const box = await until(
      `sandbox ${vmid} to settle`,
      async () => {
        const body = await m.show(vmid);
        return states.includes(body.state) ? body : undefined;
      },
      60_000,
    );
    const intents = m.db((d) => d.prepare("SELECT count(*) AS n FROM sandbox_ops").get()) as { n: number };
    assert.equal(intents.n, 0, "no intent is left");
    await m.assertNothingStuckOrOrphaned();
    return box;
  }

  test("killed inside the clone: the job is FAILED with the reason, no VM is left", {
    timeout: 600_000,
  }, async () => {
    const job = await killWhileProvisioning(CALL.clone);
    assert.equal(job.status, "FAILED", JSON.stringify(job));
    assert.match(job.failure_reason ?? "", /interrupted by daemon restart/);
    const vmid = job.sandbox_vmid;
    assert.ok(vmid !== undefined, "the job names the sandbox it had");
    const box = await assertSandboxSettled(vmid, ["FAILED", "DESTROYED"]);
    assert.match(box.failure_reason ?? "", /interrupted by daemon restart/);
    assert.equal((await m.simVms())[vmid], undefined, "the clone made for the job is removed");
  });

  test("killed after its VM started: the provisioning is finished and the job runs to its end", {
    timeout: 600_000,
  }, async () => {
    const job = await killWhileProvisioning(CALL.started);
    assert.equal(job.status, "COMPLETED", JSON.stringify(job));
    assert.match(job.result?.result?.output_tail ?? "", /job-crash-marker job_[0-9a-f]{16}/);
    const vmid = job.sandbox_vmid;
    assert.ok(vmid !== undefined);
    // Ephemeral: the sandbox goes once its job has ended.
    await assertSandboxSettled(vmid, ["DESTROYED"]);
    assert.equal((await m.simVms())[vmid], undefined);
  });
});
