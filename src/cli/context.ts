import type { ParamsOf, ResultOf } from "../protocol/call-types.js";
import { AgentlabError } from "../protocol/errors.js";
import type { Wire } from "../protocol/method.js";
import type { ProgressValue } from "../protocol/progress.js";
import { DEFAULT_SOCKET_PATH } from "../protocol/socket.js";
import { parseDuration } from "../protocol/units.js";
import { call } from "./client.js";
import { type Connection, resolveConnection } from "./remote/connection.js";
import {
  asAgentlabError,
  type Output,
  processOutput,
  progressPrinter,
  renderError,
  renderJson,
} from "./render.js";

/** Flags every command accepts. */
export interface GlobalArgs {
  socket: string;
  json: boolean;
  /** Unset: 30s for quick calls, 15m for operations that report progress. */
  timeout?: string | undefined;
  /** A remote daemon's URL (agentlab connect saves one); beats --socket when both are given. */
  endpoint?: string | undefined;
  token?: string | undefined;
  /** Whether --socket was on the command line (not only its default): a flag beats the environment. */
  socketGiven?: boolean | undefined;
}

/**
 * The daemon this invocation talks to, by the precedence flags > environment > saved > local socket.
 * Arguments built in code (no endpoint, no socketGiven) mean the socket they name.
 */
export function connectionOf(args: GlobalArgs, env: NodeJS.ProcessEnv = process.env): Connection {
  if (args.socketGiven === undefined && args.endpoint === undefined) {
    return { kind: "socket", path: args.socket, source: "--socket" };
  }
  return resolveConnection(
    {
      socket: args.socket,
      socketGiven: args.socketGiven === true,
      endpoint: args.endpoint,
      token: args.token,
    },
    env,
    DEFAULT_SOCKET_PATH,
  );
}

export const DEFAULT_TIMEOUT_MS = 30_000;
/** Long operations (clone, start, wait for the guest) are quiet for minutes on a slow host. */
export const DEFAULT_PROGRESS_TIMEOUT_MS = 15 * 60_000;

export function defaultSocket(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.AGENTLAB_SOCKET;
  return fromEnv && fromEnv !== "" ? fromEnv : DEFAULT_SOCKET_PATH;
}

export function parseTimeout(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (error) {
    throw new AgentlabError("USAGE", `--timeout: ${(error as Error).message}`);
  }
  if (ms <= 0) throw new AgentlabError("USAGE", "--timeout: must be greater than zero");
  return ms;
}

/** What a command's work function returns; render decides how it is shown. */
export interface Outcome {
  /** The raw protocol result, printed as-is under --json. */
  data: unknown;
  /** The text for people. */
  text: string;
  exitCode?: number;
  /** The command wrote its own output (streams such as logs --follow); render nothing more. */
  printed?: boolean;
}

/** For calls that stream (job logs --follow): their own notification handler, silence limit and stop. */
/** What a command may set for one call instead of the defaults. */
export interface CallOptions {
  /** Replaces the progress printer: every $/progress value of the call goes here (job logs, exec output). */
  onProgress?: (value: ProgressValue) => void;
  /** Longest silence from the daemon when --timeout is not given. */
  timeoutMs?: number;
  /**
   * Longest silence from the daemon even when --timeout is given: for sandbox exec, whose --timeout is
   * the command's own limit and not the wait for the daemon.
   */
  waitMs?: number;
  /** Stops the call (sent to the daemon as a cancellation). */
  signal?: AbortSignal;
  /** What the first Ctrl-C prints (the default speaks of a rollback). */
  cancelMessage?: string;
  /** A call the command makes in the background (ssh's keep-in-use touches): Ctrl-C is left to the command. */
  background?: boolean;
}

export interface CommandContext {
  args: GlobalArgs;
  out: Output;
  call<M extends Wire>(
    method: M,
    params: Omit<ParamsOf<M>, "progress_token">,
    options?: CallOptions,
  ): Promise<ResultOf<M>>;
}

