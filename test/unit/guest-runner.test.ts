import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { REPO_ROOT } from "../helpers/paths.js";
import { FakeController, type FakeJob } from "../helpers/runner-fake-controller.js";

// The in-guest job runner, run for real: sh, curl, jq, git and timeout as child processes, against a
// fake controller on 127.0.0.1 and real git repositories cloned over file:// URLs.

const SCRIPT = path.join(REPO_ROOT, "scripts/guest/agent-runner.sh");
const READY_TOKEN = "0123456789abcdef0123456789abcdef";
const JOB_TOKEN = "fedcba9876543210fedcba9876543210";
const REPORT_TOKEN = "5a".repeat(32);
const VMID = 123;
const JOB_ID = "job_0123456789abcdef";
const TASK = "fix the flaky test\nthen tidy up";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-runner-"));
const home = path.join(dir, "home");
fs.mkdirSync(home);
after(() => fs.rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function freshDir(name: string): string {
  const d = path.join(dir, `${name}-${++counter}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Git with a fixed identity and no user or system configuration from the machine running the tests. */
function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", ...args], {
    cwd,
    env: { PATH: process.env.PATH, HOME: home, GIT_CONFIG_NOSYSTEM: "1" },
    encoding: "utf8",
  }).trim();
}

type Files = Record<string, string>;
/** A real repository: `main` with `files`, plus one branch per entry of `branches` (on top of main). */
function makeRepo(
  files: Files,
  branches: Record<string, Files> = {},
): { url: string; head: (b: string) => string } {
  const repo = freshDir("origin");
  git(repo, "init", "-q", "-b", "main");
  const commit = (set: Files, message: string) => {
    for (const [name, content] of Object.entries(set)) {
      const file = path.join(repo, name);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, content, { mode: name.endsWith(".sh") ? 0o755 : 0o644 });
    }
    git(repo, "add", "-A");
    git(repo, "commit", "-q", "-m", message);
  };
  commit(files, "initial");
  for (const [branch, set] of Object.entries(branches)) {
    git(repo, "checkout", "-q", "-b", branch, "main");
    commit(set, `on ${branch}`);
  }
  git(repo, "checkout", "-q", "main");
  return { url: `file://${repo}`, head: (b) => git(repo, "rev-parse", b) };
}

const runSh = (body: string): Files => ({ ".agentlab/run.sh": `#!/bin/sh\n${body}\n` });

/** A guest root with etc/agentlab/bootstrap.json (one line, like cloud-init writes it) and /work. */
function makeGuest(controller: string, opts: { jobToken?: string | null; work?: boolean } = {}): string {
  const root = freshDir("guest");
  fs.mkdirSync(path.join(root, "etc/agentlab"), { recursive: true });
  const bootstrap: Record<string, unknown> = { token: READY_TOKEN, controller, vmid: VMID };
  if (opts.jobToken !== null) bootstrap.job_token = opts.jobToken ?? JOB_TOKEN;
  fs.writeFileSync(path.join(root, "etc/agentlab/bootstrap.json"), JSON.stringify(bootstrap), {
    mode: 0o600,
  });
  if (opts.work !== false) fs.mkdirSync(path.join(root, "work"));
  return root;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}
/** Run the runner the way the simulator does: `sh <file>` with AGENTLAB_GUEST_ROOT, short retry delays. */
function runRunner(root: string, env: Record<string, string> = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(
      "sh",
      [SCRIPT],
      {
        env: {
          PATH: process.env.PATH,
          HOME: home,
          GIT_CONFIG_NOSYSTEM: "1",
          AGENTLAB_GUEST_ROOT: root,
          AGENTLAB_RETRY_DELAY_SECONDS: "0",
          ...env,
        },
        timeout: 40_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolve({ code, stdout, stderr, ms: Date.now() - started });
      },
    );
  });
}

