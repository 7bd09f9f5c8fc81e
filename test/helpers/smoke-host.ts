/**
 * The simulator daemon run inside a network namespace that plays the Proxmox host, for the init smoke
 * test: the daemon binds its guest listener on the namespace's vmbr1 address and maintains the real
 * nftables sets there, and the CLI runs in the same namespace (so its repo server, its firewall hole and
 * smoke_test.sh see what they would on a real host). `ip netns exec` execs the command, so the pids
 * below are the daemon's and the CLI's own.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { createSim, type Sim, type SimOptions, toolsEnv } from "../pvesim/harness.js";
import { type CliResult, canConnect, type HostDir, makeHostDir, runCli } from "./daemon.js";
import { AGENTLAB_BIN, AGENTLABD_BIN } from "./paths.js";

export interface NetnsSimHost {
  sim: Sim;
  host: HostDir;
  ns: string;
  daemon: ChildProcess;
  daemonOutput(): { stdout: string; stderr: string };
  /** The CLI inside the namespace, with the simulator's PATH (its qm) and `env` on top. */
  cli(args: string[], env?: NodeJS.ProcessEnv): Promise<CliResult>;
  /** The same, as a child process the caller controls (signals). */
  spawnCli(args: string[], env?: NodeJS.ProcessEnv): ChildProcess;
  stop(): Promise<void>;
}

export async function startSimHostInNetns(
  ns: string,
  extraConfig: string,
  simOptions: SimOptions = {},
): Promise<NetnsSimHost> {
  const sim = createSim(simOptions);
  const simEnv = toolsEnv(sim);
  const defaults = [
    `snippets_dir: ${join(sim.dir, "storage", "local", "snippets")}`,
    "snippet_storage: local",
    "provisioning_timeout: 60s",
    "proxmox_command_timeout: 30s",
    "proxmox_backend: shell",
  ];
  // A key in extraConfig replaces its default (YAML refuses a key given twice).
  const given = new Set([...extraConfig.matchAll(/^([a-z_]+):/gm)].map((m) => m[1]));
  const config = defaults.filter((line) => !given.has(line.slice(0, line.indexOf(":"))));
  const host = makeHostDir(`${config.join("\n")}\n${extraConfig}`, simEnv);
  const daemon = spawn(
    "ip",
    ["netns", "exec", ns, process.execPath, AGENTLABD_BIN, "--config", host.configPath],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...simEnv, AGENTLAB_CONFIG: "", AGENTLAB_LOG_LEVEL: "" },
    },
  );
  let stdout = "";
  let stderr = "";
  daemon.stdout?.on("data", (chunk) => (stdout += chunk));
  daemon.stderr?.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise<void>((resolve) => daemon.once("exit", () => resolve()));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (daemon.exitCode !== null) throw new Error(`agentlabd exited with ${daemon.exitCode}:\n${stderr}`);
    if (stdout.includes("agentlabd ready") && (await canConnect(host.socketPath))) break;
    if (Date.now() > deadline) {
      daemon.kill("SIGKILL");
      throw new Error(`agentlabd did not become ready in 15 s:\n${stdout}\n${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const cliEnv = (env: NodeJS.ProcessEnv) => ({ ...simEnv, ...env });
  return {
    sim,
    host,
    ns,
    daemon,
    daemonOutput: () => ({ stdout, stderr }),
    cli: (args, env = {}) =>
      runCli(["--socket", host.socketPath, ...args], {
        env: cliEnv(env),
        command: ["ip", "netns", "exec", ns, process.execPath],
      }),
    spawnCli: (args, env = {}) =>
      spawn(
        "ip",
        ["netns", "exec", ns, process.execPath, AGENTLAB_BIN, "--socket", host.socketPath, ...args],
        {
          stdio: ["ignore", "pipe", "pipe"],
          env: { ...process.env, AGENTLAB_SOCKET: "", ...cliEnv(env) },
        },
      ),
    async stop() {
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill("SIGTERM");
      const timer = setTimeout(() => daemon.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
      host.cleanup();
      sim.cleanup();
    },
  };
}
