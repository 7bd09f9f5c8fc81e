/**
 * How `agentlab init` runs host commands (ip, nft, git, the network scripts, the smoke test's repo
 * server): one place that starts a child, says why one could not start, collects or streams its
 * output, and stops it. The daemon uses execa for this; the CLI does not load it (biome.json: it would
 * be on every command's start path for init's sake), and what init needs fits in this file.
 */
import { type ChildProcess, spawn } from "node:child_process";

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Set when the command could not be started at all (e.g. ENOENT: not installed). */
  spawnError?: string;
}

export interface RunOptions {
  /**
   * Where the child's stdout and stderr go: collected into the result ("pipe", the default), or
   * straight to this process's stdout (1) or stderr (2), as a script's narration should.
   */
  output?: "pipe" | 1 | 2;
  /** Called with each line of stdout or stderr as it arrives (output "pipe" only). */
  onLine?: (line: string) => void;
  /**
   * Aborting sends SIGTERM to the child's whole process group: it runs in a group of its own, so the
   * probes a script started (ip netns exec, ssh, timeout) stop with it.
   */
  signal?: AbortSignal;
}

/** Exit status reported for a command that could not be started, as a shell reports it. */
export const NOT_STARTED = 127;

/** Why a child could not start: the errno name when there is one (ENOENT, EACCES). */
function spawnFailure(error: NodeJS.ErrnoException): string {
  return error.code ?? error.message;
}

/** Run a command to its end; never rejects: a command that cannot start has `spawnError` set. */
export function runCommand(
  file: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const output = options.output ?? "pipe";
  return new Promise((resolve) => {
    const child = spawn(file, [...args], {
      stdio: ["ignore", output === "pipe" ? "pipe" : output, output === "pipe" ? "pipe" : 2],
      detached: options.signal !== undefined,
    });
    let stdout = "";
    let stderr = "";
    // One unfinished line per stream: a stdout line must not be glued to a stderr one.
    const partial = { stdout: "", stderr: "" };
    const line = (stream: "stdout" | "stderr", chunk: Buffer) => {
      if (!options.onLine) return;
      const parts = (partial[stream] + chunk.toString()).split("\n");
      partial[stream] = parts.pop() ?? "";
      for (const part of parts) options.onLine(part);
    };
    child.stdout?.on("data", (chunk: Buffer) => {
      stdout += chunk;
      line("stdout", chunk);
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr += chunk;
      line("stderr", chunk);
    });
    const onAbort = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGTERM");
      } catch {
        // already gone
      }
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.once("error", (error: NodeJS.ErrnoException) => {
      options.signal?.removeEventListener("abort", onAbort);
      resolve({ code: NOT_STARTED, stdout, stderr, spawnError: spawnFailure(error) });
    });
    child.once("close", (code) => {
      options.signal?.removeEventListener("abort", onAbort);
      for (const rest of [partial.stdout, partial.stderr]) if (rest !== "") options.onLine?.(rest);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

/** A long-running child (a server): started, watched, stopped by its owner. */
export interface Background {
  child: ChildProcess;
  /** Why it could not start, once Node has said so (ENOENT...). */
  spawnError(): string | undefined;
  /** The last few thousand characters of its stderr: its own words when it exits early. */
  stderrTail(): string;
  /** SIGTERM, then SIGKILL after a grace period; resolves once it has exited. */
  stop(): Promise<void>;
}

const STDERR_TAIL = 4000;
const STOP_GRACE_MS = 3000;

export function startBackground(file: string, args: readonly string[]): Background {
  const child = spawn(file, [...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  let failure: string | undefined;
  // Keep only the tail: a server may log every request, and an unread pipe would block it.
  child.stderr?.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-STDERR_TAIL)));
  child.once("error", (error: NodeJS.ErrnoException) => (failure = spawnFailure(error)));
  return {
    child,
    spawnError: () => failure,
    stderrTail: () => stderr,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null || failure !== undefined) return;
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}