function job(repoUrl: string, over: Partial<FakeJob> = {}): FakeJob {
  return {
    id: JOB_ID,
    repo_url: repoUrl,
    ref: "main",
    task: TASK,
    mode: "dangerous",
    profile: "yolo-ephemeral",
    keepalive: false,
    ttl_minutes: null,
    ...over,
  };
}

const controllers: FakeController[] = [];
afterEach(async () => {
  for (const c of controllers.splice(0)) await c.close();
});
/** A started fake controller for `fakeJob` and a guest pointing at it. */
async function setup(
  fakeJob: FakeJob,
  guest: { jobToken?: string | null; work?: boolean } = {},
): Promise<{ controller: FakeController; root: string }> {
  const controller = new FakeController(fakeJob, REPORT_TOKEN);
  controllers.push(controller);
  const url = await controller.start();
  return { controller, root: makeGuest(url, guest) };
}

const statuses = (c: FakeController) => c.reports().map((r) => `${r.status} ${r.message}`);
const finalReport = (c: FakeController) => {
  const last = c.reports().at(-1);
  assert.ok(last?.result, `no final report with a result: ${JSON.stringify(c.reports())}`);
  return { ...last, result: last.result };
};
function assertNoSecrets(text: string, where: string) {
  for (const token of [READY_TOKEN, JOB_TOKEN, REPORT_TOKEN]) {
    assert.ok(!text.includes(token), `${where} shows a token: ${text}`);
  }
}

