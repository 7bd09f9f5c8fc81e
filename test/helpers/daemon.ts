import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENTLAB_BIN, AGENTLABD_BIN, PROFILES_DIR } from "./paths.js";

/** A temp directory laid out like a host: config.yaml, profiles/, data/, run/. */
export interface HostDir {
  root: string;
  configPath: string;
  socketPath: string;
  dbPath: string;
  profilesDir: string;
  /** Environment the daemon runs with (the simulator's PATH and state dir, when there is one). */
  env: NodeJS.ProcessEnv;
  cleanup(): void;
}

export function makeHostDir(extraConfig = "", env: NodeJS.ProcessEnv = {}): HostDir {
  const root = mkdtempSync(join(tmpdir(), "agentlab-it-"));
  const profilesDir = join(root, "profiles");
  cpSync(PROFILES_DIR, profilesDir, { recursive: true });
  mkdirSync(join(root, "data"));
  const configPath = join(root, "config.yaml");
  // Debug logs unless the caller sets a level (a benchmark: debug lines cost the daemon time).
  const logLevel = /^log_level:/m.test(extraConfig) ? "" : "log_level: debug\n";
  writeConfig(configPath, `profiles_dir: profiles\ndata_dir: data\nrun_dir: run\n${logLevel}${extraConfig}`);
  return {
    root,
    configPath,
    socketPath: join(root, "run", "agentlabd.sock"),
    dbPath: join(root, "data", "agentlab.db"),
    profilesDir,
    env,
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}

export function writeConfig(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

export interface RunningDaemon {
  proc: ChildProcess;
  /** Everything the daemon wrote so far (JSON log lines on stdout, start-up errors on stderr). */
  output(): { stdout: string; stderr: string };
  /** Resolves with the exit code (or signal name) when the process ends. */
  exited: Promise<number | string>;
  stop(signal?: NodeJS.Signals): Promise<number | string>;
}

export function spawnDaemon(
  host: HostDir,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
  bin: string = AGENTLABD_BIN,
  /** A command that execs its arguments (e.g. into a namespace); the daemon runs as its last words. */
  wrapper: string[] = [],
): RunningDaemon {
  const argv = [...wrapper, process.execPath, bin, "--config", host.configPath, ...args];
  const proc = spawn(argv[0]!, argv.slice(1), {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...host.env, AGENTLAB_CONFIG: "", AGENTLAB_LOG_LEVEL: "", ...env },
  });
  let stdout = "";
  let stderr = "";
  proc.stdout?.on("data", (chunk) => (stdout += chunk));
  proc.stderr?.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise<number | string>((resolve) =>
    proc.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")),
  );
  return {
    proc,
    output: () => ({ stdout, stderr }),
    exited,
    stop: async (signal = "SIGTERM") => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** Whether a Unix socket accepts a connection now. */
export function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Start the daemon and wait until its socket accepts connections (or it exits, which fails). */
export async function startDaemon(
  host: HostDir,
  args: string[] = [],
  bin?: string,
  wrapper: string[] = [],
): Promise<RunningDaemon> {
  const daemon = spawnDaemon(host, args, {}, bin, wrapper);
  // Loading the daemon takes under a second idle, but several seconds on a machine shared with other
  // test runs (15 s was too short with several daemons starting at once): only a daemon that never
  // becomes ready reaches this bound.
  const deadline = Date.now() + 60_000;
  let exitedEarly: number | string | undefined;
  void daemon.exited.then((code) => (exitedEarly = code));
  while (Date.now() < deadline) {
    if (exitedEarly !== undefined) {
      throw new Error(`agentlabd exited with ${exitedEarly} before serving:\n${daemon.output().stderr}`);
    }
    if (daemon.output().stdout.includes("agentlabd ready") && (await canConnect(host.socketPath)))
      return daemon;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  await daemon.stop("SIGKILL");
  throw new Error(`agentlabd did not become ready in 60s:\n${JSON.stringify(daemon.output())}`);
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the real CLI binary as a child process. */
export function runCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; command?: string[] } = {},
): Promise<CliResult> {
  const [cmd, ...prefix] = options.command ?? [process.execPath];
  return runProcess(cmd!, [...prefix, AGENTLAB_BIN, ...args], {
    ...process.env,
    AGENTLAB_SOCKET: "",
    ...options.env,
  });
}

/** Run a program to its end, collecting its exit code and output. */
export function runProcess(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
