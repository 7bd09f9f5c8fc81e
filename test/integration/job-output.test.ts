import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createSmokeRepo, type RepoServer, startRepoServer } from "../../src/cli/init/repo-server.js";
import { runCli } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { guestRoot } from "../pvesim/guest-runner.js";
import { setControl } from "../pvesim/harness.js";

/**
 * What a job leaves and prints, end to end on the simulator with the real runner
 * (scripts/guest/agent-runner.sh) cloning from a real git daemon: artifacts uploaded to the guest
 * listener and downloaded through the CLI with their SHA-256 compared, the upload limits and name
 * refusals, the agent's output followed live in order, and a cancel that stops a running agent.
 * One daemon and simulator for the file.
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
    result?: {
      exit_code?: number | null;
      output_tail?: string;
      artifacts_uploaded?: number;
      artifacts_refused?: number;
      fetched_commit?: string;
    };
  };
}
interface ArtifactBody {
  name: string;
  size_bytes: number;
  sha256: string;
}

/** Deterministic content the test can compute too: 20000 numbered lines, about 106 KiB. */
const NUMBERS = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join("");

const RUN_ARTIFACTS = `#!/bin/sh
set -eu
a="$AGENTLAB_ARTIFACTS_DIR"
mkdir -p "$a/out"
echo "result of $AGENTLAB_JOB_ID" > "$a/out/result.txt"
seq 1 20000 > "$a/numbers.txt"
printf 'spaced' > "$a/with space.txt"
ln -s /etc/passwd "$a/leak"
echo "the agent was here" > CHANGED.md
echo "artifacts-agent done"
`;

const RUN_LIMITS = `#!/bin/sh
set -eu
a="$AGENTLAB_ARTIFACTS_DIR"
head -c 500000 /dev/zero > "$a/big.bin"
for i in 1 2 3 4 5 6; do echo "$i" > "$a/f0$i"; done
echo "limits-agent done"
`;

/**
 * An agent that tries to write outside its job's directory through the real endpoint, with the runner's
 * own credential (which it can read: same user). Each answer goes to its output.
 */
const RUN_HOSTILE = `#!/bin/sh
set -u
c="$AGENTLAB_GUEST_ROOT/run/agentlab/secrets/bootstrap.json"
tok=$(jq -r .report.token "$c")
url=$(jq -r .artifact.url "$c")
ctl=$(printf 'ctl\\001x')
for n in '../escape.txt' '/etc/abs.txt' 'a/../../b.txt' 'x/./y' 'back\\slash' "$ctl"; do
  enc=$(jq -rn --arg n "$n" '$n | @uri')
  code=$(printf 'evil' | curl -s -o "$AGENTLAB_GUEST_ROOT/answer" -w '%{http_code}' -H "Authorization: Bearer $tok" --data-binary @- "$url?job_id=$AGENTLAB_JOB_ID&name=$enc")
  printf 'hostile name=[%s] code=%s %s\n' "$n" "$code" "$(jq -r .error "$AGENTLAB_GUEST_ROOT/answer")"
done
code=$(printf 'evil' | curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong" --data-binary @- "$url?job_id=$AGENTLAB_JOB_ID&name=ok.txt")
echo "hostile wrong-token code=$code"
`;

/** Prints a line, waits (bounded) for the test's go file, then prints 50 more. */
const RUN_LIVE = `#!/bin/sh
set -eu
echo "live-line-1"
i=0
while [ ! -e "$AGENTLAB_GUEST_ROOT/go" ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
n=2
while [ "$n" -le 50 ]; do echo "live-line-$n"; n=$((n + 1)); done
`;

/** Runs until stopped (bounded), leaving a mark when it is. */
const RUN_CANCEL = `#!/bin/sh
trap 'echo stopped > "$AGENTLAB_GUEST_ROOT/agent-terminated"; exit 143' TERM
echo "cancel-agent started"
i=0
while [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
echo "cancel-agent was not stopped"
`;

const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest("hex");