/**
 * Make a context whose calls use the global flags, print progress, and turn the first Ctrl-C into a
 * cancellation the daemon rolls back; a second Ctrl-C leaves at once and says what that means.
 */
export function commandContext(
  args: GlobalArgs,
  out: Output = processOutput,
  answers: Answer[] = [],
): CommandContext {
  return {
    args,
    out,
    async call(method, params, options = {}) {
      const timeoutMs =
        options.waitMs ??
        (args.timeout !== undefined
          ? parseTimeout(args.timeout)
          : (options.timeoutMs ?? (method.progress ? DEFAULT_PROGRESS_TIMEOUT_MS : DEFAULT_TIMEOUT_MS)));
      const abort = new AbortController();
      const onStop = () => abort.abort();
      if (options.signal?.aborted) abort.abort();
      options.signal?.addEventListener("abort", onStop);
      let interrupts = 0;
      const onSigint = () => {
        interrupts++;
        if (interrupts === 1) {
          out.stderr(
            options.cancelMessage ??
              "cancelling… (press Ctrl-C again to stop waiting; the daemon then finishes the rollback alone)\n",
          );
          abort.abort();
        } else {
          out.stderr("stopped waiting; check the result with agentlab status\n");
          process.exit(130);
        }
      };
      const connection = connectionOf(args);
      if (!options.background) process.on("SIGINT", onSigint);
      try {
        const onProgress = options.onProgress ?? progressPrinter(out, args.json);
        const answer = await call(
          {
            socketPath: connection.kind === "socket" ? connection.path : args.socket,
            ...(connection.kind === "remote" ? { remote: connection } : {}),
            timeoutMs,
            signal: abort.signal,
            ...(onProgress ? { onProgress } : {}),
          },
          method,
          params,
        );
        answers.push({ method: method.method, answer });
        return answer;
      } finally {
        process.off("SIGINT", onSigint);
        options.signal?.removeEventListener("abort", onStop);
      }
    },
  };
}

/** A daemon's answer as a command received it. */
interface Answer {
  method: string;
  answer: unknown;
}

/**
 * Why a command failed to show what the daemon answered, when the answer is not what this CLI's
 * protocol says (a daemon of another version): PROTOCOL_MISMATCH instead of a crash reported as a CLI
 * bug. The CLI calls through wire descriptors and does not check every answer (that would load zod and
 * every method's schemas to start, docs/performance.md); it loads the schemas here, only on the way out
 * of a failure.
 */
async function mismatch(answers: readonly Answer[]): Promise<AgentlabError | undefined> {
  if (answers.length === 0) return undefined;
  const [{ METHODS }, { checkAnswer }] = await Promise.all([
    import("../protocol/index.js"),
    import("../protocol/request.js"),
  ]);
  for (const { method, answer } of answers) {
    const schema = METHODS.find((m) => m.method === method);
    try {
      if (schema) checkAnswer(schema, answer);
    } catch (error) {
      if (error instanceof AgentlabError) return error;
    }
  }
  return undefined;
}

/** Run a command's work and render its outcome or its error; sets the exit code, never throws. */
export async function execute(
  args: GlobalArgs,
  work: (ctx: CommandContext) => Promise<Outcome>,
): Promise<void> {
  const answers: Answer[] = [];
  const ctx = commandContext(args, processOutput, answers);
  try {
    const outcome = await work(ctx);
    if (outcome.printed) {
      // already written
    } else if (args.json) renderJson(ctx.out, outcome.data);
    else ctx.out.stdout(outcome.text);
    process.exitCode = outcome.exitCode ?? 0;
  } catch (error) {
    const failure =
      error instanceof AgentlabError ? error : ((await mismatch(answers)) ?? asAgentlabError(error));
    renderError(ctx.out, failure, args.json);
    process.exitCode = failure.exitCode;
  }
}
