import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type GuestRig, guestRigSkipReason, startGuestRig } from "../helpers/guest-rig.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";

/**
 * `agentlab sandbox exec` against a real OpenSSH sshd (test/helpers/guest-rig.ts): the daemon in a
 * network namespace where every sandbox address reaches the one sshd, whose host key is what the
 * simulated guest reports at phone-home and whose authorized key is the daemon's own.
 */

const skip = guestRigSkipReason();

describe("sandbox exec against a real sshd", { skip }, () => {
  let rig: GuestRig;
  let host: GuestRig["host"];
  let dir: string;
  let vmid: number;
  const cli = (args: string[]) => rig.cli(args);
  const json: GuestRig["json"] = (args) => rig.json(args);

  /** The CLI with stdin piped and output watched, for stdin and Ctrl-C. */
  function spawnCli(args: string[]): ChildProcess {
    return spawn(process.execPath, [AGENTLAB_BIN, "--socket", host.socketPath, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, AGENTLAB_SOCKET: "" },
    });
  }

  before(async () => {
    rig = await startGuestRig("exec");
    host = rig.host;
    dir = rig.dir;
    vmid = (await rig.newSandbox()).vmid;
  });

  after(async () => {
    await rig?.stop();
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
    const remote = await rig.remote("operate", "exec");
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
    const other = { body: await rig.newSandbox(join(dir, "other_host_key.pub")) };
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
