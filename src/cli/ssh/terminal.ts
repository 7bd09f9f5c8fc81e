/**
 * The local terminal during `agentlab ssh`: raw mode for an interactive session, restored on every way
 * out (normal end, error, SIGTERM/SIGHUP, process exit), and a passphrase prompt that does not echo.
 */

type RawInput = NodeJS.ReadStream & { setRawMode(mode: boolean): unknown };

function rawInput(): RawInput | undefined {
  const input = process.stdin as RawInput;
  return input.isTTY && typeof input.setRawMode === "function" ? input : undefined;
}

/** Whether a person can be asked something on this terminal. */
export function canPrompt(): boolean {
  return rawInput() !== undefined && process.stderr.isTTY === true;
}

/**
 * Puts stdin in raw mode until the returned function is called; the function is idempotent and also
 * runs if the process is ended by a signal or exits, so the user's shell never inherits a raw terminal.
 */
export function enterRawMode(): () => void {
  const input = rawInput();
  if (!input) return () => {};
  const wasRaw = input.isRaw === true;
  input.setRawMode(true);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    try {
      input.setRawMode(wasRaw);
    } catch {
      // the terminal is gone (hang-up): nothing to restore
    }
    process.off("exit", restore);
    for (const [signal, handler] of handlers) process.off(signal, handler);
  };
  const handlers: Array<[NodeJS.Signals, () => void]> = (["SIGTERM", "SIGHUP"] as const).map((signal) => [
    signal,
    () => {
      restore();
      // As a process killed by the signal would: the shell sees 128 + its number.
      process.exit(128 + (signal === "SIGTERM" ? 15 : 1));
    },
  ]);
  process.on("exit", restore);
  for (const [signal, handler] of handlers) process.on(signal, handler);
  return restore;
}

/**
 * Asks on stderr and reads a line from the terminal without echoing it; undefined when stdin is not a
 * terminal. Ctrl-C or Ctrl-D give up (an empty answer).
 */
export function promptHidden(question: string): Promise<string | undefined> {
  const input = rawInput();
  if (!input || !process.stderr.isTTY) return Promise.resolve(undefined);
  // Echo off before the question shows: an answer typed the moment it appears is not echoed either.
  const restore = enterRawMode();
  process.stderr.write(question);
  return new Promise((resolve) => {
    let answer = "";
    const finish = (value: string) => {
      input.off("data", onData);
      input.pause();
      restore();
      process.stderr.write("\n");
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      for (const char of chunk.toString("utf8")) {
        if (char === "\r" || char === "\n") return finish(answer);
        if (char === "\u0003" || char === "\u0004") return finish("");
        if (char === "\u007f" || char === "\b") answer = answer.slice(0, -1);
        else answer += char;
      }
    };
    input.on("data", onData);
    input.resume();
  });
}
