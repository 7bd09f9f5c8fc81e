/**
 * `agentlab sandbox exec <vmid> [--user U] [--cwd D] [--env K=V]... [--timeout D] -- cmd args...`: the
 * daemon runs the command in the guest over SSH; its stdout and stderr arrive as progress and are
 * written here as they come, byte for byte; the exit code is the command's.
 */
import type { Argv, CommandModule } from "yargs";
import { EXEC_MAX_STDIN_BYTES } from "../../protocol/chunk-sizes.js";
import { AgentlabError } from "../../protocol/errors.js";
import { EXEC_STDERR_STEP, EXEC_STDOUT_STEP } from "../../protocol/exec-steps.js";
import type { ProgressValue } from "../../protocol/progress.js";
import { parseDuration } from "../../protocol/units.js";
import { sandboxExec } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";
import { vmidArg } from "../options.js";

interface ExecArgs extends GlobalArgs {
  vmid: number;
  command?: string[];
  user?: string;
  cwd?: string;
  env?: string[];
}

/** The daemon answers within this of the command's end; with no --timeout a command may run a day. */
const ANSWER_MARGIN_MS = 60_000;
const NO_TIMEOUT_SILENCE_MS = 24 * 60 * 60_000;

/** The words after `--` exactly as given (yargs would turn "010" into 10), else the positional ones. */
export function commandWords(argv: readonly string[], positional: readonly string[] | undefined): string[] {
  const dashes = argv.indexOf("--");
  return dashes >= 0 ? argv.slice(dashes + 1) : [...(positional ?? [])].map(String);
}

export function parseEnv(pairs: readonly string[] | undefined): Record<string, string> | undefined {
  if (pairs === undefined || pairs.length === 0) return undefined;
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    const name = eq > 0 ? pair.slice(0, eq) : "";
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new AgentlabError(
        "USAGE",
        `--env ${JSON.stringify(pair)}: expected NAME=VALUE (NAME: letters, digits, _)`,
      );
    }
    env[name] = pair.slice(eq + 1);
  }
  return env;
}

/** Piped stdin, read whole (it travels in the request); a terminal is not read. */
async function pipedStdin(): Promise<Buffer | undefined> {
  if (process.stdin.isTTY) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > EXEC_MAX_STDIN_BYTES) {
      throw new AgentlabError(
        "USAGE",
        `stdin is larger than ${EXEC_MAX_STDIN_BYTES / 1024} KiB, the most sandbox exec forwards`,
        {
          hint: "copy the data in first (agentlab sandbox cp FILE <vmid>:/path) and let the command read the file",
        },
      );
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

export const execCommand: CommandModule<GlobalArgs, ExecArgs> = {
  command: "exec <vmid> [command..]",
  describe: "Run a command in a running sandbox and stream its output (exit code: the command's)",
  builder: (yargs) =>
    (
      yargs.positional("vmid", {
        type: "string",
        demandOption: true,
        coerce: vmidArg("<vmid>"),
        describe: "the sandbox's VMID",
      }) as Argv<GlobalArgs & { vmid: number }>
    )
      .positional("command", {
        type: "string",
        array: true,
        describe: "the command and its arguments, after --",
      })
      .option("user", { type: "string", describe: "guest user to run as (default: agent)" })
      .option("cwd", { type: "string", describe: "directory to run in (default: the user's home)" })
      .option("env", { type: "string", array: true, describe: "NAME=VALUE for the command; repeatable" })
      .option("timeout", {
        type: "string",
        describe: "kill the command after this long (30s, 5m); exit code 137",
      })
      .example("agentlab sandbox exec 1012 -- uname -a", "run a command")
      .example("agentlab sandbox exec 1012 --cwd /work --env CI=1 -- make test", "in /work, with a variable")
      .example("echo hi | agentlab sandbox exec 1012 -- cat", "piped stdin is forwarded") as Argv<ExecArgs>,
  handler: (argv) =>
    execute({ ...argv, timeout: undefined }, async (ctx) => {
      const command = commandWords(process.argv, argv.command);
      if (command.length === 0) {
        throw new AgentlabError("USAGE", "give the command to run after --", {
          hint: `agentlab sandbox exec ${argv.vmid} -- uname -a`,
        });
      }
      let timeoutMs: number | undefined;
      if (argv.timeout !== undefined) {
        try {
          timeoutMs = parseDuration(argv.timeout);
        } catch (error) {
          throw new AgentlabError("USAGE", `--timeout: ${(error as Error).message}`);
        }
        if (timeoutMs <= 0) throw new AgentlabError("USAGE", "--timeout: must be greater than zero");
      }
      const env = parseEnv(argv.env);
      const stdin = await pipedStdin();
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      const onProgress = (value: ProgressValue) => {
        if (value.data === undefined) return;
        const bytes = Buffer.from(value.data, "base64");
        const isOut = value.step === EXEC_STDOUT_STEP;
        if (!isOut && value.step !== EXEC_STDERR_STEP) return;
        // --json collects both streams for the result; otherwise they are written as they come.
        if (argv.json) (isOut ? stdout : stderr).push(bytes);
        else (isOut ? process.stdout : process.stderr).write(bytes);
      };
      let result: Awaited<ReturnType<typeof ctx.call<typeof sandboxExec>>>;
      try {
        result = await ctx.call(
          sandboxExec,
          {
            vmid: argv.vmid,
            command,
            ...(argv.user !== undefined ? { user: argv.user } : {}),
            ...(argv.cwd !== undefined ? { cwd: argv.cwd } : {}),
            ...(env !== undefined ? { env } : {}),
            ...(timeoutMs !== undefined ? { timeout_ms: timeoutMs } : {}),
            ...(stdin !== undefined && stdin.length > 0 ? { stdin: stdin.toString("base64") } : {}),
          },
          {
            onProgress,
            waitMs: (timeoutMs ?? NO_TIMEOUT_SILENCE_MS) + ANSWER_MARGIN_MS,
            cancelMessage: "interrupting the command (SIGINT)… (press Ctrl-C again to stop waiting)\n",
          },
        );
      } catch (error) {
        // Interrupted by Ctrl-C: as a shell reports a command SIGINT ended.
        if (error instanceof AgentlabError && error.code === "CANCELLED" && !argv.json) {
          process.stderr.write(`${error.message}\n`);
          return { data: null, text: "", printed: true, exitCode: 130 };
        }
        throw error;
      }
      if (result.timed_out && !argv.json) {
        process.stderr.write(
          `agentlab: the command in sandbox ${argv.vmid} was killed after --timeout ${argv.timeout}\n`,
        );
      }
      const data = {
        ...result,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: Buffer.concat(stderr).toString("utf8"),
      };
      return { data, text: "", printed: !argv.json, exitCode: result.exit_code };
    }),
};
