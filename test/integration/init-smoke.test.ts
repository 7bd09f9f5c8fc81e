/**
 * `agentlab init --smoke-test` against the simulator daemon.
 *
 * Without root: the failures that happen before anything is created (unknown profile, no repo server,
 * no daemon, flags without --smoke-test) and the repo server itself.
 *
 * As root: the whole run in network namespaces. The "host" namespace has vmbr1 (10.77.0.1/16), a WAN
 * link to a "lan" namespace (192.168.50.2, also holding the public 203.0.113.2 as the Internet) and the
 * real ruleset loaded with apply.sh; the daemon and the CLI run inside it. The job's sandbox is the
 * simulator's VM (its runner clones from the CLI's repo server) and, for the network check, a "sb"
 * namespace on vmbr1 whose port the simulator's nic_plug names tap<vmid>i0 when the VM starts
 * (test/system/nic-plug-ns.sh) and which takes the VM's MAC and address when smoke_test.sh first
 * enters it (test/system/smoke-sandbox-ns.sh as --smoke-exec).
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { closeHole, type NftCall, openHole } from "../../src/cli/init/firewall-hole.js";
import { execRunner } from "../../src/cli/init/host-checks.js";
import {
  accepts,
  createSmokeRepo,
  type RepoServerKind,
  startRepoServer,
} from "../../src/cli/init/repo-server.js";
import type { SmokeReport } from "../../src/cli/init/smoke.js";
import { smokeRunScript } from "../../src/cli/init/smoke-plan.js";
import { runCli } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";
import { type SimHost, startSimHost } from "../helpers/simhost.js";
import { type NetnsSimHost, startSimHostInNetns } from "../helpers/smoke-host.js";
import { setControl } from "../pvesim/harness.js";
import { NetnsLab, netnsSkipReason, removeStaleNamespaces } from "../system/netns.js";

interface InitJson {
  ok: boolean;
  checks: { name: string; status: string }[];
  smoke: SmokeReport;
}

const SANDBOX_NS = join(REPO_ROOT, "test/system/smoke-sandbox-ns.sh");
const NIC_PLUG = join(REPO_ROOT, "test/system/nic-plug-ns.sh");

function smokeDirs(): Set<string> {
  return new Set(readdirSync(tmpdir()).filter((name) => name.startsWith("agentlab-smoke-")));
}

function stepStatuses(report: SmokeReport): Record<string, string> {
  return Object.fromEntries(report.steps.map((s) => [s.step, s.status]));
}

describe("init --smoke-test: failures before anything is created", () => {
  let h: SimHost;
  const cleanups: string[] = [];
  before(async () => {
    // A listening guest listener: the daemon step passes and the failures below are the ones tested.
    h = await startSimHost("shell", "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 127.0.0.0/8\n");
  });
  after(async () => {
    await h.stop();
    for (const dir of cleanups) rmSync(dir, { recursive: true, force: true });
  });

  const nothingCreated = async () => {
    const sandboxes = await h.json<{ sandboxes: unknown[] }>(["sandbox", "list", "--all"]);
    assert.deepEqual(sandboxes.body.sandboxes, []);
    const jobs = await h.json<{ jobs: unknown[] }>(["job", "list"]);
    assert.deepEqual(jobs.body.jobs, []);
  };

  test("--smoke-* flags without --smoke-test are a usage error", async () => {
    const result = await h.cli(["init", "--smoke-profile", "yolo-ephemeral"]);
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /error: --smoke-profile only makes sense with --smoke-test/);
    const timeout = await h.cli(["init", "--smoke-test", "--smoke-timeout", "soon"]);
    assert.equal(timeout.code, 2);
    assert.match(timeout.stderr, /--smoke-timeout: expected whole seconds/);
    const exec = await h.cli(["init", "--smoke-test", "--smoke-exec", "ssh {host}"]);
    assert.equal(exec.code, 2);
    assert.match(exec.stderr, /--smoke-exec: unknown placeholder \{host\}/);
  });

  test("unknown --smoke-profile: FAIL at profile with the profiles to choose from; nothing created", async () => {
    const before = smokeDirs();
    const text = await h.cli(["init", "--smoke-test", "--smoke-profile", "nope"]);
    assert.equal(text.code, 1, text.stderr);
    assert.match(
      text.stdout,
      /^\[smoke\] daemon: ok agentlabd \S+, Proxmox 9\.1\.7, guest listener http:\/\/127\.0\.0\.1:\d+$/m,
    );
    assert.match(text.stdout, /^\[smoke\] profile: FAIL unknown profile "nope"$/m);
    assert.match(
      text.stdout,
      /^ +hint: choose one of: interactive-dev, yolo-ephemeral, yolo-workspace \(--smoke-profile NAME\)$/m,
    );
    assert.match(text.stdout, /^\[smoke\] repo: skipped \(profile failed\)$/m);
    assert.match(text.stdout, /^\[smoke\] destroy: skipped \(no sandbox was created\)$/m);
    assert.match(text.stdout, /^\[smoke\] FAIL at profile$/m);

    const json = await h.json<InitJson>(["init", "--smoke-test", "--smoke-profile", "nope"]);
    assert.equal(json.code, 1);
    assert.equal(json.body.ok, false);
    assert.deepEqual(stepStatuses(json.body.smoke), {
      daemon: "ok",
      profile: "fail",
      repo: "skipped",
      job: "skipped",
      cleanup: "ok",
      network: "skipped",
      destroy: "skipped",
    });
    assert.match(
      json.stderr,
      /^\[smoke\] profile: FAIL unknown profile "nope"$/m,
      "step lines go to stderr under --json",
    );
    await nothingCreated();
    assert.deepEqual(smokeDirs(), before);
  });

  test("several profiles and no --smoke-profile: FAIL at profile, naming them", async () => {
    const result = await h.cli(["init", "--smoke-test"]);
    assert.equal(result.code, 1);
    assert.match(
      result.stdout,
      /^\[smoke\] profile: FAIL the daemon has 3 profiles; say which one the smoke test uses$/m,
    );
    assert.match(
      result.stdout,
      /hint: add --smoke-profile NAME, one of: interactive-dev, yolo-ephemeral, yolo-workspace/,
    );
    await nothingCreated();
  });

  test("no git daemon and no python3: FAIL at repo with the troubleshooting hint; nothing created", async () => {
    // git itself is there (its exec path is emptied, so `git daemon` is not); python3 is not on PATH.
    const bin = mkdtempSync(join(tmpdir(), "agentlab-it-smoke-bin-"));
    const emptyExec = mkdtempSync(join(tmpdir(), "agentlab-it-smoke-exec-"));
    cleanups.push(bin, emptyExec);
    symlinkSync(execFileSync("sh", ["-c", "command -v git"], { encoding: "utf8" }).trim(), join(bin, "git"));
    const before = smokeDirs();
    const restricted = await runCli(
      ["--socket", h.host.socketPath, "init", "--smoke-test", "--smoke-profile", "yolo-ephemeral"],
      { env: { PATH: bin, GIT_EXEC_PATH: emptyExec } },
    );
    assert.equal(restricted.code, 1, restricted.stderr);
    assert.match(
      restricted.stdout,
      /^\[smoke\] repo: FAIL cannot run a temporary repo server: neither git daemon nor python3 is available$/m,
    );
    assert.match(
      restricted.stdout,
      /hint: .*needs python3 or git daemon.*python3 --version; git daemon --version/,
    );
    assert.match(restricted.stdout, /^\[smoke\] job: skipped \(repo failed\)$/m);
    await nothingCreated();
    assert.deepEqual(smokeDirs(), before);
  });

  test("the daemon is down: FAIL at daemon with how to check it", async () => {
    const result = await runCli([
      "--socket",
      join(tmpdir(), "agentlab-no-such.sock"),
      "init",
      "--smoke-test",
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stdout,
      /^\[smoke\] daemon: FAIL invalid socket path .*agentlab-no-such\.sock: no such socket file/m,
    );
    assert.match(result.stdout, /hint: 1\. check the daemon: systemctl status agentlabd/);
  });
});

describe("init --smoke-test: the temporary repo server", () => {
  const hasPython = spawnSync("python3", ["--version"]).status === 0;
  for (const kind of ["git-daemon", "http"] as RepoServerKind[]) {
    const skipKind =
      kind === "http" && !hasPython ? "python3 is not installed (apt-get install python3)" : false;
    test(`${kind}: serves the repository on the address given until stopped`, {
      skip: skipKind,
    }, async () => {
      const root = mkdtempSync(join(tmpdir(), "agentlab-it-smoke-repo-"));
      try {
        const repo = await createSmokeRepo(root, smokeRunScript("agentlab-smoke-feed"));
        assert.equal(repo.ref, "main");
        assert.match(repo.head, /^[0-9a-f]{40}$/);
        const server = await startRepoServer(kind, repo, "127.0.0.1");
        assert.match(
          server.url,
          kind === "git-daemon" ? /^git:\/\/127\.0\.0\.1:\d+\/smoke\.git$/ : /^http:\/\//,
        );
        const clone = join(root, "clone");
        execFileSync("git", ["clone", "-q", "--branch", "main", server.url, clone], { stdio: "pipe" });
        assert.equal(
          execFileSync("git", ["-C", clone, "rev-parse", "HEAD"], { encoding: "utf8" }).trim(),
          repo.head,
        );
        assert.ok(statSync(join(clone, ".agentlab/run.sh")).mode & 0o100, "run.sh is executable");
        assert.equal(
          execFileSync("sh", ["-c", "./.agentlab/run.sh && cat agentlab-smoke.txt"], {
            cwd: clone,
            encoding: "utf8",
          }),
          `agentlab smoke marker: agentlab-smoke-feed\nwrote ${clone}/agentlab-smoke.txt\nagentlab-smoke-feed\n`,
        );
        await server.stop();
        assert.equal(await accepts("127.0.0.1", server.port), false, "nothing listens after stop");
        assert.throws(() => process.kill(server.pid!, 0), /ESRCH/);
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    });
  }
});

const skip = netnsSkipReason();

describe("init --smoke-test in network namespaces", { skip, timeout: 600_000 }, () => {
  const lab = new NetnsLab();
  const ns = { host: "", lan: "", sb: "" };
  let h: NetnsSimHost;
  let root = "";
  const INET = "203.0.113.2";
  const NET_ARGS = [
    "--smoke-net-arg=--no-dns",
    "--smoke-net-arg=--egress",
    `--smoke-net-arg=${INET}:8080`,
    "--smoke-net-arg=--timeout",
    "--smoke-net-arg=1",
  ];

  before(async () => {
    await removeStaleNamespaces();
    root = mkdtempSync(join(tmpdir(), "agentlab-it-smoke-netns-"));
    ns.host = await lab.addNamespace("host");
    ns.lan = await lab.addNamespace("lan");
    const { host, lan } = ns;
    await lab.must(host, "ip", ["link", "add", "vmbr1", "type", "bridge", "stp_state", "0"]);
    await lab.must(host, "ip", ["addr", "add", "10.77.0.1/16", "dev", "vmbr1"]);
    await lab.must(host, "ip", ["link", "set", "vmbr1", "up"]);
    await lab.must(host, "ip", ["link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", lan]);
    await lab.must(host, "ip", ["addr", "add", "192.168.50.1/24", "dev", "wan0"]);
    await lab.must(host, "ip", ["link", "set", "wan0", "up"]);
    await lab.must(host, "ip", ["route", "add", "default", "via", "192.168.50.2"]);
    await lab.sysctl(host, "net.ipv4.ip_forward", "1");
    await lab.must(lan, "ip", ["addr", "add", "192.168.50.2/24", "dev", "eth0"]);
    await lab.must(lan, "ip", ["link", "set", "eth0", "up"]);
    await lab.must(lan, "ip", ["addr", "add", `${INET}/32`, "dev", "lo"]);
    await lab.must(lan, "ip", ["route", "add", "10.77.0.0/16", "via", "192.168.50.1"]);
    await lab.listen(lan, { tcp: [8080, 80, 22] });
    const apply = await lab.exec(
      host,
      "sh",
      [join(REPO_ROOT, "scripts/net/apply.sh"), "--apply", "--root", root, "--wan", "wan0"],
      { timeoutMs: 60_000 },
    );
    assert.equal(apply.exitCode, 0, apply.stderr);
    // After the ruleset: the daemon finds it loaded and binds each sandbox's port, MAC and address. The
    // simulator plugs each VM's NIC (sbport becomes tap<vmid>i0) when it starts, as Proxmox does, so
    // the daemon finds the port on vmbr1 at READY.
    h = await startSimHostInNetns(host, "bootstrap_listen: 10.77.0.1:8844\n", {
      knobs: { nic_plug: `sh ${NIC_PLUG} ${host}` },
    });
  });

  after(async () => {
    await h?.stop();
    const problems = await lab.destroy();
    if (root) rmSync(root, { recursive: true, force: true });
    assert.deepEqual(problems, [], "teardown left namespaces behind");
  });

  /** A fresh "sb" namespace whose eth0 is a port (sbport) of vmbr1, no address yet. */
  async function freshSandboxNamespace(): Promise<string> {
    if (ns.sb) {
      execFileSync("ip", ["netns", "del", ns.sb]);
      lab.namespaces.splice(lab.namespaces.indexOf(ns.sb), 1);
    }
    ns.sb = await lab.addNamespace("sb");
    await lab.must(ns.host, "ip", [
      "link",
      "add",
      "sbport",
      "type",
      "veth",
      "peer",
      "name",
      "eth0",
      "netns",
      ns.sb,
    ]);
    await lab.must(ns.host, "ip", ["link", "set", "sbport", "master", "vmbr1", "up"]);
    return ns.sb;
  }

  const nft: NftCall = (args) => execRunner("ip", ["netns", "exec", ns.host, "nft", ...args]);
  const smokeRules = async () =>
    (await lab.must(ns.host, "nft", ["-a", "list", "chain", "inet", "agentlab", "input"]))
      .split("\n")
      .filter((l) => l.includes("agentlab-smoke"));

  const execPrefix = () => `sh ${SANDBOX_NS} ${ns.host} ${ns.sb} {vmid} {ip}`;

  async function assertCleanedUp(report: SmokeReport) {
    assert.deepEqual(await smokeRules(), [], "no agentlab-smoke rule left");
    const cleanup = report.steps.find((s) => s.step === "cleanup");
    assert.equal(cleanup?.status, "ok", JSON.stringify(cleanup));
    const tmp = /(\/\S*agentlab-smoke-\w+) removed/.exec(cleanup!.detail)?.[1];
    assert.ok(tmp, cleanup!.detail);
    assert.equal(existsSync(tmp), false, `${tmp} removed`);
    if (report.repo_url) {
      const port = Number(new URL(report.repo_url).port);
      assert.equal(await lab.connect(ns.host, "10.77.0.1", port), "refused", "the repo server is gone");
    }
    if (report.vmid !== undefined) {
      const shown = await h.cli(["--json", "sandbox", "show", String(report.vmid)]);
      assert.equal(JSON.parse(shown.stdout).state, "DESTROYED");
    }
  }

  test("the firewall hole: the sandbox reaches the port only while it is open", async () => {
    const sb = await freshSandboxNamespace();
    await lab.must(sb, "ip", ["addr", "add", "10.77.9.9/16", "dev", "eth0"]);
    await lab.must(sb, "ip", ["link", "set", "eth0", "up"]);
    await lab.listen(ns.host, { tcp: [47001] });
    assert.equal(await lab.connect(sb, "10.77.0.1", 47001), "timeout", "the ruleset drops it");
    const hole = await openHole(nft, {
      bridge: "vmbr1",
      subnet: "10.77.0.0/16",
      host: "10.77.0.1",
      port: 47001,
      pid: process.pid,
    });
    assert.ok(hole.opened);
    assert.equal((await smokeRules()).length, 1);
    assert.equal(await lab.connect(sb, "10.77.0.1", 47001), "open");
    assert.equal(await lab.connect(sb, "10.77.0.1", 8006), "timeout", "only that port");
    assert.equal(await closeHole(nft, hole), "removed");
    assert.equal(await lab.connect(sb, "10.77.0.1", 47001), "timeout");
    assert.deepEqual(await smokeRules(), []);
    assert.equal(await closeHole(nft, hole), "gone");
  });

  test("a healthy host: every step ok, the sandbox destroyed, nothing left behind", async () => {
    await freshSandboxNamespace();
    const result = await h.cli([
      "init",
      "--smoke-test",
      "--smoke-profile",
      "yolo-ephemeral",
      "--smoke-exec",
      execPrefix(),
      ...NET_ARGS,
      "--smoke-timeout",
      "120",
    ]);
    const out = result.stdout;
    assert.equal(result.code, 0, `${out}\n${result.stderr}\n${h.daemonOutput().stderr}`);
    assert.match(out, /^ok +bridge_vmbr1 +vmbr1 has 10\.77\.0\.1\/16$/m, "the checks come first");
    assert.match(
      out,
      /^\[smoke\] daemon: ok agentlabd \S+, Proxmox 9\.1\.7, guest listener http:\/\/10\.77\.0\.1:8844$/m,
    );
    assert.match(out, /^\[smoke\] profile: ok yolo-ephemeral \(template 9000, network nat\)$/m);
    assert.match(
      out,
      /^\[smoke\] repo: ok git:\/\/10\.77\.0\.1:\d+\/smoke\.git \(git daemon, branch main at [0-9a-f]{12}\); firewall: temporary rule \(handle \d+\) accepts TCP \d+ from 10\.77\.0\.0\/16 on vmbr1$/m,
    );
    assert.match(out, /^\[smoke\] job: ok job_\w+ COMPLETED on [0-9a-f]{12}, marker found in its output$/m);
    assert.match(
      out,
      /^\[smoke\] cleanup: ok repo server stopped \(pid \d+\); firewall rule handle \d+ deleted; \S+ removed$/m,
    );
    for (const check of [
      "exec",
      "egress",
      "host-bootstrap-reach",
      "host-block-8006",
      "host-block-22",
      "lan-block",
    ]) {
      assert.match(out, new RegExp(`^  PASS ${check} `, "m"), out);
    }
    assert.match(out, /^\[smoke\] network: ok PASS \(7 passed\)$/m);
    assert.match(out, /^\[smoke\] destroy: ok sandbox \d+ DESTROYED$/m);
    assert.match(out, /^\[smoke\] PASS$/m);
    // The order the steps ran in.
    const order = [...out.matchAll(/^\[smoke\] (\w+): (?:ok|FAIL)/gm)].map((m) => m[1]);
    assert.deepEqual(order, ["daemon", "profile", "repo", "job", "cleanup", "network", "destroy"]);

    const vmid = Number(/destroy: ok sandbox (\d+)/.exec(out)![1]);
    const jobId = /job: ok (job_\w+)/.exec(out)![1]!;
    const job = JSON.parse((await h.cli(["--json", "job", "show", jobId])).stdout);
    assert.equal(job.status, "COMPLETED");
    assert.equal(job.sandbox_vmid, vmid);
    assert.match(job.result.result.output_tail, /agentlab smoke marker: agentlab-smoke-[0-9a-f]{16}/);
    const port = Number(/git:\/\/10\.77\.0\.1:(\d+)\/smoke\.git/.exec(out)![1]);
    const cleanupLine = /^\[smoke\] cleanup: ok .*$/m.exec(out)![0];
    await assertCleanedUp({
      ok: true,
      interrupted: false,
      vmid,
      repo_url: `git://10.77.0.1:${port}/smoke.git`,
      steps: [{ step: "cleanup", status: "ok", detail: cleanupLine }],
    });
  });

  test("a failing job (its run.sh exits 1): FAIL at job with the job's message, cleanup still done", async () => {
    await freshSandboxNamespace();
    const source = join(root, "failing");
    mkdirSync(join(source, ".agentlab"), { recursive: true });
    writeFileSync(join(source, ".agentlab/run.sh"), "#!/bin/sh\necho about to fail\nexit 1\n", {
      mode: 0o755,
    });
    const git = (...args: string[]) =>
      execFileSync("git", ["-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", source, ...args], {
        stdio: "pipe",
      });
    execFileSync("git", ["init", "-q", source]);
    git("symbolic-ref", "HEAD", "refs/heads/trunk");
    git("add", ".");
    git("commit", "-q", "-m", "fails");
    const head = execFileSync("git", ["-C", source, "rev-parse", "HEAD"], { encoding: "utf8" }).trim();

    const result = await h.cli([
      "--json",
      "init",
      "--smoke-test",
      "--smoke-profile",
      "yolo-ephemeral",
      "--smoke-repo",
      source,
      "--smoke-exec",
      execPrefix(),
      ...NET_ARGS,
      "--smoke-timeout",
      "120",
    ]);
    assert.equal(result.code, 1, `${result.stdout}\n${result.stderr}`);
    const report = (JSON.parse(result.stdout) as InitJson).smoke;
    assert.equal(report.ok, false);
    assert.deepEqual(stepStatuses(report), {
      daemon: "ok",
      profile: "ok",
      repo: "ok",
      job: "fail",
      cleanup: "ok",
      network: "skipped",
      destroy: "ok",
    });
    const jobStep = report.steps.find((s) => s.step === "job")!;
    assert.match(jobStep.detail, new RegExp(`^${report.job_id} ended FAILED: .*\\(exit 1\\)$`));
    assert.match(
      jobStep.hint ?? "",
      new RegExp(`^agentlab job show ${report.job_id}; journalctl -u agentlabd -f`),
    );
    assert.ok(jobStep.output?.includes("about to fail"), JSON.stringify(jobStep.output));
    assert.match(
      report.steps.find((s) => s.step === "repo")!.detail,
      new RegExp(`branch trunk at ${head.slice(0, 12)}`),
    );
    assert.match(result.stderr, /^\[smoke\] job: FAIL /m);
    await assertCleanedUp(report);
  });

  test("Ctrl-C while the job runs: the step fails as interrupted and everything is still cleaned up", async () => {
    await freshSandboxNamespace();
    // The guest never starts its runner: the job stays RUNNING until the smoke test is interrupted.
    await setControl(h.sim.dir, { runner: 0 });
    let child: ChildProcess | undefined;
    try {
      child = h.spawnCli([
        "--json",
        "init",
        "--smoke-test",
        "--smoke-profile",
        "yolo-ephemeral",
        "--smoke-timeout",
        "300",
      ]);
      let stdout = "";
      let stderr = "";
      child.stdout?.on("data", (chunk) => (stdout += chunk));
      child.stderr?.on("data", (chunk) => (stderr += chunk));
      const closed = new Promise<number | null>((resolve) => child!.once("close", (code) => resolve(code)));
      // Wait until the job has a sandbox that is up.
      const deadline = Date.now() + 120_000;
      for (;;) {
        const jobs = JSON.parse((await h.cli(["--json", "job", "list"])).stdout).jobs as {
          status: string;
          sandbox_vmid?: number;
        }[];
        const running = jobs.find((j) => j.status === "RUNNING" && j.sandbox_vmid !== undefined);
        if (running) break;
        assert.ok(Date.now() < deadline, `no running job: ${stderr}`);
        await sleep(250);
      }
      child.kill("SIGINT");
      const code = await closed;
      assert.equal(code, 130, `${stdout}\n${stderr}`);
      assert.match(stderr, /^\[smoke\] interrupted: cleaning up/m);
      const report = (JSON.parse(stdout) as InitJson).smoke;
      assert.equal(report.interrupted, true);
      assert.deepEqual(stepStatuses(report), {
        daemon: "ok",
        profile: "ok",
        repo: "ok",
        job: "fail",
        cleanup: "ok",
        network: "skipped",
        destroy: "ok",
      });
      assert.equal(report.steps.find((s) => s.step === "job")!.detail, "interrupted (Ctrl-C)");
      assert.ok(report.vmid !== undefined, "the sandbox was found for the destroy");
      await assertCleanedUp(report);
      // Its sandbox destroyed, the job cannot finish: the daemon ends it rather than leave it RUNNING.
      const job = JSON.parse((await h.cli(["--json", "job", "show", report.job_id!])).stdout);
      assert.notEqual(job.status, "RUNNING");
    } finally {
      if (child && child.exitCode === null) child.kill("SIGKILL");
      await setControl(h.sim.dir, { runner: 1 });
    }
  });
});
