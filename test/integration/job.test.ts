import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { call } from "../../src/cli/client.js";
import {
  createSmokeRepo,
  type RepoServer,
  type SmokeRepo,
  startRepoServer,
} from "../../src/cli/init/repo-server.js";
import { type AgentlabError, sandboxRevert } from "../../src/protocol/index.js";
import { startDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, setControl } from "../pvesim/harness.js";

/**
 * `agentlab job run` end to end: the real daemon provisions a sandbox on the simulator, the simulated
 * guest runs the real guest runner (scripts/guest/agent-runner.sh: sh, curl, jq, git) from the cloud-init
 * snippet, the runner clones a real repository from a real `git daemon`, runs its .agentlab/run.sh and
 * reports back through the guest listener; the job ends and the sandbox follows.
 */

interface JobBody {
  id: string;
  status: string;
  sandbox_vmid?: number;
  keepalive: boolean;
  failure_reason?: string;
  result?: {
    status: string;
    message?: string;
    result?: { exit_code?: number | null; commit?: string | null; output_tail?: string };
  };
  events?: Array<{ kind: string; msg?: string }>;
}
interface SandboxBody {
  vmid: number;
  state: string;
}
/** The CLI's --json error envelope. */
interface ErrorBody {
  code: string;
  message: string;
  hint?: string;
}

const RUN_OK = `#!/bin/sh
set -eu
task=$(cat)
echo "smoke-marker-7f3a task=[$task] job=$AGENTLAB_JOB_ID"
echo done > result.txt
`;
const RUN_FAIL = `#!/bin/sh
echo "about to fail"
exit 3
`;
/**
 * An agent that runs until the test releases it (a file appears), at most two minutes: a fixed sleep
 * could end, and its sandbox be destroyed, before a loaded machine let the test see the job running.
 */
const runSlow = (release: string) => `#!/bin/sh
i=0
while [ ! -e '${release}' ] && [ "$i" -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
echo "slow job finished"
`;

