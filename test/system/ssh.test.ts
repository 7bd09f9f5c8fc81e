/**
 * `agentlab ssh` against real OpenSSH: the real daemon and CLI on the simulator, the sandbox's sshd in a
 * network namespace that holds the address the simulator gave the sandbox, and the host key the
 * simulated guest reported at phone-home being that sshd's own.
 *
 *   guest ns: <sandbox ip>/16, sshd :22 (the sandbox)
 *        |
 *   host ns: 10.77.255.254/16 | 192.0.2.1/24, sshd :22 (the agentlab host, used as jump host)
 *        |
 *   remote ns: 192.0.2.2/24, no route to 10.77.0.0/16 (a laptop on the tailnet without the route)
 *
 * The CLI runs in the host or the remote namespace (`ip netns exec`); it reaches the daemon through
 * its Unix socket, which no network namespace hides. Its HOME is the test's: ~/.ssh/id_ed25519 is
 * the user key both sshds accept, ~/.ssh/known_hosts knows the jump host.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import {
  type KeyPair,
  keygenFingerprint,
  makeKey,
  type RunningSshd,
  sshdSkipReason,
  startSshd,
} from "../helpers/sshd.js";
import { setControl } from "../pvesim/harness.js";
import { NetnsLab, netnsSkipReason, removeStaleNamespaces } from "./netns.js";

const skip = netnsSkipReason() ?? sshdSkipReason();

const HOST_ON_BRIDGE = "10.77.255.254";
const HOST_ON_TAILNET = "192.0.2.1";
const REMOTE_ADDR = "192.0.2.2";

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe("agentlab ssh against real sshd", { skip, timeout: 300_000 }, () => {
  const lab = new NetnsLab();
  const ns = { guest: "", host: "", remote: "" };
  let root = "";
  let home = "";
  let h: SimHost;
  let vmid = 0;
  let ip = "";
  let guestKey: KeyPair;
  let wrongKey: KeyPair;
  let jumpKey: KeyPair;
  let userKey: KeyPair;
  let encryptedKey: KeyPair;
  let authorizedKeys = "";
  let guestSshd: RunningSshd;
  let jumpSshd: RunningSshd;

  /** An sshd at the sandbox's address with this host key: the sandbox's own, or an impostor's. */
  function startGuestSshd(name: string, hostKey: KeyPair): Promise<RunningSshd> {
    return startSshd({
      dir: root,
      name,
      listen: `${ip}:22`,
      hostKey: hostKey.path,
      authorizedKeys,
      netns: ns.guest,
    });
  }

  /** `agentlab ssh <vmid> --user root ARGS` as one shell command line, for script -c. */
  function sshCommandLine(args: string[]): string {
    const argv = [
      process.execPath,
      AGENTLAB_BIN,
      "--socket",
      h.host.socketPath,
      "ssh",
      String(vmid),
      "--user",
      "root",
    ];
    return [...argv, ...args].map((word) => `'${word}'`).join(" ");
  }

  /** The environment of a user whose only keys and known hosts are the test's. */
  function cliEnv(): NodeJS.ProcessEnv {
    return {
      HOME: home,
      XDG_CONFIG_HOME: join(home, ".config"),
      XDG_CACHE_HOME: join(home, ".cache"),
      AGENTLAB_SSH_KEYS_DIR: join(root, "no-keys"),
      AGENTLAB_SOCKET: "",
      AGENTLAB_ENDPOINT: "",
      SSH_AUTH_SOCK: "",
      AGENTLAB_SSH_IDENTITY: "",
    };
  }

  /** The CLI inside a namespace; stdin from `input` (else /dev/null); resolves when it exits. */
  function cli(
    where: string,
    args: string[],
    options: { input?: string; onStderr?: (text: string) => void; env?: NodeJS.ProcessEnv } = {},
  ): Promise<Run> {
    const argv = [
      "netns",
      "exec",
      where,
      process.execPath,
      AGENTLAB_BIN,
      "--socket",
      h.host.socketPath,
      ...args,
    ];
    return run("ip", argv, options);
  }

  function run(
    file: string,
    args: string[],
    options: {
      input?: string;
      onStderr?: (text: string) => void;
      /** Write `text` to stdin (then close it) once stdout shows `after`: typing at a prompt. */
      answer?: { after: string; text: string };
      env?: NodeJS.ProcessEnv;
    } = {},
  ) {
    return new Promise<Run>((resolve, reject) => {
      const piped = options.input !== undefined || options.answer !== undefined;
      const child = spawn(file, args, {
        stdio: [piped ? "pipe" : "ignore", "pipe", "pipe"],
        env: { ...process.env, ...cliEnv(), ...options.env },
      });
      let stdout = "";
      let stderr = "";
      let answered = false;
      child.stdout!.on("data", (chunk: Buffer) => {
        stdout += chunk.toString();
        if (options.answer && !answered && stdout.includes(options.answer.after)) {
          answered = true;
          child.stdin?.end(options.answer.text);
        }
      });
      child.stderr!.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
        options.onStderr?.(stderr);
      });
      if (options.input !== undefined) child.stdin?.end(options.input);
      const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
      child.on("error", reject);
      child.on("close", (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  before(async () => {
    await removeStaleNamespaces();
    root = mkdtempSync(join(tmpdir(), "agentlab-ssh-"));
    home = join(root, "home");
    mkdirSync(join(home, ".ssh"), { recursive: true, mode: 0o700 });
    mkdirSync(join(root, "no-keys"));
    guestKey = makeKey(join(root, "guest_host_ed25519"));
    wrongKey = makeKey(join(root, "impostor_host_ed25519"));
    jumpKey = makeKey(join(root, "jump_host_ed25519"));
    userKey = makeKey(join(home, ".ssh", "id_ed25519"));
    authorizedKeys = join(root, "authorized_keys");
    encryptedKey = makeKey(join(root, "encrypted_id"), { passphrase: "open sesame" });
    writeFileSync(authorizedKeys, `${userKey.publicKey}\n${encryptedKey.publicKey}\n`);
    writeFileSync(join(home, ".ssh", "known_hosts"), `${HOST_ON_TAILNET} ${jumpKey.publicKey}\n`);

    h = await startSimHost("shell", "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n");
    // The simulated guest reports the test sshd's host key at phone-home, as a real guest reports its own.
    await setControl(h.sim.dir, { ...FAST_KNOBS, guest_ssh_host_keys: `${guestKey.path}.pub` });
    const created = await h.json<{ vmid: number; ip?: string; state: string }>([
      "new",
      "--profile",
      "yolo-ephemeral",
    ]);
    assert.equal(created.code, 0, created.stderr);
    vmid = created.body.vmid;
    ip = created.body.ip ?? "";
    assert.match(ip, /^10\.77\.\d+\.\d+$/);

    for (const role of ["guest", "host", "remote"] as const) ns[role] = await lab.addNamespace(role);
    await lab.must(ns.guest, "ip", [
      "link",
      "add",
      "g0",
      "type",
      "veth",
      "peer",
      "name",
      "vmbr1",
      "netns",
      ns.host,
    ]);
    await lab.must(ns.remote, "ip", [
      "link",
      "add",
      "r0",
      "type",
      "veth",
      "peer",
      "name",
      "ts0",
      "netns",
      ns.host,
    ]);
    const up = async (where: string, dev: string, cidr: string) => {
      await lab.must(where, "ip", ["addr", "add", cidr, "dev", dev]);
      await lab.must(where, "ip", ["link", "set", dev, "up"]);
    };
    await up(ns.guest, "g0", `${ip}/16`);
    await up(ns.host, "vmbr1", `${HOST_ON_BRIDGE}/16`);
    await up(ns.host, "ts0", `${HOST_ON_TAILNET}/24`);
    await up(ns.remote, "r0", `${REMOTE_ADDR}/24`);

    guestSshd = await startGuestSshd("guest", guestKey);
    jumpSshd = await startSshd({
      dir: root,
      name: "jump",
      listen: `${HOST_ON_TAILNET}:22`,
      hostKey: jumpKey.path,
      authorizedKeys,
      netns: ns.host,
    });
  });

  after(async () => {
    await guestSshd?.stop();
    await jumpSshd?.stop();
    await lab.destroy();
    await h?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test("a remote command: its stdout, stderr and exit status", async () => {
    const result = await cli(ns.host, [
      "ssh",
      String(vmid),
      "--user",
      "root",
      "--",
      "echo out; echo err >&2; exit 7",
    ]);
    assert.equal(result.code, 7, result.stderr);
    assert.equal(result.stdout, "out\n");
    assert.match(result.stderr, /^err$/m);
  });

  test("an interactive session on a PTY (driven through script): tty, window size and its changes, exit status", async () => {
    const line = sshCommandLine([]);
    // The terminal is resized while the session runs, by a helper inside script's session that waits
    // on a FIFO for the remote shell to be ready and answers on another when done (no timing guesses).
    const resizeNow = join(root, "resize-now");
    const resized = join(root, "resized");
    for (const fifo of [resizeNow, resized]) assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    const session =
      `stty cols 91 rows 33; ` +
      `(read _ < '${resizeNow}'; stty cols 120 rows 50 < /dev/tty; echo done > '${resized}') & exec ${line}`;
    const child = spawn("ip", ["netns", "exec", ns.host, "script", "-qec", session, "/dev/null"], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, ...cliEnv() },
    });
    let stdout = "";
    let stderr = "";
    let marked = false;
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      if (!marked && /^MARK\r?$/m.test(stdout)) {
        marked = true;
        void (async () => {
          await writeFile(resizeNow, "go\n");
          await readFile(resized, "utf8");
          child.stdin.end("\n");
        })();
      }
    });
    // MA''RK: the echoed command line must not look like the marker the shell prints.
    child.stdin.write("tty; stty size; echo MA''RK; read x; stty size; exit 3\n");
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    clearTimeout(timer);
    assert.equal(code, 3, `${stdout}\n${stderr}`);
    assert.match(stdout, /^\/dev\/pts\/\d+\r?$/m, stdout);
    assert.match(stdout, /^33 91\r?$/m, "the remote PTY has the local window size");
    assert.match(stdout, /^50 120\r?$/m, "a change of the local window size reaches the remote PTY");
  });

  test("an encrypted --identity: its passphrase is asked on the terminal, not echoed; without one, a clear error", async () => {
    const line = sshCommandLine(["--identity", encryptedKey.path, "--", "echo unlocked"]);
    // script copies its input to its output unless --echo never; the terminal itself echoes (stty echo)
    // unless the CLI turns that off while it asks, which is what this checks.
    const result = await run(
      "ip",
      [
        "netns",
        "exec",
        ns.host,
        "script",
        "-q",
        "-e",
        "--echo",
        "never",
        "-c",
        `stty echo; exec ${line}`,
        "/dev/null",
      ],
      { answer: { after: "Enter passphrase for key", text: "open sesame\r" } },
    );
    assert.equal(result.code, 0, result.stdout);
    assert.match(result.stdout, new RegExp(`Enter passphrase for key '${encryptedKey.path}': `));
    assert.match(result.stdout, /^unlocked\r?$/m);
    assert.equal(
      result.stdout.match(/open sesame/g)?.length ?? 0,
      0,
      `echoed: ${JSON.stringify(result.stdout)}`,
    );

    const noTerminal = await cli(ns.host, [
      "ssh",
      String(vmid),
      "--user",
      "root",
      "--identity",
      encryptedKey.path,
      "--",
      "true",
    ]);
    assert.equal(noTerminal.code, 1);
    assert.match(
      noTerminal.stderr,
      /^error: --identity: .*encrypted_id is encrypted and there is no terminal to ask for its passphrase$/m,
    );
    assert.match(noTerminal.stderr, /ssh-add .*encrypted_id/);
  });

  test("the keys of the ssh-agent at SSH_AUTH_SOCK are offered (a user without key files)", async () => {
    const agentKey = makeKey(join(root, "agent_id"));
    appendFileSync(authorizedKeys, `${agentKey.publicKey}\n`);
    const socket = join(root, "agent.sock");
    const agent = spawn("ssh-agent", ["-D", "-a", socket], { stdio: ["ignore", "pipe", "pipe"] });
    try {
      // In the foreground it prints the environment lines once its socket listens.
      await new Promise<void>((resolve, reject) => {
        let out = "";
        agent.stdout!.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes("SSH_AUTH_SOCK=")) resolve();
        });
        agent.once("exit", (code) => reject(new Error(`ssh-agent exited ${code}`)));
      });
      const added = await run("ssh-add", [agentKey.path], { env: { SSH_AUTH_SOCK: socket } });
      assert.equal(added.code, 0, added.stderr);
      const bare = join(root, "bare-home");
      mkdirSync(bare, { recursive: true });
      const result = await cli(ns.host, ["ssh", String(vmid), "--user", "root", "--", "echo via-agent"], {
        env: { HOME: bare, SSH_AUTH_SOCK: socket },
      });
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout, "via-agent\n");
      assert.match(
        guestSshd.log(),
        new RegExp(
          `Accepted publickey for root .*ED25519 ${keygenFingerprint(`${agentKey.path}.pub`).replace(/[+/]/g, "\\$&")}`,
        ),
      );
    } finally {
      if (agent.pid !== undefined && agent.exitCode === null) process.kill(agent.pid, "SIGTERM");
    }
  });

  test("through the jump host from a device without a route", async () => {
    const result = await cli(ns.remote, [
      "ssh",
      String(vmid),
      "--user",
      "root",
      "--jump-host",
      HOST_ON_TAILNET,
      "--jump-user",
      "root",
      "--",
      "hostname -I",
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, new RegExp(ip.replace(/\./g, "\\.")));
  });

  test("without a route: says so, with the guide's Tailscale checks and the --jump-host alternative", async () => {
    const result = await cli(ns.remote, ["ssh", String(vmid), "--user", "root", "--", "true"]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      new RegExp(
        `^error: cannot reach sandbox ${vmid} at ${ip.replace(/\./g, "\\.")}:22: no route to 10\\.77\\.0\\.0/16 \\(ENETUNREACH\\)$`,
        "m",
      ),
    );
    assert.match(result.stderr, /look for 10\.77\.0\.0\/16/);
    assert.match(result.stderr, /tailscale status/);
    assert.match(result.stderr, /sudo tailscale up --accept-routes/);
    assert.match(
      result.stderr,
      new RegExp(`agentlab ssh ${vmid} --jump-host host\\.tailnet\\.ts\\.net --jump-user <user>`),
    );
  });

  test("a jump host missing from known_hosts is refused with the line to add; a changed one names both fingerprints", async () => {
    const knownHosts = join(home, ".ssh", "known_hosts");
    const original = readFileSync(knownHosts, "utf8");
    const args = [
      "ssh",
      String(vmid),
      "--user",
      "root",
      "--jump-host",
      `root@${HOST_ON_TAILNET}`,
      "--",
      "echo should-not-run",
    ];
    const logBefore = jumpSshd.log().length;
    try {
      writeFileSync(knownHosts, "");
      const unknown = await cli(ns.remote, args);
      assert.equal(unknown.code, 1, unknown.stderr);
      assert.equal(unknown.stdout, "");
      const fp = keygenFingerprint(`${jumpKey.path}.pub`);
      assert.ok(
        unknown.stderr.includes(
          `error: the jump host ${HOST_ON_TAILNET} is not in known_hosts (${knownHosts}); it presented ssh-ed25519 ${fp}`,
        ),
        unknown.stderr,
      );
      assert.ok(unknown.stderr.includes(`  ${HOST_ON_TAILNET} ${jumpKey.publicKey}\n`), unknown.stderr);
      assert.ok(unknown.stderr.includes(`ssh root@${HOST_ON_TAILNET}`), unknown.stderr);

      writeFileSync(knownHosts, `${HOST_ON_TAILNET} ${wrongKey.publicKey}\n`);
      const changed = await cli(ns.remote, args);
      assert.equal(changed.code, 1, changed.stderr);
      assert.ok(
        changed.stderr.includes(
          `error: the SSH host key of jump host ${HOST_ON_TAILNET} (${HOST_ON_TAILNET}:22) does not match: it presented ssh-ed25519 ${fp}, expected ssh-ed25519 ${keygenFingerprint(`${wrongKey.path}.pub`)}`,
        ),
        changed.stderr,
      );
      assert.doesNotMatch(
        jumpSshd.log().slice(logBefore),
        /Accepted publickey/,
        "no key was offered to an unchecked jump host",
      );
    } finally {
      writeFileSync(knownHosts, original);
    }
  });

  test("--print: a line real ssh runs (BatchMode) against the sandbox's sshd, checking the recorded key", async () => {
    const printed = await cli(ns.host, [
      "--json",
      "ssh",
      String(vmid),
      "--user",
      "root",
      "--identity",
      userKey.path,
      "--print",
      "--",
      "echo printed-ok",
    ]);
    assert.equal(printed.code, 0, printed.stdout + printed.stderr);
    const body = JSON.parse(printed.stdout) as { argv: string[]; known_hosts_file: string };
    assert.ok(body.argv.includes("StrictHostKeyChecking=yes"));
    assert.ok(body.argv.includes(`UserKnownHostsFile=${body.known_hosts_file}`));
    const [ssh, ...rest] = body.argv;
    assert.equal(ssh, "ssh");
    const result = await run("ip", ["netns", "exec", ns.host, "ssh", "-o", "BatchMode=yes", ...rest]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "printed-ok\n");
  });

  test("a STOPPED sandbox is started first (not with --no-start); --wait waits for its sshd", async () => {
    const stopped = await h.cli(["sandbox", "stop", String(vmid)]);
    assert.equal(stopped.code, 0, stopped.stderr);
    const refused = await cli(ns.host, ["ssh", String(vmid), "--user", "root", "--no-start", "--", "true"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`^error: sandbox ${vmid} is STOPPED \\(--no-start\\)$`, "m"));
    assert.match(refused.stderr, new RegExp(`agentlab sandbox start ${vmid}`));

    // The guest's sshd is not up yet: --wait keeps trying; it comes up once the CLI says it waits.
    await guestSshd.stop();
    let restarting: Promise<RunningSshd> | undefined;
    const result = await cli(ns.host, ["ssh", String(vmid), "--user", "root", "--wait", "--", "echo up"], {
      onStderr: (text) => {
        if (!restarting && text.includes(`waiting for sandbox ${vmid}'s sshd at ${ip}:22`)) {
          restarting = startGuestSshd("guest", guestKey);
        }
      },
    });
    assert.ok(restarting, result.stderr);
    guestSshd = await restarting;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "up\n");
    assert.match(result.stderr, new RegExp(`sandbox ${vmid} is STOPPED: starting it`));
    const shown = await h.json<{ state: string }>(["sandbox", "show", String(vmid)]);
    assert.equal(shown.body.state, "RUNNING");
  });

  test("a sandbox answering with another host key is refused, naming both fingerprints", async () => {
    await guestSshd.stop();
    const impostor = await startGuestSshd("impostor", wrongKey);
    try {
      const result = await cli(ns.host, ["ssh", String(vmid), "--user", "root", "--", "echo should-not-run"]);
      assert.equal(result.code, 1);
      assert.equal(result.stdout, "");
      const seen = keygenFingerprint(`${wrongKey.path}.pub`);
      const expected = keygenFingerprint(`${guestKey.path}.pub`);
      assert.match(
        result.stderr,
        new RegExp(
          `^error: the SSH host key of sandbox ${vmid} \\(${ip.replace(/\./g, "\\.")}:22\\) does not match: it presented ssh-ed25519 ${seen.replace(/[+/]/g, "\\$&")}, expected ssh-ed25519 ${expected.replace(/[+/]/g, "\\$&")}$`,
          "m",
        ),
      );
      assert.doesNotMatch(impostor.log(), /Accepted publickey/, "no key was offered to the impostor");
    } finally {
      await impostor.stop();
      guestSshd = await startGuestSshd("guest", guestKey);
    }
  });
});
