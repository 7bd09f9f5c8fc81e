import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  createSmokeRepo,
  type RepoServer,
  type SmokeRepo,
  startRepoServer,
} from "../../src/cli/init/repo-server.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl } from "../pvesim/harness.js";

/**
 * `job run --branch B` end to end on the simulator: the real daemon makes the branch session and its
 * workspace, the job's sandbox becomes the session's, the real runner (scripts/guest/agent-runner.sh)
 * clones from a real `git daemon` into the workspace's /work, works on B, commits and pushes B (the
 * daemon started with --enable=receive-pack) or reports the push refused (a read-only daemon). A second
 * job of the branch continues the checkout the first one left.
 */

interface JobBody {
  id: string;
  status: string;
  sandbox_vmid?: number;
  session_id?: string;
  branch?: string;
  workspace_id?: string;
  result?: {
    status: string;
    message?: string;
    result?: {
      exit_code?: number | null;
      commit?: string | null;
      base_commit?: string | null;
      fetched_commit?: string | null;
      output_tail?: string;
      branch?: string;
      pushed?: boolean;
      push_error?: string;
    };
  };
}
interface ErrorBody {
  code: string;
  message: string;
  hint?: string;
}
interface SessionBody {
  id: string;
  name: string;
  state: string;
  branch?: string;
  profile: string;
  current_vmid?: number;
  workspace_id: string;
}

/** Reads the notes earlier jobs of the branch left, adds its own line; "slow" keeps it busy a while. */
const RUN_NOTES = `#!/bin/sh
set -eu
case "$(cat)" in
  slow) sleep 8 ;;
esac
cat notes.txt 2>/dev/null || echo "no notes yet"
echo "step $AGENTLAB_JOB_ID" >> notes.txt
`;

const PROFILE = "yolo-ephemeral";
const BRANCH = "feature/notes";

function branchRun(repo: string, task: string, ...extra: string[]): string[] {
  return ["job", "run", "--repo", repo, "--task", task, "--profile", PROFILE, ...extra];
}