async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 90_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe("job artifacts, logs and cancel end to end (shell backend)", () => {
  let h: SimHost;
  let root: string;
  let artifactDir: string;
  let controlPort: number;
  const servers: RepoServer[] = [];
  const urls: Record<string, string> = {};

  async function serve(name: string, script: string): Promise<void> {
    const repo = await createSmokeRepo(join(root, name), script);
    const server = await startRepoServer("git-daemon", repo, "127.0.0.1");
    servers.push(server);
    urls[name] = server.url;
  }
  const jobRun = (repo: string, ...extra: string[]) => [
    "job",
    "run",
    "--repo",
    repo,
    "--task",
    "t",
    "--profile",
    "yolo-ephemeral",
    ...extra,
  ];
  const show = async (id: string) => (await h.json<JobBody>(["job", "show", id])).body;
  const guestLog = (vmid: number) => readFileSync(join(h.sim.dir, "guests", `${vmid}.log`), "utf8");

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-job-output-"));
    artifactDir = join(root, "artifacts");
    const port = await freePort();
    controlPort = await freePort();
    h = await startSimHost(
      "shell",
      `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\nartifact_dir: ${artifactDir}\n` +
        `control_listen: 127.0.0.1:${controlPort}\n` +
        "artifact_max_bytes: 400000\nartifact_max_files: 7\n",
    );
    await setControl(h.sim.dir, FAST_KNOBS);
    await serve("artifacts", RUN_ARTIFACTS);
    await serve("limits", RUN_LIMITS);
    await serve("hostile", RUN_HOSTILE);
    await serve("live", RUN_LIVE);
    await serve("cancel", RUN_CANCEL);
  });
  after(async () => {
    for (const server of servers) await server.stop();
    await h.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test("the runner uploads the agent's files, its log, report.json and repo.diff; download checks each SHA-256", async () => {
    // Text mode: --wait prints the agent's output as it runs.
    const run = await h.cli(jobRun(urls.artifacts!, "--wait"));
    assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}`);
    assert.match(run.stdout, /artifacts-agent done/);
    const id = /^job:\s+(job_[0-9a-f]{16})$/m.exec(run.stdout)?.[1];
    assert.ok(id, run.stdout);
    const job = await show(id);
    assert.equal(job.status, "COMPLETED");
    assert.equal(job.result?.result?.artifacts_uploaded, 6);
    assert.equal(job.result?.result?.artifacts_refused, 0);

    const listed = await h.json<{ artifacts: ArtifactBody[] }>(["job", "artifacts", id]);
    assert.equal(listed.code, 0, listed.stderr);
    const byName = new Map(listed.body.artifacts.map((a) => [a.name, a]));
    assert.deepEqual(
      [...byName.keys()],
      [
        "agentlab/agent-runner.log",
        "agentlab/repo.diff",
        "agentlab/report.json",
        "numbers.txt",
        "out/result.txt",
        "with space.txt",
      ],
      "the symlink to /etc/passwd is not among them",
    );
    assert.equal(byName.get("numbers.txt")!.sha256, sha256(NUMBERS));
    assert.equal(byName.get("numbers.txt")!.size_bytes, Buffer.byteLength(NUMBERS));
    // On the host: artifact_dir/<job>/<name>, no temporary files left.
    assert.equal(readFileSync(join(artifactDir, id, "numbers.txt"), "utf8"), NUMBERS);
    assert.deepEqual(readdirSync(join(artifactDir, id)).sort(), [
      "agentlab",
      "numbers.txt",
      "out",
      "with space.txt",
    ]);
    const text = await h.cli(["job", "artifacts", id]);
    assert.match(
      text.stdout,
      new RegExp(`numbers\\.txt\\s+${Buffer.byteLength(NUMBERS)}\\s+${sha256(NUMBERS)}`),
    );

    const out = join(root, "download");
    const all = await h.cli(["job", "artifacts", "download", id, "--out", out]);
    assert.equal(all.code, 0, all.stderr);
    assert.match(all.stdout, /downloaded 6 artifacts/);
    for (const a of listed.body.artifacts) {
      assert.equal(sha256(readFileSync(join(out, a.name))), a.sha256, a.name);
    }
    assert.equal(readFileSync(join(out, "numbers.txt"), "utf8"), NUMBERS);
    assert.equal(readFileSync(join(out, "out", "result.txt"), "utf8"), `result of ${id}\n`);
    const report = JSON.parse(readFileSync(join(out, "agentlab", "report.json"), "utf8"));
    assert.equal(report.exit_code, 0);
    assert.match(readFileSync(join(out, "agentlab", "agent-runner.log"), "utf8"), /artifacts-agent done/);

    const diffFile = join(root, "fix.diff");
    const one = await h.cli([
      "job",
      "artifacts",
      "download",
      id,
      "--name",
      "agentlab/repo.diff",
      "--out",
      diffFile,
    ]);
    assert.equal(one.code, 0, one.stderr);
    const diff = readFileSync(diffFile, "utf8");
    assert.match(diff, /^diff --git a\/CHANGED\.md b\/CHANGED\.md$/m);
    assert.match(diff, /^\+the agent was here$/m);

    // Through a remote endpoint with a read token: the same bytes, in 1 MiB chunks over the WebSocket.
    const token = await h.json<{ secret: string }>([
      "token",
      "create",
      "--name",
      "reader",
      "--scope",
      "read",
    ]);
    assert.equal(token.code, 0, token.stderr);
    const home = join(root, "client");
    const env = { XDG_CONFIG_HOME: home, AGENTLAB_ENDPOINT: "", AGENTLAB_TOKEN: "", AGENTLAB_SOCKET: "" };
    const endpoint = `https://127.0.0.1:${controlPort}`;
    const connected = await runCli(["connect", "--endpoint", endpoint, "--token", token.body.secret], {
      env,
    });
    assert.equal(connected.code, 0, connected.stderr);
    const remoteOut = join(root, "remote-download");
    const remote = await runCli(["job", "artifacts", "download", id, "--out", remoteOut], { env });
    assert.equal(remote.code, 0, remote.stderr);
    for (const a of listed.body.artifacts) {
      assert.equal(sha256(readFileSync(join(remoteOut, a.name))), a.sha256, `remote ${a.name}`);
    }

    const missing = await h.json<{ code: string }>(["job", "artifacts", "download", id, "--name", "nope"]);
    assert.equal(missing.code, 1);
    assert.equal(missing.body.code, "ARTIFACT_NOT_FOUND");

    // The doctor bundle has the inventory.
    const bundle = join(root, "bundle.tar.gz");
    const doctor = await h.cli(["job", "doctor", id, "--out", bundle]);
    assert.equal(doctor.code, 0, doctor.stderr);
    const inventory = await tarEntry(bundle, "artifacts/job.json");
    assert.deepEqual(
      (JSON.parse(inventory) as { artifacts: ArtifactBody[] }).artifacts.map((a) => [a.name, a.sha256]),
      listed.body.artifacts.map((a) => [a.name, a.sha256]),
    );
  });

  test("over the limits an upload gets 413 with a reason the runner logs; the rest still goes", async () => {
    const run = await h.json<JobBody>(jobRun(urls.limits!, "--wait"));
    assert.equal(run.code, 0, run.stderr);
    // 7 files at most: the runner's 3, then in byte order big.bin (500000 bytes > 400000: refused),
    // f01..f04, and f05 and f06 past the count.
    assert.equal(run.body.result?.result?.artifacts_uploaded, 7);
    assert.equal(run.body.result?.result?.artifacts_refused, 3);
    const listed = await h.json<{ artifacts: ArtifactBody[] }>(["job", "artifacts", run.body.id]);
    assert.deepEqual(
      listed.body.artifacts.map((a) => a.name).filter((n) => !n.startsWith("agentlab/")),
      ["f01", "f02", "f03", "f04"],
    );
    const log = guestLog(run.body.sandbox_vmid!);
    assert.match(
      log,
      /artifact big\.bin not uploaded: HTTP 413: artifact exceeds size limit: big\.bin does not fit/,
    );
    assert.match(
      log,
      /artifact f05 not uploaded: HTTP 413: artifact count limit reached: job job_[0-9a-f]{16} already has 7 artifacts/,
    );
    assert.equal(existsSync(join(artifactDir, run.body.id, "big.bin")), false);
    assert.deepEqual(
      readdirSync(join(artifactDir, run.body.id)).filter((n) => n.includes(".tmp-")),
      [],
      "a refused upload leaves no temporary file",
    );
  });

  test("names that leave the job's directory, and a wrong token, are refused", async () => {
    const run = await h.json<JobBody>(jobRun(urls.hostile!, "--wait"));
    assert.equal(run.code, 0, run.stderr);
    const out = run.body.result?.result?.output_tail ?? "";
    const line = (name: string) => {
      const found = new RegExp(`^hostile name=\\[${name}\\] (.*)$`, "m").exec(out)?.[1];
      assert.ok(found !== undefined, `no answer for ${name} in:\n${out}`);
      return found;
    };
    assert.match(line("\\.\\./escape\\.txt") ?? "", /^code=400 .*has an empty, "\." or "\.\." segment/);
    assert.match(line("/etc/abs\\.txt") ?? "", /^code=400 .*must be a relative path/);
    assert.match(line("a/\\.\\./\\.\\./b\\.txt") ?? "", /^code=400 /);
    assert.match(line("x/\\./y") ?? "", /^code=400 /);
    assert.match(line("back\\\\slash") ?? "", /^code=400 .*control characters or backslashes/);
    assert.match(line("ctl.x") ?? "", /^code=400 .*control characters or backslashes/);
    assert.match(out, /^hostile wrong-token code=403$/m);
    for (const path of [
      join(root, "escape.txt"),
      join(artifactDir, "escape.txt"),
      join(artifactDir, "b.txt"),
    ]) {
      assert.equal(existsSync(path), false, path);
    }
    const names = (await h.json<{ artifacts: ArtifactBody[] }>(["job", "artifacts", run.body.id])).body
      .artifacts;
    assert.deepEqual(
      names.map((a) => a.name),
      ["agentlab/agent-runner.log", "agentlab/repo.diff", "agentlab/report.json"],
    );
  });

  test("job logs --follow prints the agent's output live and in order until the job ends", async () => {
    const run = await h.json<JobBody>(jobRun(urls.live!));
    assert.equal(run.code, 0, run.stderr);
    const id = run.body.id;
    const follow = spawn(
      process.execPath,
      [AGENTLAB_BIN, "--socket", h.host.socketPath, "job", "logs", id, "--follow"],
      {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, AGENTLAB_SOCKET: "" },
      },
    );
    let stdout = "";
    let stderr = "";
    follow.stdout.on("data", (chunk) => (stdout += chunk));
    follow.stderr.on("data", (chunk) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => follow.on("close", resolve));
    // The first line arrives while the agent is still waiting for the go file: it is live.
    await until("the first line through --follow", () =>
      stdout.includes("live-line-1\n") ? true : undefined,
    );
    assert.doesNotMatch(stdout, /live-line-2\n/);
    const vmid = (await show(id)).sandbox_vmid!;
    writeFileSync(join(guestRoot(h.sim.dir, vmid), "go"), "");
    assert.equal(await exited, 0, stderr);
    const expected = Array.from({ length: 50 }, (_, i) => `live-line-${i + 1}`).join("\n");
    assert.equal(stdout.trim(), expected, "every line once, in order");
    assert.match(stderr, new RegExp(`job ${id} ended COMPLETED`));
    const logs = await h.cli(["job", "logs", id]);
    assert.equal(logs.stdout.trim(), expected);
  });

  test("job cancel stops the running agent; the job ends FAILED (cancelled); a keepalive sandbox stays", async () => {
    const run = await h.json<JobBody>(jobRun(urls.cancel!, "--keepalive"));
    assert.equal(run.code, 0, run.stderr);
    const id = run.body.id;
    await until("the agent's first line", async () => {
      const logs = await h.json<{ text: string }>(["job", "logs", id]);
      return logs.body.text.includes("cancel-agent started") ? true : undefined;
    });
    const vmid = (await show(id)).sandbox_vmid!;
    const cancelled = await h.cli(["job", "cancel", id]);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.equal(
      cancelled.stdout,
      `job ${id} cancelled: FAILED (cancelled); sandbox ${vmid} is kept (keepalive); destroy it with agentlab sandbox destroy ${vmid}\n`,
    );
    const job = await show(id);
    assert.equal(job.status, "FAILED");
    assert.equal(job.failure_reason, "cancelled");
    // The runner learns it from its next log chunk and stops the agent.
    await until("the agent to be stopped", () =>
      existsSync(join(guestRoot(h.sim.dir, vmid), "agent-terminated")) ? true : undefined,
    );
    await until("the runner to exit", () => (/agent-runner: exit 0/.test(guestLog(vmid)) ? true : undefined));
    assert.match(guestLog(vmid), /the job was ended by the controller \(cancelled\); the agent was stopped/);
    const box = await until("the sandbox to follow the job", async () => {
      const s = await h.json<{ state: string }>(["sandbox", "show", String(vmid)]);
      return s.body.state === "RUNNING" ? undefined : s.body;
    });
    assert.equal(box.state, "FAILED");
    const again = await h.json<{ code: string }>(["job", "cancel", id]);
    assert.equal(again.code, 1);
    assert.equal(again.body.code, "JOB_NOT_ACTIVE");
    assert.equal((await h.cli(["sandbox", "destroy", String(vmid)])).code, 0);
  });

  test("job validate checks a request as run would and records nothing", async () => {
    const before = (await h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs.length;
    const ok = await h.json<{ valid: boolean; profile: string; ref: string }>([
      "job",
      "validate",
      "--repo",
      urls.artifacts!,
      "--task",
      "t",
      "--profile",
      "yolo-ephemeral",
      "--ref",
      "dev",
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual([ok.body.valid, ok.body.profile, ok.body.ref], [true, "yolo-ephemeral", "dev"]);
    const bad = await h.json<{ code: string; message: string }>([
      "job",
      "validate",
      "--repo",
      urls.artifacts!,
      "--task",
      "t",
      "--profile",
      "nope",
    ]);
    assert.equal(bad.code, 1);
    assert.equal(bad.body.code, "PROFILE_NOT_FOUND");
    const ws = await h.json<{ code: string }>([
      "job",
      "validate",
      "--repo",
      urls.artifacts!,
      "--task",
      "t",
      "--profile",
      "yolo-ephemeral",
      "--workspace",
      "nope",
    ]);
    assert.equal(ws.body.code, "WORKSPACE_NOT_FOUND");
    assert.equal((await h.json<{ jobs: JobBody[] }>(["job", "list"])).body.jobs.length, before);
  });

  test("--workspace new:NAME creates the workspace, runs the job on it, and creates nothing for a refused job", async () => {
    const refused = await h.json<{ code: string }>(
      [...jobRun(urls.artifacts!, "--workspace", "new:jobnew", "--workspace-size", "1G")].map((a) =>
        a === "yolo-ephemeral" ? "nope" : a,
      ),
    );
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "PROFILE_NOT_FOUND");
    assert.equal(
      (await h.json<{ code: string }>(["workspace", "show", "jobnew"])).body.code,
      "WORKSPACE_NOT_FOUND",
    );
    const noSize = await h.json<{ code: string; message: string }>(
      jobRun(urls.artifacts!, "--workspace", "new:jobnew"),
    );
    assert.equal(noSize.code, 2);
    assert.equal(noSize.body.message, "--workspace new:NAME needs --workspace-size (e.g. 80G)");
    const stray = await h.json<{ code: string; message: string }>(
      jobRun(urls.artifacts!, "--workspace", "jobnew", "--workspace-size", "1G"),
    );
    assert.equal(stray.code, 2);
    assert.equal(stray.body.message, "--workspace-size goes with --workspace new:NAME");

    const run = await h.json<JobBody & { workspace_id?: string }>(
      jobRun(urls.artifacts!, "--workspace", "new:jobnew", "--workspace-size", "1G", "--wait"),
    );
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.body.status, "COMPLETED");
    const ws = await h.json<{ id: string; size_gb: number; attached_vmid?: number }>([
      "workspace",
      "show",
      "jobnew",
    ]);
    assert.equal(ws.body.id, run.body.workspace_id);
    assert.equal(ws.body.size_gb, 1);
    await until("the workspace to be detached", async () => {
      const now = await h.json<{ attached_vmid?: number }>(["workspace", "show", "jobnew"]);
      return now.body.attached_vmid === undefined ? true : undefined;
    });
  });
});

/** One file of a .tar.gz, through tar. */
async function tarEntry(archive: string, name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const tar = spawn("tar", ["-xzOf", archive, "--wildcards", `*${name}`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    tar.stdout.on("data", (c) => (out += c));
    tar.stderr.on("data", (c) => (err += c));
    tar.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`tar: ${err}`))));
  });
}
