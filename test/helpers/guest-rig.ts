/**
 * A daemon whose sandboxes' SSH is a real OpenSSH sshd, for `sandbox exec` and `sandbox cp`. The daemon
 * runs in a network namespace of its own where the whole agent subnet is local (so each simulated
 * sandbox's address reaches the one sshd listening there), with the simulator's shell backend: nothing
 * is added to the machine's namespace. The sshd's host key is what the simulated guest reports at
 * phone-home (guest_ssh_host_keys), its authorized key is the daemon's own (data_dir/ssh/id_ed25519.pub),
 * and it serves SFTP (internal-sftp) as a cloud image's sshd does.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSim, type Sim, setControl, toolsEnv } from "../pvesim/harness.js";
import { type CliResult, makeHostDir, type RunningDaemon, runCli, startDaemon } from "./daemon.js";
import { FAST_KNOBS, jsonCli } from "./simhost.js";

/** Why the rig cannot run here, or undefined when it can. */
export function guestRigSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (network namespace, sshd)";
  if (!existsSync("/usr/sbin/sshd")) return "needs OpenSSH's sshd (apt-get install openssh-server)";
  if (spawnSync("ip", ["netns", "list"]).status !== 0) return "needs `ip netns` (iproute2)";
  return undefined;
}

export interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  ssh_host_keys?: string[];
}

export interface GuestRig {
  sim: Sim;
  host: ReturnType<typeof makeHostDir>;
  daemon: RunningDaemon;
  /** The rig's scratch directory (sshd's config and keys live here). */
  dir: string;
  ns: string;
  /** The CLI on the daemon's socket. */
  cli(args: string[]): Promise<CliResult>;
  json: ReturnType<typeof jsonCli>;
  /** A new sandbox whose guest reports `hostKeyPub` (default: the sshd's own key). */
  newSandbox(hostKeyPub?: string): Promise<SandboxBody>;
  /**
   * The CLI as a remote client (agentlab connect over the control listener) with a new token of that
   * scope (--all for operate). It runs in the daemon's namespace, where the listener's address is.
   */
  remote(scope: "read" | "operate", name: string): Promise<(args: string[]) => Promise<CliResult>>;
  /** The sshd's log so far. */
  sshdLog(): string;
  stop(): Promise<void>;
}

export async function startGuestRig(name: string): Promise<GuestRig> {
  const sim = createSim();
  const ns = `alnt${process.pid}-${name}`;
  const dir = join(sim.dir, `${name}-test`);
  mkdirSync(dir);
  execFileSync("ip", ["netns", "add", ns]);
  execFileSync("ip", ["-n", ns, "link", "set", "lo", "up"]);
  // Every address of the agent subnet is this namespace's own: any sandbox IP reaches sshd on lo.
  execFileSync("ip", ["-n", ns, "route", "add", "local", "10.77.0.0/16", "dev", "lo"]);
  await setControl(sim.dir, FAST_KNOBS);
  const host = makeHostDir(
    [
      `snippets_dir: ${join(sim.dir, "storage", "local", "snippets")}`,
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
    toolsEnv(sim),
  );
  const daemon = await startDaemon(host, [], undefined, ["ip", "netns", "exec", ns]);

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
  writeFileSync(join(dir, "authorized_keys"), readFileSync(join(host.root, "data", "ssh", "id_ed25519.pub")));
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
      // As Debian's and Ubuntu's cloud images have it (there: /usr/lib/openssh/sftp-server).
      "Subsystem sftp internal-sftp",
      "",
    ].join("\n"),
  );
  mkdirSync("/run/sshd", { recursive: true });
  const sshd: ChildProcess = spawn(
    "ip",
    ["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", join(dir, "sshd_config")],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  await new Promise<void>((resolve, reject) => {
    sshd.stderr?.on("data", (chunk) => {
      log += chunk;
      if (log.includes("Server listening")) resolve();
    });
    sshd.on("exit", (code) => reject(new Error(`sshd exited with ${code}: ${log}`)));
  });

  const cli = (args: string[]) => runCli(["--socket", host.socketPath, ...args]);
  const json = jsonCli(cli);
  return {
    sim,
    host,
    daemon,
    dir,
    ns,
    cli,
    json,
    sshdLog: () => log,
    async newSandbox(hostKeyPub = join(dir, "host_key.pub")) {
      await setControl(sim.dir, { guest_ssh_host_keys: hostKeyPub });
      const created = await json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(created.body.ssh_host_keys?.length, 1);
      return created.body;
    },
    async remote(scope, tokenName) {
      const token = await json<{ secret: string }>([
        "token",
        "create",
        "--name",
        tokenName,
        "--scope",
        scope,
        ...(scope === "operate" ? ["--all"] : []),
      ]);
      assert.equal(token.code, 0, token.stderr);
      const home = join(dir, `client-${tokenName}`);
      mkdirSync(home);
      const remote = (args: string[]) =>
        runCli(args, {
          command: ["ip", "netns", "exec", ns, process.execPath],
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
      return remote;
    },
    async stop() {
      sshd.kill();
      await daemon.stop();
      spawnSync("ip", ["netns", "del", ns]);
      host.cleanup();
      sim.cleanup();
    },
  };
}