describe("guest agent runner (real sh, curl, jq, git)", () => {
  it("runs the repo's .agentlab/run.sh with the task and reports RUNNING x3 then COMPLETED", async () => {
    const repo = makeRepo(
      runSh(
        [
          'printf "env task: %s\\n" "$AGENTLAB_TASK"',
          'printf "stdin task: %s\\n" "$(cat)"',
          'echo "job=$AGENTLAB_JOB_ID mode=$AGENTLAB_MODE dir=$AGENTLAB_REPO_DIR pwd=$(pwd)"',
        ].join("\n"),
      ),
    );
    const { controller, root } = await setup(job(repo.url));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);

    assert.deepEqual(controller.fetches(), [{ token: JOB_TOKEN, vmid: VMID }]);
    assert.deepEqual(statuses(controller), [
      "RUNNING bootstrap fetched",
      "RUNNING repo ready",
      "RUNNING agent starting",
      "COMPLETED agent finished",
    ]);
    for (const req of controller.reportRequests()) {
      assert.equal(req.authorization, `Bearer ${REPORT_TOKEN}`);
      assert.equal(req.contentType, "application/json");
    }
    for (const report of controller.reports()) {
      assert.equal(report.job_id, JOB_ID);
      assert.equal(report.vmid, VMID);
    }
    const repoDir = path.join(root, "work/repo");
    const { result } = finalReport(controller);
    assert.equal(result.exit_code, 0);
    assert.equal(result.commit, repo.head("main"));
    assert.equal(result.mode, "dangerous");
    assert.ok(Number.isInteger(result.duration_seconds) && result.duration_seconds >= 0);
    assert.equal(
      result.output_tail,
      "env task: fix the flaky test\nthen tidy up\n" +
        "stdin task: fix the flaky test\nthen tidy up\n" +
        `job=${JOB_ID} mode=dangerous dir=${repoDir} pwd=${repoDir}\n`,
    );
    // Checked out on the runner's own branch.
    assert.equal(git(repoDir, "rev-parse", "--abbrev-ref", "HEAD"), "agentlab");

    // The agent's output is in the log and in the runner's own output (the guest log).
    const stateDir = path.join(root, "run/agentlab");
    assert.equal(fs.readFileSync(path.join(stateDir, "agent-runner.log"), "utf8"), result.output_tail);
    assert.ok(run.stdout.includes(`job=${JOB_ID} mode=dangerous`), run.stdout);
    assertNoSecrets(run.stdout + run.stderr, "the runner's output");

    // The fetch answer is cached privately; nothing else is left in secrets/.
    assert.equal(fs.statSync(path.join(stateDir, "secrets")).mode & 0o777, 0o700);
    assert.equal(fs.statSync(path.join(stateDir, "secrets/bootstrap.json")).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(path.join(stateDir, "secrets")), ["bootstrap.json"]);
    assert.equal(fs.statSync(path.join(stateDir, "agent-runner.log")).mode & 0o777, 0o600);
  });

  it("checks out the job's ref when it is not main", async () => {
    const repo = makeRepo(runSh("echo on-main"), { feature: runSh("echo on-feature") });
    const { controller, root } = await setup(job(repo.url, { ref: "feature" }));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    const { status, result } = finalReport(controller);
    assert.equal(status, "COMPLETED");
    assert.equal(result.output_tail, "on-feature\n");
    assert.equal(result.commit, repo.head("feature"));
    assert.notEqual(result.commit, repo.head("main"));
  });

  it("reports FAILED with the agent's exit code and still exits 0", async () => {
    const repo = makeRepo(runSh("echo about to fail >&2\nexit 3"));
    const { controller, root } = await setup(job(repo.url, { mode: "safe" }));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.equal(final.message, "agent finished");
    assert.equal(final.result.exit_code, 3);
    assert.equal(final.result.mode, "safe");
    // stderr is captured too.
    assert.equal(final.result.output_tail, "about to fail\n");
  });

  it("stops the agent at AGENTLAB_RUNNER_TIMEOUT_SECONDS and reports TIMEOUT", async () => {
    const repo = makeRepo(runSh("echo started\nsleep 30\necho never"));
    const { controller, root } = await setup(job(repo.url, { ttl_minutes: 60 }));
    const run = await runRunner(root, { AGENTLAB_RUNNER_TIMEOUT_SECONDS: "1" });
    assert.equal(run.code, 0, run.stderr);
    // Stopped at its limit, not at the end of its sleep: "never" was not printed.
    const final = finalReport(controller);
    assert.equal(final.status, "TIMEOUT");
    assert.equal(final.result.exit_code, 124);
    assert.equal(final.result.output_tail, "started\n");
  });

  it("without AGENTLAB_RUNNER_TIMEOUT_SECONDS the job's ttl_minutes limits the agent", async () => {
    const repo = makeRepo(runSh("echo started\nsleep 30\necho never"));
    // 0.02 minutes = 1.2 s, rounded up to 2 s.
    const { controller, root } = await setup(job(repo.url, { ttl_minutes: 0.02 }));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(finalReport(controller).status, "TIMEOUT");
    assert.equal(finalReport(controller).result.output_tail, "started\n", "stopped before its sleep ended");
    assert.ok(finalReport(controller).result.duration_seconds >= 1);
  });

  it("exits 0 without a report when the controller has no job for the VMID", async () => {
    const { controller, root } = await setup(job("file:///nowhere"));
    controller.fetchAnswers.push({ status: 404, body: { error: "job not found" } });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /no job assigned for vmid 123; exiting cleanly/);
    assert.equal(controller.fetches().length, 1);
    assert.equal(controller.reports().length, 0);
    assert.ok(!fs.existsSync(path.join(root, "run/agentlab/secrets/bootstrap.json")));
  });

  it("exits 0 without contacting the controller when bootstrap.json has no job token", async () => {
    const { controller, root } = await setup(job("file:///nowhere"), { jobToken: null });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /no job token in bootstrap\.json; nothing to run/);
    assert.equal(controller.requests.length, 0);
  });

  it("exits 1 with the daemon's message when the fetch is refused (403), without retrying", async () => {
    const { controller, root } = await setup(job("file:///nowhere"));
    controller.fetchAnswers.push({ status: 403, body: { error: "invalid or expired bootstrap token" } });
    const run = await runRunner(root);
    assert.equal(run.code, 1);
    assert.match(run.stderr, /invalid or expired bootstrap token/);
    assert.equal(controller.fetches().length, 1);
    assert.equal(controller.reports().length, 0);
    assertNoSecrets(run.stdout + run.stderr, "the runner's output");
  });

  it("retries the fetch while the controller answers 503, then runs the job", async () => {
    const repo = makeRepo(runSh("echo ok"));
    const { controller, root } = await setup(job(repo.url));
    controller.fetchAnswers.push({ status: 503, body: { error: "busy" } }, { status: 429, body: {} });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(controller.fetches().length, 3);
    assert.equal(finalReport(controller).status, "COMPLETED");
  });

  it("gives up (exit 1) when the controller cannot be reached after AGENTLAB_BOOTSTRAP_RETRY_MAX attempts", async () => {
    const { controller, root } = await setup(job("file:///nowhere"));
    await controller.close();
    const run = await runRunner(root, { AGENTLAB_BOOTSTRAP_RETRY_MAX: "2" });
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      /bootstrap fetch from http:\/\/127\.0\.0\.1:\d+\/agentlab failed after 2 attempts/,
    );
    assert.match(run.stdout, /retrying in 0s \(attempt 1 of 2\)/);
  });

  it("reports FAILED with git's error when the repo cannot be cloned", async () => {
    const missing = path.join(dir, "no-such-repo.git");
    const { controller, root } = await setup(job(`file://${missing}`));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(statuses(controller).slice(0, 1), ["RUNNING bootstrap fetched"]);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.match(final.message, /^git clone of file:\/\/.*no-such-repo\.git failed: /);
    assert.match(final.message, /does not appear to be a git repository/);
    assert.deepEqual(final.result, {
      exit_code: null,
      duration_seconds: 0,
      commit: null,
      fetched_commit: null,
      mode: "dangerous",
      output_tail: "",
      artifacts_uploaded: 0,
      artifacts_refused: 0,
    });
  });

  it("reports FAILED with git's error when the ref does not exist", async () => {
    const repo = makeRepo(runSh("echo ok"));
    const { controller, root } = await setup(job(repo.url, { ref: "no-such-branch" }));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.match(
      final.message,
      /^git fetch of ref no-such-branch failed: .*couldn't find remote ref no-such-branch/,
    );
  });

  it("reuses the cached fetch answer on a second run instead of fetching again", async () => {
    const repo = makeRepo(runSh("echo run"));
    const { controller, root } = await setup(job(repo.url));
    assert.equal((await runRunner(root)).code, 0);
    // The bootstrap token is single use: a second fetch would be refused.
    controller.fetchAnswers.push({ status: 403, body: { error: "invalid or expired bootstrap token" } });
    const second = await runRunner(root);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(controller.fetches().length, 1);
    assert.equal(controller.reports().length, 8);
    assert.equal(finalReport(controller).status, "COMPLETED");
    // The first run's checkout is not reused either.
    assert.ok(second.stdout.includes(`cloning into ${path.join(root, "work/repo")}-${JOB_ID} instead`));
  });

  it("replaces the tokens with [REDACTED] in the output tail, the log and the guest log", async () => {
    const repo = makeRepo(
      runSh(`echo "job ${JOB_TOKEN} report ${REPORT_TOKEN}"\necho "ready=${READY_TOKEN}."`),
    );
    const { controller, root } = await setup(job(repo.url));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    const expected = "job [REDACTED] report [REDACTED]\nready=[REDACTED].\n";
    assert.equal(finalReport(controller).result.output_tail, expected);
    assert.equal(fs.readFileSync(path.join(root, "run/agentlab/agent-runner.log"), "utf8"), expected);
    assertNoSecrets(run.stdout + run.stderr, "the runner's output");
  });

  it("retries a report the controller answers with 503", async () => {
    const repo = makeRepo(runSh("echo ok"));
    const { controller, root } = await setup(job(repo.url));
    controller.reportAnswers.push({ status: 503, body: { error: "busy" } });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(statuses(controller), [
      "RUNNING bootstrap fetched",
      "RUNNING bootstrap fetched",
      "RUNNING repo ready",
      "RUNNING agent starting",
      "COMPLETED agent finished",
    ]);
    assert.match(run.stdout, /report RUNNING: HTTP 503: busy; retrying in 0s \(attempt 1 of 6\)/);
  });

  it("stops at once (exit 1, agent never run) when the controller refuses a report", async () => {
    const repo = makeRepo(runSh("echo should-not-run > ran.txt"));
    const { controller, root } = await setup(job(repo.url));
    controller.reportAnswers.push({ status: 409, body: { error: "job already finalized" } });
    const run = await runRunner(root);
    assert.equal(run.code, 1);
    assert.match(run.stderr, /the controller refused the report: HTTP 409: job already finalized; stopping/);
    assert.equal(controller.reports().length, 1);
    assert.ok(!fs.existsSync(path.join(root, "work/repo")));
  });

  it("gives up on the final report after AGENTLAB_RETRY_MAX attempts and exits 1", async () => {
    const repo = makeRepo(runSh("echo ok"));
    const { controller, root } = await setup(job(repo.url));
    // The three progress reports pass; the final one meets an outage.
    controller.reportAnswers.push(
      { status: 200, body: {} },
      { status: 200, body: {} },
      { status: 200, body: {} },
      { status: 502, body: {} },
      { status: 502, body: {} },
      { status: 502, body: {} },
    );
    const run = await runRunner(root, { AGENTLAB_RETRY_MAX: "3" });
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      /could not deliver the final report \(COMPLETED\): HTTP 502: .*after 3 attempts/,
    );
    assert.equal(controller.reports().length, 6);
  });

  it("never reuses a non-empty repo dir: residue there does not run", async () => {
    const repo = makeRepo(runSh("echo from-the-job"));
    const { controller, root } = await setup(job(repo.url));
    const residue = path.join(root, "work/repo");
    fs.mkdirSync(path.join(residue, ".agentlab"), { recursive: true });
    fs.writeFileSync(path.join(residue, ".agentlab/run.sh"), "#!/bin/sh\necho residue\n", { mode: 0o755 });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    const final = finalReport(controller);
    assert.equal(final.status, "COMPLETED");
    assert.equal(final.result.output_tail, "from-the-job\n");
    assert.equal(git(`${residue}-${JOB_ID}`, "rev-parse", "HEAD"), repo.head("main"));
    // The residue is left alone.
    assert.deepEqual(fs.readdirSync(residue), [".agentlab"]);
  });

  it("without a writable /work clones into /tmp/agentlab-repo", async () => {
    const repo = makeRepo(runSh('echo "$AGENTLAB_REPO_DIR"'));
    const { controller, root } = await setup(job(repo.url), { work: false });
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(finalReport(controller).result.output_tail, `${path.join(root, "tmp/agentlab-repo")}\n`);
  });

  it("runs AGENTLAB_AGENT_COMMAND from agent-runner.env instead of the repo's script", async () => {
    const repo = makeRepo(runSh("echo repo-script"));
    const { controller, root } = await setup(job(repo.url));
    fs.writeFileSync(
      path.join(root, "etc/agentlab/agent-runner.env"),
      `AGENTLAB_AGENT_COMMAND='echo "operator command for $AGENTLAB_JOB_ID: $(head -n 1)"'\n`,
    );
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(
      finalReport(controller).result.output_tail,
      `operator command for ${JOB_ID}: fix the flaky test\n`,
    );
  });

  it("reports FAILED when there is no agent to run", async () => {
    const repo = makeRepo({ "README.md": "no agent here\n" });
    const { controller, root } = await setup(job(repo.url));
    const run = await runRunner(root);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(statuses(controller).slice(0, 2), ["RUNNING bootstrap fetched", "RUNNING repo ready"]);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.match(final.message, /^no agent to run: set AGENTLAB_AGENT_COMMAND/);
    assert.equal(final.result.exit_code, null);
  });

  it("refuses a bad setting before contacting the controller", async () => {
    const { controller, root } = await setup(job("file:///nowhere"));
    const run = await runRunner(root, { AGENTLAB_RUNNER_TIMEOUT_SECONDS: "ten" });
    assert.equal(run.code, 1);
    assert.match(run.stderr, /AGENTLAB_RUNNER_TIMEOUT_SECONDS must be a whole number >= 1 \(got "ten"\)/);
    assert.equal(controller.requests.length, 0);
  });
});

