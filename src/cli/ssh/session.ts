/**
 * What runs over the connection: an interactive login shell on a pseudo-terminal (local terminal raw,
 * window size followed), or a remote command with stdin, stdout and stderr wired to ours, as OpenSSH
 * does. Resolves with the exit status the CLI should exit with: the remote one, or 255 when the remote
 * side ended without one (killed by a signal, connection lost), as ssh(1).
 */
import type { Client, ClientChannel, PseudoTtyOptions } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";
import { enterRawMode } from "./terminal.js";

/** OpenSSH's status when the remote side gives none. */
export const NO_EXIT_STATUS = 255;

export interface SessionOptions {
  /** Remote command (joined with spaces, as ssh does); none: a login shell. */
  command?: string | undefined;
  stdin?: NodeJS.ReadStream;
  stdout?: NodeJS.WriteStream;
  stderr?: NodeJS.WriteStream;
}

function ptyOptions(stdout: NodeJS.WriteStream): PseudoTtyOptions {
  return {
    term: process.env.TERM || "xterm-256color",
    rows: stdout.rows || 24,
    cols: stdout.columns || 80,
  };
}

/** Opens the session channel: a shell on a PTY when there is a terminal, else a plain exec/shell. */
function open(client: Client, command: string | undefined, pty: PseudoTtyOptions | undefined) {
  return new Promise<ClientChannel>((resolve, reject) => {
    const done = (error: Error | undefined, channel: ClientChannel) =>
      error
        ? reject(new AgentlabError("SSH_FAILED", `the sandbox refused the session: ${error.message}`))
        : resolve(channel);
    if (command !== undefined) client.exec(command, pty ? { pty } : {}, done);
    else if (pty) client.shell(pty, done);
    else client.shell(false, done);
  });
}

export async function runSession(client: Client, options: SessionOptions = {}): Promise<number> {
  const stdin = options.stdin ?? process.stdin;
  const stdout = options.stdout ?? process.stdout;
  const stderr = options.stderr ?? process.stderr;
  // As ssh without -t: a PTY for an interactive shell on a terminal, none for a command.
  const interactive = options.command === undefined && stdin.isTTY === true;
  if (options.command === undefined && !interactive) {
    stderr.write("Pseudo-terminal will not be allocated because stdin is not a terminal.\n");
  }
  const pty = interactive ? ptyOptions(stdout) : undefined;
  const channel = await open(client, options.command, pty);
  const restore = interactive ? enterRawMode() : () => {};
  try {
    return await new Promise<number>((resolve) => {
      let status: number | undefined;
      let signal: string | undefined;
      const onResize = () => channel.setWindow(stdout.rows || 24, stdout.columns || 80, 0, 0);
      const onData = (chunk: Buffer) => channel.write(chunk);
      const onEnd = () => channel.end();
      if (interactive) stdout.on("resize", onResize);
      stdin.on("data", onData);
      stdin.on("end", onEnd);
      stdin.resume();
      channel.on("data", (chunk: Buffer) => stdout.write(chunk));
      channel.stderr.on("data", (chunk: Buffer) => stderr.write(chunk));
      channel.on("exit", (code: number | null, signalName?: string) => {
        if (typeof code === "number") status = code;
        else if (signalName) signal = signalName;
      });
      channel.on("close", () => {
        stdout.off("resize", onResize);
        stdin.off("data", onData);
        stdin.off("end", onEnd);
        stdin.pause();
        if (status === undefined && signal) stderr.write(`remote command killed by signal ${signal}\n`);
        resolve(status ?? NO_EXIT_STATUS);
      });
    });
  } finally {
    restore();
  }
}