/** What the served (bare) repository has: a file at a branch, or undefined when the branch is missing. */
function served(repo: SmokeRepo, rev: string): string | undefined {
  try {
    return execFileSync("git", ["--git-dir", repo.bare, "show", rev], { encoding: "utf8", stdio: "pipe" });
  } catch {
    return undefined;
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe("job run --branch (shell backend, local-zfs)", () => {
  let h: SimHost;
  let root: string;
  const servers: RepoServer[] = [];
  let pushable: { repo: SmokeRepo; url: string };
  let readOnly: { repo: SmokeRepo; url: string };

  const session = async (name: string) => {
    const shown = await h.json<{ session: SessionBody }>(["session", "show", name]);
    assert.equal(shown.code, 0, shown.stderr);
    return shown.body.session;
  };
  const counts = async () => ({
    jobs: (await h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs.length,
    sessions: (await h.json<{ sessions: SessionBody[] }>(["session", "list"])).body.sessions.length,
    workspaces: (await h.json<{ workspaces: unknown[] }>(["workspace", "list"])).body.workspaces.length,
  });

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-job-branch-"));
    const port = await freePort();
    h = await startSimHost(
      "shell",
      `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\nworkspace_storage: local-zfs\n`,
    );
    await setControl(h.sim.dir, FAST_KNOBS);
    const a = await createSmokeRepo(join(root, "pushable"), RUN_NOTES);
    const s1 = await startRepoServer("git-daemon", a, "127.0.0.1", { push: true });
    servers.push(s1);
    pushable = { repo: a, url: s1.url };
    const b = await createSmokeRepo(join(root, "read-only"), RUN_NOTES);
    const s2 = await startRepoServer("git-daemon", b, "127.0.0.1");
    servers.push(s2);
    readOnly = { repo: b, url: s2.url };
  });
  after(async () => {
    for (const server of servers) await server.stop();
    await h.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test("refusals change nothing: a bad branch name, --branch with --workspace", async () => {
    const before = await counts();
    const bad = await h.json<ErrorBody>(branchRun(pushable.url, "x", "--branch", "bad..name"));
    assert.equal(bad.code, 2, JSON.stringify(bad.body));
    assert.match(bad.body.message, /branch "bad\.\.name" is not a valid git branch name: it contains "\.\."/);
    const both = await h.json<ErrorBody>(
      branchRun(pushable.url, "x", "--branch", BRANCH, "--workspace", "w"),
    );
    assert.equal(both.code, 2);
    assert.equal(both.body.message, "--branch and --workspace do not go together");
    const validated = await h.json<{ session: { name: string; exists: boolean } }>([
      "job",
      "validate",
      "--repo",
      pushable.url,
      "--task",
      "x",
      "--profile",
      PROFILE,
      "--branch",
      BRANCH,
    ]);
    assert.equal(validated.code, 0, validated.stderr);
    assert.deepEqual(validated.body.session, { name: "branch-feature-notes", exists: false });
    assert.deepEqual(await counts(), before);
  });

  let firstCommit = "";

  test("the first job makes the branch session, works on B and pushes it with the agent's change", async () => {
    const run = await h.json<JobBody>(branchRun(pushable.url, "first", "--branch", BRANCH, "--wait"));
    assert.equal(run.code, 0, `${run.stderr}\n${JSON.stringify(run.body)}`);
    assert.equal(run.body.status, "COMPLETED");
    assert.equal(run.body.branch, BRANCH);
    const s = await session("branch-feature-notes");
    assert.equal(run.body.session_id, s.id);
    assert.equal(run.body.workspace_id, s.workspace_id);
    assert.equal(s.branch, BRANCH);
    assert.equal(s.profile, PROFILE);
    const result = run.body.result?.result;
    assert.equal(result?.branch, BRANCH);
    assert.equal(result?.pushed, true, JSON.stringify(result));
    assert.equal(result?.fetched_commit, pushable.repo.head);
    assert.match(result?.output_tail ?? "", /^no notes yet$/m);
    firstCommit = result?.commit ?? "";
    assert.equal(served(pushable.repo, `${BRANCH}:notes.txt`), `step ${run.body.id}\n`);
    assert.equal(
      execFileSync("git", ["--git-dir", pushable.repo.bare, "rev-parse", BRANCH], {
        encoding: "utf8",
      }).trim(),
      firstCommit,
    );
    const text = await h.cli(["job", "show", run.body.id]);
    assert.match(text.stdout, new RegExp(`on branch: +${BRANCH} \\(session ${s.id}\\)`));
    assert.match(text.stdout, /\nbranch: +feature\/notes \(pushed to origin\)/);
    // The job's end does not keep the session running: its sandbox went, and the workspace with it.
    const stopped = await until("the session to be stopped", async () => {
      const now = await session("branch-feature-notes");
      return now.state === "stopped" ? now : undefined;
    });
    assert.equal(stopped.current_vmid, undefined);
  });

  test("a job of another profile and a second job while one runs are refused, naming the running job", async () => {
    const other = await h.json<ErrorBody>([
      "job",
      "run",
      "--repo",
      pushable.url,
      "--task",
      "x",
      "--profile",
      "yolo-workspace",
      "--branch",
      BRANCH,
    ]);
    assert.equal(other.code, 1, JSON.stringify(other.body));
    assert.equal(other.body.code, "CONFLICT");
    assert.equal(
      other.body.message,
      `session branch-feature-notes of branch "${BRANCH}" uses profile ${PROFILE}, not yolo-workspace`,
    );
    const slow = await h.json<JobBody>(branchRun(pushable.url, "slow", "--branch", BRANCH));
    assert.equal(slow.code, 0, slow.stderr);
    const before = await counts();
    const busy = await h.json<ErrorBody>(branchRun(pushable.url, "x", "--branch", BRANCH));
    assert.equal(busy.code, 1, JSON.stringify(busy.body));
    assert.equal(busy.body.code, "CONFLICT");
    assert.match(
      busy.body.message,
      new RegExp(
        `^branch session branch-feature-notes is busy: job ${slow.body.id} is (QUEUED|RUNNING) in its workspace`,
      ),
    );
    assert.match(busy.body.hint ?? "", new RegExp(`agentlab job show ${slow.body.id} --wait`));
    assert.deepEqual(await counts(), before);
    // The session's sandbox is the job's.
    const vmid = await until("the slow job's sandbox", async () => {
      const job = (await h.json<JobBody>(["job", "show", slow.body.id])).body;
      return job.sandbox_vmid;
    });
    assert.equal((await session("branch-feature-notes")).current_vmid, vmid);
    const ended = await h.json<JobBody>(["job", "show", slow.body.id, "--wait"]);
    assert.equal(ended.body.status, "COMPLETED", JSON.stringify(ended.body));
    // The second job of the branch continued the first one's checkout in the workspace.
    const result = ended.body.result?.result;
    assert.equal(result?.base_commit, firstCommit);
    assert.match(result?.output_tail ?? "", /^step job_[0-9a-f]{16}$/m);
    assert.doesNotMatch(result?.output_tail ?? "", /no notes yet/);
    assert.equal(result?.pushed, true);
    const notes = served(pushable.repo, `${BRANCH}:notes.txt`) ?? "";
    assert.equal(notes.split("\n").filter(Boolean).length, 2, notes);
    assert.match(notes, new RegExp(`step ${slow.body.id}\\n$`));
  });

  test("a push the repository refuses: COMPLETED, pushed false with the reason, the commit kept in the workspace", async () => {
    const run = await h.json<JobBody>(branchRun(readOnly.url, "ro", "--branch", "ro-branch", "--wait"));
    assert.equal(run.code, 0, `${run.stderr}\n${JSON.stringify(run.body)}`);
    assert.equal(run.body.status, "COMPLETED");
    const result = run.body.result?.result;
    assert.equal(result?.pushed, false);
    assert.match(
      result?.push_error ?? "",
      /^git push of ro-branch failed: .*(access denied|not enabled|unknown service)/,
    );
    assert.match(
      run.body.result?.message ?? "",
      /^agent finished; branch ro-branch kept in the workspace, not pushed/,
    );
    assert.equal(served(readOnly.repo, "ro-branch:notes.txt"), undefined, "nothing reached the repository");
    const text = await h.cli(["job", "show", run.body.id]);
    assert.match(
      text.stdout,
      /\nbranch: +ro-branch \(not pushed: git push of ro-branch failed: fatal: remote error: service not enabled/,
    );
  });
});
