/**
 * One command on an open SSH connection: the command line built for the guest's login shell, its
 * output handed over chunk by chunk as it arrives, stdin written then closed, and the command
 * signalled (then the channel closed) when the caller cancels or the timeout passes.
 */

import { constants } from "node:os";
import type { Client, ClientChannel } from "ssh2";

/** Quote one word for a POSIX shell: inside single quotes nothing is special but the quote itself. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The first line the command line writes to stderr: its process group, for signalling it. */
const PID_LINE = /(?:^|\n)agentlab-exec-pgid (\d+)\n/;
/** What stderr may carry before that line (a login script's noise) and still be searched. */
const PID_SEARCH_BYTES = 4096;

/**
 * The line the guest's shell runs: it reports its own pid on stderr first (sshd makes the session's
 * shell a process-group leader, so that pid is the group a cancellation signals), `cd`s to `cwd` when
 * given, then `exec`s the command (same pid), through `env` when variables are set. Every word is
 * quoted: nothing the caller passes is parsed by the shell.
 */
export function commandLine(
  command: readonly string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): string {
  const env = Object.entries(options.env ?? {}).map(([name, value]) => shellQuote(`${name}=${value}`));
  const words = command.map(shellQuote);
  const run = env.length > 0 ? `exec env -- ${env.join(" ")} ${words.join(" ")}` : `exec ${words.join(" ")}`;
  const pgid = `printf 'agentlab-exec-pgid %s\\n' "$$" >&2`;
  return `${pgid}; ${options.cwd !== undefined ? `cd -- ${shellQuote(options.cwd)} && ${run}` : run}`;
}

export interface RunOptions {
  stdin?: Buffer;
  onStdout(chunk: Buffer): void;
  onStderr(chunk: Buffer): void;
  signal: AbortSignal;
  timeoutMs?: number;
}

export interface RunResult {
  exitCode: number;
  signal?: string;
  timedOut?: boolean;
  cancelled?: boolean;
}

/** After the signal, how long the command gets to go before the channel is closed under it. */
const KILL_GRACE_MS = 2_000;

/** 128 + the signal's number, as a shell reports a command a signal ended. */
function signalExitCode(name: string): number {
  const number = (constants.signals as Record<string, number>)[`SIG${name}`];
  return number === undefined ? 255 : 128 + number;
}

/**
 * Signal the command's process group from a second session on the same connection. Not the SSH
 * "signal" channel request: sshd refuses it outside privilege separation (a root login: "session
 * signalling requires privilege separation", OpenSSH session.c session_signal_req), and it reaches
 * only the session's group anyway, which this does too.
 */
function killGroup(client: Client, pgid: number, signalName: string): void {
  client.exec(`kill -${signalName} -- -${pgid} 2>/dev/null`, (error, channel) => {
    if (error) return;
    channel.on("data", () => {});
    channel.stderr.on("data", () => {});
    channel.end();
  });
}

export function runCommand(client: Client, line: string, options: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    client.exec(line, (error, channel: ClientChannel) => {
      if (error) {
        reject(error);
        return;
      }
      let exitCode: number | undefined;
      let exitSignal: string | undefined;
      let stopped: "timeout" | "cancel" | undefined;
      let graceTimer: NodeJS.Timeout | undefined;
      let done = false;
      let pgid: number | undefined;
      let pendingSignal: string | undefined;
      const stop = (why: "timeout" | "cancel", signalName: string) => {
        if (stopped) return;
        stopped = why;
        // Before the shell said its pid (within milliseconds of the start) the signal waits for it.
        if (pgid !== undefined) killGroup(client, pgid, signalName);
        else pendingSignal = signalName;
        // A command that outlives its signal (it ignores SIGINT) is left behind: the connection is cut,
        // so nobody waits on it any more.
        graceTimer = setTimeout(() => {
          finish();
          client.destroy();
        }, KILL_GRACE_MS);
      };
      const timer =
        options.timeoutMs !== undefined
          ? setTimeout(() => stop("timeout", "KILL"), options.timeoutMs)
          : undefined;
      const onAbort = () => stop("cancel", "INT");
      if (options.signal.aborted) onAbort();
      else options.signal.addEventListener("abort", onAbort, { once: true });
      channel.on("data", (chunk: Buffer) => options.onStdout(chunk));
      // The first stderr line is the command line's own (its pid), not the command's: kept back.
      let head: Buffer | undefined = Buffer.alloc(0);
      channel.stderr.on("data", (chunk: Buffer) => {
        if (head === undefined) {
          options.onStderr(chunk);
          return;
        }
        head = Buffer.concat([head, chunk]);
        const match = PID_LINE.exec(head.toString("latin1"));
        if (!match && head.length < PID_SEARCH_BYTES) return;
        let rest = head;
        if (match) {
          // Bytes before the line (anything a login script wrote) stay; the line itself goes.
          const lineStart = match.index + (match[0].startsWith("\n") ? 1 : 0);
          rest = Buffer.concat([head.subarray(0, lineStart), head.subarray(match.index + match[0].length)]);
        }
        head = undefined;
        if (match) {
          pgid = Number(match[1]);
          if (pendingSignal !== undefined) killGroup(client, pgid, pendingSignal);
        }
        if (rest.length > 0) options.onStderr(rest);
      });
      channel.on("exit", (code: number | null, signalName?: string) => {
        if (typeof code === "number") exitCode = code;
        // ssh2 names it "SIGKILL"; the protocol (and our result) says "KILL".
        if (signalName) exitSignal = signalName.replace(/^SIG/, "");
      });
      const finish = () => {
        if (done) return;
        done = true;
        if (head !== undefined && head.length > 0) options.onStderr(head);
        clearTimeout(timer);
        clearTimeout(graceTimer);
        options.signal.removeEventListener("abort", onAbort);
        const fallback = stopped === "timeout" ? "KILL" : stopped === "cancel" ? "INT" : undefined;
        const result: RunResult = {
          exitCode:
            exitCode ??
            (exitSignal !== undefined
              ? signalExitCode(exitSignal)
              : fallback !== undefined
                ? signalExitCode(fallback)
                : 255),
        };
        if (exitSignal !== undefined) result.signal = exitSignal;
        if (stopped === "timeout") result.timedOut = true;
        if (stopped === "cancel") result.cancelled = true;
        resolve(result);
      };
      channel.on("close", finish);
      if (options.stdin && options.stdin.length > 0) channel.end(options.stdin);
      else channel.end();
    });
  });
}
