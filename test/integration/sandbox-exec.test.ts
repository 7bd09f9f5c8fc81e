import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { makeHostDir, type RunningDaemon, runCli, startDaemon } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { FAST_KNOBS, jsonCli } from "../helpers/simhost.js";
import { createSim, setControl } from "../pvesim/harness.js";

/**
 * `agentlab sandbox exec` against a real OpenSSH sshd. The daemon runs in a network namespace of its
 * own where the whole agent subnet is local (so each simulated sandbox's address reaches the one sshd
 * listening there), with the simulator's shell backend: nothing is added to the machine's namespace.
 * The sshd's host key is what the simulated guest reports at phone-home (guest_ssh_host_keys), and
 * its authorized key is the daemon's own (data_dir/ssh/id_ed25519.pub).
 */

const NS = `alnt${process.pid}-exec`;

function skipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (network namespace, sshd)";
  if (!existsSync("/usr/sbin/sshd")) return "needs OpenSSH's sshd (apt-get install openssh-server)";
  if (spawnSync("ip", ["netns", "list"]).status !== 0) return "needs `ip netns` (iproute2)";
  return undefined;
}

const skip = skipReason();

interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  ssh_host_keys?: string[];
}

describe("sandbox exec against a real sshd", { skip }, () => {
  const sim = skip ? undefined : createSim();
  let host: ReturnType<typeof makeHostDir>;
  let daemon: RunningDaemon;
  let sshd: ChildProcess;
  let dir: string;
  let vmid: number;
  let sshdLog = "";
  const cli = (args: string[]) => runCli(["--socket", host.socketPath, ...args]);
  const json = jsonCli(cli);

  /** The CLI with stdin piped and output watched, for stdin and Ctrl-C. */
  function spawnCli(args: string[]): ChildProcess {
    return spawn(process.execPath, [AGENTLAB_BIN, "--socket", host.socketPath, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, AGENTLAB_SOCKET: "" },
    });
  }

  before(async () => {
    const s = sim!;
    dir = join(s.dir, "exec-test");
    mkdirSync(dir);
    execFileSync("ip", ["netns", "add", NS]);
    execFileSync("ip", ["-n", NS, "link", "set", "lo", "up"]);
    // Every address of the agent subnet is this namespace's own: any sandbox IP reaches sshd on lo.
    execFileSync("ip", ["-n", NS, "route", "add", "local", "10.77.0.0/16", "dev", "lo"]);
    await setControl(s.dir, FAST_KNOBS);
    host = makeHostDir(
      [
        `snippets_dir: ${join(s.dir, "storage", "local", "snippets")}`,
        "snippet_storage: local",
        "provisioning_timeout: 30s",
        "proxmox_command_timeout: 30s",
        "proxmox_backend: shell",
        "bootstrap_listen: 127.0.0.1:0",
        "agent_subnet: 0.0.0.0/1",
        "phone_home_grace: 10s",
        // The namespace has its own ports: the remote listener cannot clash with anything outside.
        "control_listen: 127.0.0.1:8845",
      ].join("\n"),
      { PATH: s.env.PATH, PVESIM_DIR: s.dir, PVESIM_NODE_BIN: process.execPath },
    );
    daemon = await startDaemon(host, [], undefined, ["ip", "netns", "exec", NS]);

    // The sshd "in the guest": its own host key, the daemon's key authorized (for root: this test's user).
    execFileSync("ssh-keygen", [
      "-q",
      "-t",
      "ed25519",
      "-N",
      "",
      "-C",
      "root@guest",
      "-f",
      join(dir, "host_key"),
    ]);
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, "other_host_key")]);
    writeFileSync(
      join(dir, "authorized_keys"),
      readFileSync(join(host.root, "data", "ssh", "id_ed25519.pub")),
    );
    writeFileSync(
      join(dir, "sshd_config"),
      [
        "Port 22",
        "ListenAddress 0.0.0.0",
        `HostKey ${join(dir, "host_key")}`,
        `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
        `PidFile ${join(dir, "sshd.pid")}`,
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "",
      ].join("\n"),
    );
    mkdirSync("/run/sshd", { recursive: true });
    sshd = spawn("ip", ["netns", "exec", NS, "/usr/sbin/sshd", "-D", "-e", "-f", join(dir, "sshd_config")], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    await new Promise<void>((resolve, reject) => {
      sshd.stderr?.on("data", (chunk) => {
        sshdLog += chunk;
        const log = sshdLog;
        if (log.includes("Server listening")) resolve();
      });
      sshd.on("exit", (code) => reject(new Error(`sshd exited with ${code}: ${sshdLog}`)));
    });

    await setControl(s.dir, { guest_ssh_host_keys: join(dir, "host_key.pub") });
    const created = await json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(created.code, 0, created.stderr);
    assert.equal(created.body.ssh_host_keys?.length, 1);
    vmid = created.body.vmid;
  });

  after(async () => {
    sshd?.kill();
    await daemon?.stop();
    spawnSync("ip", ["netns", "del", NS]);
    host?.cleanup();
    sim?.cleanup();
  });

  test("stdout and stderr apart, in order, and the command's exit code", async () => {
    const run = await cli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "sh",
      "-c",
      "echo one; echo two >&2; echo three; exit 7",
    ]);
    assert.equal(run.code, 7, run.stderr);
    assert.equal(run.stdout, "one\nthree\n");
    assert.equal(run.stderr, "two\n");
  });

  test("arguments reach the command as given: no shell parsing of quotes, $ or spaces", async () => {
    const words = ["it's", "$HOME", "a  b", "`id`", "010"];
    const run = await cli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "printf",
      "%s\\n",
      ...words,
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, `${words.join("\n")}\n`);
  });

  test("--cwd and --env", async () => {
    const run = await cli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--cwd",
      dir,
      "--env",
      "GREETING=hello world",
      "--env",
      "EMPTY=",
      "--",
      "sh",
      "-c",
      'pwd; echo "$GREETING"; echo "[$EMPTY]"',
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, `${dir}\nhello world\n[]\n`);
  });

  test("piped stdin is forwarded, then end of file", async () => {
    const child = spawnCli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "sh",
      "-c",
      "wc -c; cat",
    ]);
    let stdout = "";
    child.stdout?.on("data", (chunk) => (stdout += chunk));
    child.stdin?.end("line one\nline two\n");
    const code = await new Promise((resolve) => child.on("close", resolve));
    assert.equal(code, 0);
    assert.equal(stdout, "18\n");
  });

  test("--json gives exit_code, stdout, stderr and duration_ms", async () => {
    const run = await json<{ exit_code: number; stdout: string; stderr: string; duration_ms: number }>([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "sh",
      "-c",
      "echo out; echo err >&2; exit 3",
    ]);
    assert.equal(run.code, 3);
    assert.equal(run.body.exit_code, 3);
    assert.equal(run.body.stdout, "out\n");
    assert.equal(run.body.stderr, "err\n");
    assert.equal(typeof run.body.duration_ms, "number");
  });

  test("output streams while the command runs; Ctrl-C interrupts the remote process", async () => {
    const pidFile = join(dir, "streamed.pid");
    const child = spawnCli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "sh",
      "-c",
      `echo $$ > ${pidFile}; echo started; exec sleep 300`,
    ]);
    child.stdin?.end();
    let stdout = "";
    let stderr = "";
    child.stderr?.on("data", (chunk) => (stderr += chunk));
    // "started" arrives while the command still runs: then Ctrl-C.
    await new Promise<void>((resolve) =>
      child.stdout?.on("data", (chunk) => {
        stdout += chunk;
        if (stdout.includes("started")) resolve();
      }),
    );
    const pid = Number(readFileSync(pidFile, "utf8"));
    child.kill("SIGINT");
    const code = await new Promise((resolve) => child.on("close", resolve));
    assert.equal(code, 130, stderr);
    assert.match(stderr, /interrupted \(SIGINT sent\)/);
    assert.throws(() => process.kill(pid, 0), /ESRCH/, "the remote sleep is gone");
  });

  test("--timeout kills the command: exit 137 and it says so", async () => {
    const run = await cli([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--timeout",
      "1s",
      "--",
      "sleep",
      "60",
    ]);
    assert.equal(run.code, 137, run.stderr);
    assert.match(run.stderr, new RegExp(`the command in sandbox ${vmid} was killed after --timeout 1s`));
    const asJson = await json<{ exit_code: number; signal?: string; timed_out?: boolean }>([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--timeout",
      "1s",
      "--",
      "sh",
      "-c",
      "sleep 60; echo not reached",
    ]);
    assert.deepEqual([asJson.body.exit_code, asJson.body.signal, asJson.body.timed_out], [137, "KILL", true]);
  });

  test("through agentlab connect: the same streams and exit code over the WebSocket", async () => {
    const token = await json<{ secret: string }>([
      "token",
      "create",
      "--name",
      "exec",
      "--scope",
      "operate",
      "--all",
    ]);
    assert.equal(token.code, 0, token.stderr);
    const home = join(dir, "client-home");
    mkdirSync(home);
    // The CLI runs in the daemon's namespace too, where the listener's loopback address is.
    const remote = (args: string[]) =>
      runCli(args, {
        command: ["ip", "netns", "exec", NS, process.execPath],
        env: { XDG_CONFIG_HOME: home, AGENTLAB_ENDPOINT: "", AGENTLAB_TOKEN: "", AGENTLAB_SOCKET: "" },
      });
    const connected = await remote([
      "connect",
      "--endpoint",
      "https://127.0.0.1:8845",
      "--token",
      token.body.secret,
    ]);
    assert.equal(connected.code, 0, connected.stderr);
    const run = await remote([
      "sandbox",
      "exec",
      String(vmid),
      "--user",
      "root",
      "--",
      "sh",
      "-c",
      "echo remote; echo err >&2; exit 5",
    ]);
    assert.equal(run.code, 5, run.stderr);
    assert.equal(run.stdout, "remote\n");
    assert.equal(run.stderr, "err\n");
  });

  test("a user the daemon's key is not authorized for: refused, and what to do", async () => {
    const run = await cli(["sandbox", "exec", String(vmid), "--user", "nobody", "--", "true"]);
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      new RegExp(`error: sandbox ${vmid}: the guest refused agentlabd's SSH key for nobody@`),
    );
  });

  test("a guest whose sshd shows another host key than it reported: refused before logging in", async () => {
    await setControl(sim!.dir, { guest_ssh_host_keys: join(dir, "other_host_key.pub") });
    const other = await json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(other.code, 0, other.stderr);
    const run = await cli([
      "sandbox",
      "exec",
      String(other.body.vmid),
      "--user",
      "root",
      "--",
      "touch",
      join(dir, "ran"),
    ]);
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      new RegExp(
        `error: sandbox ${other.body.vmid}: the SSH host key at ${other.body.ip?.replace(/\./g, "\\.")} \\(ssh-ed25519 SHA256:\\S+\\) is not one the guest reported when it booted; refusing to connect`,
      ),
    );
    assert.equal(existsSync(join(dir, "ran")), false);

    // And a STOPPED sandbox: start it first.
    assert.equal((await cli(["sandbox", "stop", String(other.body.vmid)])).code, 0);
    const stopped = await cli(["sandbox", "exec", String(other.body.vmid), "--", "true"]);
    assert.equal(stopped.code, 1);
    assert.match(
      stopped.stderr,
      /error: cannot exec in sandbox in STOPPED state\. Valid states: RUNNING, READY/,
    );
    assert.match(
      stopped.stderr,
      new RegExp(`hint: start it first: agentlab sandbox start ${other.body.vmid}`),
    );
  });
});