describe("guest agent runner on a branch (job run --branch; real sh, git)", () => {
  const BRANCH = "feature/login";
  const SECOND_ID = "job_fedcba9876543210";

  /** One checkout shared by the jobs of a branch, as the branch session's workspace holds it at /work/repo. */
  function sharedRepoDir(): string {
    return path.join(freshDir("workspace"), "repo");
  }

  it("the first job creates the branch from the ref, commits what the agent left and pushes it", async () => {
    const repo = makeRepo(runSh('echo "step one" >> notes.txt\necho first-agent'));
    const repoDir = sharedRepoDir();
    const { controller, root } = await setup(job(repo.url, { branch: BRANCH }));
    const run = await runRunner(root, { AGENTLAB_REPO_DIR: repoDir });
    assert.equal(run.code, 0, run.stderr);
    const final = finalReport(controller);
    assert.equal(final.status, "COMPLETED");
    assert.equal(final.message, `agent finished; branch ${BRANCH} pushed`);
    const { result } = final;
    assert.equal(result.branch, BRANCH);
    assert.equal(result.pushed, true);
    assert.equal(result.push_error, undefined);
    assert.equal(result.fetched_commit, repo.head("main"));
    assert.equal(result.base_commit, repo.head("main"));
    // The runner's commit is on the branch, in the checkout and at origin.
    assert.equal(result.commit, git(repoDir, "rev-parse", BRANCH));
    assert.equal(result.commit, repo.head(BRANCH));
    assert.equal(git(repoDir, "rev-parse", "--abbrev-ref", "HEAD"), BRANCH);
    assert.equal(
      git(repoDir, "log", "-1", "--format=%an|%s", BRANCH),
      `agentlab runner|agentlab job ${JOB_ID}`,
    );
    assert.equal(git(repoDir, "show", `${BRANCH}:notes.txt`), "step one");
    assert.equal(git(repoDir, "status", "--porcelain"), "", "nothing left uncommitted");
  });

  it("a later job continues the branch in the same checkout: it sees the earlier commit, never reset to the ref", async () => {
    const repo = makeRepo(
      runSh('cat notes.txt 2>/dev/null || echo "no notes"\necho "step $AGENTLAB_JOB_ID" >> notes.txt'),
    );
    const repoDir = sharedRepoDir();
    const first = await setup(job(repo.url, { branch: BRANCH }));
    assert.equal((await runRunner(first.root, { AGENTLAB_REPO_DIR: repoDir })).code, 0);
    const firstCommit = finalReport(first.controller).result.commit as string;
    // origin's main moves on meanwhile: the second job fetches it but stays on the branch.
    const origin = new URL(repo.url).pathname;
    fs.writeFileSync(path.join(origin, "later.txt"), "later\n");
    git(origin, "add", "-A");
    git(origin, "commit", "-q", "-m", "later on main");

    const second = await setup(job(repo.url, { id: SECOND_ID, branch: BRANCH }));
    const run = await runRunner(second.root, { AGENTLAB_REPO_DIR: repoDir });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(
      run.stdout.includes(`continuing in the existing checkout ${repoDir} (branch ${BRANCH})`),
      run.stdout,
    );
    const { result } = finalReport(second.controller);
    assert.equal(result.output_tail, `step ${JOB_ID}\n`, "the second agent read what the first one wrote");
    assert.equal(result.base_commit, firstCommit);
    assert.equal(result.fetched_commit, repo.head("main"));
    assert.equal(result.pushed, true);
    assert.equal(git(repoDir, "rev-parse", `${result.commit as string}~1`), firstCommit);
    assert.equal(repo.head(BRANCH), result.commit);
    assert.equal(git(repoDir, "show", `${BRANCH}:notes.txt`), `step ${JOB_ID}\nstep ${SECOND_ID}`);
    assert.ok(!fs.existsSync(path.join(repoDir, "later.txt")), "main was not merged into the branch");
  });

  it("a push the origin refuses: COMPLETED, pushed false with git's reason, the commit kept on the branch", async () => {
    const repo = makeRepo(runSh("echo change > change.txt"));
    const origin = new URL(repo.url).pathname;
    fs.writeFileSync(
      path.join(origin, ".git/hooks/pre-receive"),
      "#!/bin/sh\necho 'this origin is read-only' >&2\nexit 1\n",
      {
        mode: 0o755,
      },
    );
    const repoDir = sharedRepoDir();
    const { controller, root } = await setup(job(repo.url, { branch: BRANCH }));
    const run = await runRunner(root, { AGENTLAB_REPO_DIR: repoDir });
    assert.equal(run.code, 0, run.stderr);
    const final = finalReport(controller);
    assert.equal(final.status, "COMPLETED");
    assert.equal(final.result.pushed, false);
    assert.match(
      final.result.push_error as string,
      /^git push of feature\/login failed: .*this origin is read-only/,
    );
    assert.match(
      final.message,
      /^agent finished; branch feature\/login kept in the workspace, not pushed \(git push/,
    );
    assert.equal(final.result.commit, git(repoDir, "rev-parse", BRANCH));
    assert.equal(git(repoDir, "show", `${BRANCH}:change.txt`), "change");
    assert.throws(() => repo.head(BRANCH), "origin has no such branch");
  });

  it("an agent that fails: its work is committed on the branch but not pushed", async () => {
    const repo = makeRepo(runSh("echo half > half.txt\nexit 4"));
    const repoDir = sharedRepoDir();
    const { controller, root } = await setup(job(repo.url, { branch: BRANCH }));
    assert.equal((await runRunner(root, { AGENTLAB_REPO_DIR: repoDir })).code, 0);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.equal(final.result.pushed, false);
    assert.equal(final.result.push_error, "not pushed: the job ended FAILED");
    assert.equal(git(repoDir, "show", `${BRANCH}:half.txt`), "half");
    assert.throws(() => repo.head(BRANCH));
  });

  it("hooks an earlier agent planted in the checkout do not run in the runner's git", async () => {
    const repo = makeRepo(runSh("echo x >> x.txt"));
    const repoDir = sharedRepoDir();
    const first = await setup(job(repo.url, { branch: BRANCH }));
    assert.equal((await runRunner(first.root, { AGENTLAB_REPO_DIR: repoDir })).code, 0);
    const marker = path.join(dir, `hook-ran-${++counter}`);
    for (const hook of ["post-checkout", "pre-commit", "pre-push", "reference-transaction"]) {
      fs.writeFileSync(path.join(repoDir, ".git/hooks", hook), `#!/bin/sh\necho ${hook} >> ${marker}\n`, {
        mode: 0o755,
      });
    }
    const second = await setup(job(repo.url, { id: SECOND_ID, branch: BRANCH }));
    assert.equal((await runRunner(second.root, { AGENTLAB_REPO_DIR: repoDir })).code, 0);
    assert.equal(finalReport(second.controller).result.pushed, true);
    assert.ok(
      !fs.existsSync(marker),
      `a hook ran: ${fs.existsSync(marker) ? fs.readFileSync(marker, "utf8") : ""}`,
    );
  });

  it("refuses a branch name git would not create", async () => {
    const repo = makeRepo(runSh("echo never"));
    const { controller, root } = await setup(job(repo.url, { branch: "bad..name" }));
    assert.equal((await runRunner(root)).code, 0);
    const final = finalReport(controller);
    assert.equal(final.status, "FAILED");
    assert.equal(final.message, 'invalid branch "bad..name": git check-ref-format --branch refuses it');
  });
});