/** `job run` with the shipped profile. */
function jobRun(repo: string, task: string, ...extra: string[]): string[] {
  return ["job", "run", "--repo", repo, "--task", task, "--profile", "yolo-ephemeral", ...extra];
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`job run end to end (${kind} backend)`, () => {
    let h: SimHost;
    let root: string;
    const servers: RepoServer[] = [];
    const repos: Record<string, { repo: SmokeRepo; url: string }> = {};

    async function serve(name: string, script: string): Promise<void> {
      const dir = join(root, name);
      const repo = await createSmokeRepo(dir, script);
      const server = await startRepoServer("git-daemon", repo, "127.0.0.1");
      servers.push(server);
      repos[name] = { repo, url: server.url };
    }

    const show = async (id: string) => {
      const result = await h.json<JobBody>(["job", "show", id]);
      assert.equal(result.code, 0, result.stderr);
      return result.body;
    };
    const sandbox = async (vmid: number) => {
      const result = await h.json<SandboxBody>(["sandbox", "show", String(vmid)]);
      assert.equal(result.code, 0, result.stderr);
      return result.body;
    };

    before(async () => {
      root = mkdtempSync(join(tmpdir(), "agentlab-job-it-"));
      // A fixed guest listener port: a runner keeps the report URL it fetched across a daemon restart.
      const port = await freePort();
      h = await startSimHost(kind, `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\n`);
      await setControl(h.sim.dir, {
        clone_ms: 20,
        start_ms: 20,
        stop_ms: 20,
        agent_ready_ms: 50,
        task_ms: 10,
      });
      await serve("ok", RUN_OK);
      await serve("fail", RUN_FAIL);
      await serve("slow", runSlow(join(root, "release-slow")));
    });
    after(async () => {
      for (const server of servers) await server.stop();
      // The kill -9 test replaces h.daemon; h.stop() only knows the first one.
      await h.daemon.stop();
      await h.stop();
      rmSync(root, { recursive: true, force: true });
    });

    test("a job clones the repository, runs its agent and COMPLETES; its sandbox is destroyed", async () => {
      const { url, repo } = repos.ok!;
      const run = await h.json<JobBody>(jobRun(url, "say hello", "--wait"));
      assert.equal(run.code, 0, `${run.stderr}\n${JSON.stringify(run.body)}`);
      assert.equal(run.body.status, "COMPLETED");
      const result = run.body.result?.result;
      assert.equal(result?.exit_code, 0);
      assert.equal(result?.commit, repo.head, "the runner ran the commit the repository serves");
      assert.match(result?.output_tail ?? "", /smoke-marker-7f3a task=\[say hello\] job=job_[0-9a-f]{16}/);
      const vmid = run.body.sandbox_vmid;
      assert.ok(vmid !== undefined);
      await until("the job's sandbox to be destroyed", async () =>
        (await sandbox(vmid)).state === "DESTROYED" ? true : undefined,
      );
      const detail = await show(run.body.id);
      const kinds = (detail.events ?? []).map((e) => e.kind);
      for (const k of ["job.queued", "job.fetched", "job.running", "job.report", "job.completed"]) {
        assert.ok(kinds.includes(k), `event ${k} in ${kinds.join(", ")}`);
      }
      const listed = await h.json<{ jobs: JobBody[] }>(["job", "list", "--status", "COMPLETED"]);
      assert.ok(listed.body.jobs.some((j) => j.id === run.body.id));
    });

    test("a failing agent makes the job FAILED with its exit code; --wait exits 1", async () => {
      const run = await h.json<JobBody>(jobRun(repos.fail!.url, "break", "--wait"));
      assert.equal(run.code, 1, run.stderr);
      assert.equal(run.body.status, "FAILED");
      assert.equal(run.body.result?.result?.exit_code, 3);
      assert.match(run.body.result?.result?.output_tail ?? "", /about to fail/);
      const vmid = run.body.sandbox_vmid!;
      await until("the failed job's sandbox to be destroyed", async () =>
        (await sandbox(vmid)).state === "DESTROYED" ? true : undefined,
      );
    });

    test("a ref the repository does not have fails the job with git's reason", async () => {
      const run = await h.json<JobBody>(jobRun(repos.ok!.url, "x", "--ref", "no-such-branch", "--wait"));
      assert.equal(run.code, 1, run.stderr);
      assert.equal(run.body.status, "FAILED");
      assert.match(run.body.result?.message ?? "", /no-such-branch/);
    });

    test("with --keepalive the sandbox stays COMPLETED until destroyed", async () => {
      const run = await h.json<JobBody>(jobRun(repos.ok!.url, "keep", "--keepalive", "--wait"));
      assert.equal(run.code, 0, run.stderr);
      const vmid = run.body.sandbox_vmid!;
      const box = await until("the sandbox to follow the job", async () => {
        const s = await sandbox(vmid);
        return s.state === "COMPLETED" ? s : undefined;
      });
      assert.equal(box.state, "COMPLETED");
      const destroyed = await h.json<SandboxBody>(["sandbox", "destroy", String(vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      assert.equal(destroyed.body.state, "DESTROYED");
    });

    test("refusals change nothing: unknown profile, a local path as repo, an unknown job", async () => {
      const before = await h.json<{ jobs: JobBody[] }>(["job", "list"]);
      const unknown = await h.json<ErrorBody>([
        "job",
        "run",
        "--repo",
        repos.ok!.url,
        "--task",
        "x",
        "--profile",
        "nope",
      ]);
      assert.equal(unknown.code, 1);
      assert.equal(unknown.body.code, "PROFILE_NOT_FOUND");
      assert.match(unknown.body.message, /unknown profile "nope"/);
      const local = await h.json<ErrorBody>(jobRun("/tmp/repo", "x"));
      assert.equal(local.code, 2);
      assert.match(local.body.message, /repo_url must be a URL the sandbox can clone/);
      const afterward = await h.json<{ jobs: JobBody[] }>(["job", "list"]);
      assert.equal(afterward.body.jobs.length, before.body.jobs.length);
      const missing = await h.json<ErrorBody>(["job", "show", "job_0000000000000000"]);
      assert.equal(missing.code, 1);
      assert.equal(missing.body.code, "JOB_NOT_FOUND");
      assert.equal(missing.body.message, "job not found");
    });

    test("--workspace attaches a detached workspace for the job and lets go of it afterwards", async () => {
      const created = await h.json<{ id: string }>([
        "workspace",
        "create",
        "--name",
        "jobws",
        "--size",
        "1G",
      ]);
      assert.equal(created.code, 0, created.stderr);
      const run = await h.json<JobBody & { workspace_id?: string }>(
        jobRun(repos.ok!.url, "with a workspace", "--workspace", "jobws", "--wait"),
      );
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.body.status, "COMPLETED");
      assert.equal(run.body.workspace_id, created.body.id);
      const vmid = run.body.sandbox_vmid!;
      await until("the sandbox to be destroyed", async () =>
        (await sandbox(vmid)).state === "DESTROYED" ? true : undefined,
      );
      const ws = await h.json<{ attached_vmid?: number; lease_owner?: string }>([
        "workspace",
        "show",
        "jobws",
      ]);
      assert.equal(ws.code, 0, ws.stderr);
      assert.equal(ws.body.attached_vmid, undefined, "detached when the job's sandbox went");
      assert.equal(ws.body.lease_owner, undefined, "its lease released");
      // A workspace in use is refused at once, and no job is queued for it.
      const box = await h.json<SandboxBody>([
        "sandbox",
        "new",
        "--profile",
        "yolo-ephemeral",
        "--workspace",
        "jobws",
      ]);
      assert.equal(box.code, 0, box.stderr);
      const jobsBefore = (await h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs.length;
      const refused = await h.json<ErrorBody>(jobRun(repos.ok!.url, "x", "--workspace", "jobws"));
      assert.equal(refused.code, 1);
      assert.equal(refused.body.code, "WORKSPACE_ATTACHED");
      assert.equal(refused.body.message, "workspace already attached");
      assert.equal((await h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs.length, jobsBefore);
      const missing = await h.json<ErrorBody>(jobRun(repos.ok!.url, "x", "--workspace", "nope"));
      assert.equal(missing.body.code, "WORKSPACE_NOT_FOUND");
      assert.equal((await h.json<SandboxBody>(["sandbox", "destroy", String(box.body.vmid)])).code, 0);
    });

    test("provisioning that fails ends the job FAILED with the reason", async () => {
      await setControl(h.sim.dir, {}, ["fail_clone=no space left on the storage"]);
      try {
        const run = await h.json<JobBody>(jobRun(repos.ok!.url, "x"));
        assert.equal(run.code, 0, run.stderr);
        assert.equal(run.body.status, "QUEUED");
        const ended = await until("the job to fail", async () => {
          const job = await show(run.body.id);
          return job.status === "QUEUED" ? undefined : job;
        });
        assert.equal(ended.status, "FAILED");
        assert.match(ended.failure_reason ?? "", /could not provision the job's sandbox: .*no space left/);
      } finally {
        await clearFaults(h.sim.dir);
      }
    });

    test("a job keeps running through a daemon kill -9 and still reports its end", async () => {
      const run = await h.json<JobBody>(jobRun(repos.slow!.url, "slow"));
      assert.equal(run.code, 0, run.stderr);
      await until("the runner to start the agent", async () => {
        const job = await show(run.body.id);
        return job.result?.message === "agent starting" ? true : undefined;
      });
      // Rolling the disk back under a working agent needs force, whatever state the sandbox has
      // reached. The CLI only sends force=false after a confirmation on a terminal, so ask the daemon
      // directly.
      const vmid = (await show(run.body.id)).sandbox_vmid!;
      await assert.rejects(
        call({ socketPath: h.host.socketPath, timeoutMs: 30_000 }, sandboxRevert, { vmid }),
        (error: AgentlabError) => {
          assert.equal(error.code, "CONFLICT");
          assert.match(error.message, /^sandbox has running job job_[0-9a-f]{16}; use --force to revert$/);
          return true;
        },
      );
      // The runner can report before the daemon has moved the sandbox to RUNNING; a kill -9 before that
      // would (rightly) fail an interrupted provisioning. This test is about a job that is running.
      await until("the job's sandbox to be RUNNING", async () =>
        (await sandbox(vmid)).state === "RUNNING" ? true : undefined,
      );
      await h.daemon.stop("SIGKILL");
      h.daemon = await startDaemon(h.host);
      assert.equal((await show(run.body.id)).status, "RUNNING", "the job outlived the daemon");
      writeFileSync(join(root, "release-slow"), "");
      const ended = await until("the slow job to end after the restart", async () => {
        const job = await show(run.body.id);
        return job.status === "RUNNING" ? undefined : job;
      });
      assert.equal(ended.status, "COMPLETED", JSON.stringify(ended));
      assert.match(ended.result?.result?.output_tail ?? "", /slow job finished/);
      await until("its sandbox to be destroyed", async () =>
        (await sandbox(vmid)).state === "DESTROYED" ? true : undefined,
      );
    });
  });
}
