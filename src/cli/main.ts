import yargs, { type Argv, type CommandModule, type FallbackCompletionFunction } from "yargs";
import { hideBin } from "yargs/helpers";
import { editDistance } from "../config/suggest.js";
import { AgentlabError } from "../protocol/errors.js";
import { VERSION } from "../version.js";
import { COMPLETION_FLAG } from "./commands/completion.js";
import { defaultSocket, type GlobalArgs, parseTimeout } from "./context.js";
import { processOutput, renderError } from "./render.js";

/** Help is wrapped at a fixed width so docs/cli.md, generated from it, does not depend on the terminal. */
export const HELP_WIDTH = 100;

/** Global flags whose next argument is their value, not a command word. */
const VALUE_FLAGS = new Set(["--socket", "--timeout", "--endpoint", "--token"]);

type AnyCommand = CommandModule<GlobalArgs, never>;

/**
 * The top-level commands in the order `agentlab --help` lists them, each with the words that select it
 * and the module that defines it. A module is imported only when its command runs (or when every
 * command is needed: the top-level help, completion, a word that is no command): each one pulls in the
 * protocol schemas it calls, and loading them all was most of the CLI's start-up (docs/performance.md).
 */
const COMMANDS: ReadonlyArray<{ words: readonly string[]; load: () => Promise<AnyCommand[]> }> = [
  {
    words: ["status"],
    load: async () => [(await import("./commands/status.js")).statusCommand as AnyCommand],
  },
  { words: ["init"], load: async () => [(await import("./commands/init.js")).initCommand as AnyCommand] },
  {
    words: ["sandbox", "new", "ls", "show", "start", "stop", "rm", "logs"],
    load: async () => {
      const { sandboxCommand, sandboxShortcuts } = await import("./commands/sandbox.js");
      return [sandboxCommand as AnyCommand, ...sandboxShortcuts];
    },
  },
  {
    words: ["workspace"],
    load: async () => [(await import("./commands/workspace.js")).workspaceCommand as AnyCommand],
  },
  {
    words: ["session"],
    load: async () => [(await import("./commands/session.js")).sessionCommand as AnyCommand],
  },
  { words: ["ssh"], load: async () => [(await import("./commands/ssh.js")).sshCommand as AnyCommand] },
  { words: ["job"], load: async () => [(await import("./commands/job.js")).jobCommand as AnyCommand] },
  {
    words: ["profile"],
    load: async () => [(await import("./commands/profile.js")).profileCommand as AnyCommand],
  },
  {
    words: ["connect", "disconnect"],
    load: async () => {
      const { connectCommand, disconnectCommand } = await import("./commands/connect.js");
      return [connectCommand as AnyCommand, disconnectCommand as AnyCommand];
    },
  },
  { words: ["token"], load: async () => [(await import("./commands/token.js")).tokenCommand as AnyCommand] },
  { words: ["mcp"], load: async () => [(await import("./commands/mcp.js")).mcpCommand as AnyCommand] },
  {
    words: ["maintenance"],
    load: async () => [(await import("./commands/maintenance.js")).maintenanceCommand as AnyCommand],
  },
  { words: ["db"], load: async () => [(await import("./commands/db.js")).dbCommand as AnyCommand] },
  {
    words: ["version"],
    load: async () => [(await import("./commands/version.js")).versionCommand as AnyCommand],
  },
  {
    words: ["completion"],
    load: async () => [(await import("./commands/completion.js")).completionCommand as AnyCommand],
  },
];

/** Every top-level command word, for the test that checks the table against the full CLI. */
export const COMMAND_WORDS: readonly string[] = COMMANDS.flatMap((c) => c.words);

/**
 * The command word yargs will dispatch on: the first argument that is neither an option nor the value
 * of a global option that takes one. Undefined when there is none, or after `--` (yargs takes no
 * command from there).
 */
export function commandWord(argv: readonly string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") return undefined;
    if (arg.startsWith("-")) {
      if (VALUE_FLAGS.has(arg)) i++;
      continue;
    }
    return arg;
  }
  return undefined;
}

/**
 * The command modules this invocation needs: the one its command word selects, else all of them (the
 * top-level help lists every command, completion walks them, and "did you mean" compares a typo with
 * every name). Loading one command instead of all changes nothing yargs prints: a command's own help
 * and errors never mention its siblings.
 */
export async function commandsFor(argv: readonly string[]): Promise<AnyCommand[]> {
  const word = commandWord(argv);
  const chosen =
    word === undefined || argv.includes(COMPLETION_FLAG)
      ? undefined
      : COMMANDS.find((c) => c.words.includes(word));
  const groups = await Promise.all((chosen ? [chosen] : COMMANDS).map((c) => c.load()));
  return groups.flat();
}

/** yargs' own complaints, reworded so the error names the problem and the hint the way out. */
function usageError(message: string, argv: string[]): AgentlabError {
  const words = argv.filter((arg, i) => !arg.startsWith("-") && !VALUE_FLAGS.has(argv[i - 1] ?? ""));
  const typed = words[0];
  const suggestion = /^Did you mean (.+)\?$/.exec(message.trim());
  if (suggestion) {
    // yargs names only the word it would use; the typo is the word closest to it, and what comes
    // before the typo is the command group the user is in.
    const wanted = suggestion[1]!;
    let at = 0;
    words.forEach((word, i) => {
      if (editDistance(word, wanted) < editDistance(words[at] ?? "", wanted)) at = i;
    });
    const group = words.slice(0, at).join(" ");
    return new AgentlabError("USAGE", `unknown command "${[group, words[at]].filter(Boolean).join(" ")}"`, {
      hint: `did you mean agentlab ${[group, wanted].filter(Boolean).join(" ")}? (agentlab ${group ? `${group} ` : ""}--help lists the commands)`,
    });
  }
  const unknown = /^Unknown arguments?: (.+)$/.exec(message.trim());
  if (
    unknown &&
    typed !== undefined &&
    unknown[1]!.split(", ").includes(typed) &&
    argv.indexOf(typed) === argv.findIndex((a) => !a.startsWith("-"))
  ) {
    return new AgentlabError("USAGE", `unknown command "${typed}"`, {
      hint: "agentlab --help lists the commands",
    });
  }
  return new AgentlabError("USAGE", message, { hint: "run the command with --help to see its usage" });
}

/** `names`: the daemon's names for a completion request (completionNames), added to yargs' own. */
export async function buildCli(argv: string[], names: readonly string[] = []): Promise<Argv<GlobalArgs>> {
  const wantsJson = argv.includes("--json");
  const commands = await commandsFor(argv);
  // yargs translates its own words by the locale it guesses from LANG/LC_ALL: half-German help, a
  // "did you mean" hint usageError() no longer recognises, and docs/cli.md that depends on the host.
  const cli = yargs(argv)
    .locale("en")
    .scriptName("agentlab")
    .usage("$0 <command> [options]\n\nRun and manage network-isolated Proxmox sandboxes for coding agents.")
    .option("socket", {
      type: "string",
      default: defaultSocket(),
      defaultDescription: "$AGENTLAB_SOCKET or /run/agentlab/agentlabd.sock",
      describe: "path of the daemon's Unix socket",
      global: true,
    })
    .option("json", {
      type: "boolean",
      default: false,
      describe: "print machine-readable JSON",
      global: true,
    })
    .option("timeout", {
      type: "string",
      defaultDescription: "30s; 15m for commands that report progress",
      describe: "how long to wait for the daemon to answer, e.g. 30s, 5m (progress counts as an answer)",
      global: true,
    })
    .option("endpoint", {
      type: "string",
      defaultDescription: "$AGENTLAB_ENDPOINT, else agentlab connect's",
      describe: "URL of a remote agentlabd's control listener, e.g. https://host.tailnet.ts.net:8845",
      global: true,
    })
    .option("token", {
      type: "string",
      defaultDescription: "$AGENTLAB_TOKEN, else agentlab connect's",
      describe: "token for the remote endpoint (agentlab token create on the daemon's host)",
      global: true,
    })
    .middleware((args) => {
      args.socketGiven = argv.some((arg) => arg === "--socket" || arg.startsWith("--socket="));
    })
    .check((args) => {
      // yargs turns a repeated string option into an array; for these one value is all that makes sense.
      for (const name of ["socket", "timeout", "endpoint", "token"] as const) {
        const value: unknown = args[name];
        if (Array.isArray(value)) {
          throw new AgentlabError(
            "USAGE",
            `--${name} was given ${value.length} times (${value.join(", ")})`,
            {
              hint: `give --${name} once`,
            },
          );
        }
      }
      if (args.timeout !== undefined) parseTimeout(args.timeout);
      return true;
    });
  for (const command of commands) cli.command(command);
  return cli
    .completion("__complete", false, ((
      _current: string,
      _args: GlobalArgs,
      defaults: (onCompleted: (error: Error | null, candidates: string[] | undefined) => void) => void,
      done: (completions: string[]) => void,
    ) => {
      // yargs' own candidates (commands, options), then the daemon's names fetched beforehand.
      defaults((_error, candidates) => done([...(candidates ?? []), ...names]));
    }) as FallbackCompletionFunction)
    .demandCommand(1, "name a command; agentlab --help lists them")
    .recommendCommands()
    .strict()
    .version(VERSION)
    .alias("v", "version")
    .help()
    .alias("h", "help")
    .epilogue(
      "Docs: docs/cli.md (this reference), docs/troubleshooting.md. Exit status: 0 ok, 1 failure, 2 usage.",
    )
    .wrap(HELP_WIDTH)
    .fail((message, error) => {
      // A half-typed line being completed is not a usage error: the completion still answers.
      if (argv.includes(COMPLETION_FLAG)) return;
      const failure =
        error instanceof AgentlabError
          ? error
          : usageError(message ?? error?.message ?? "invalid usage", argv);
      renderError(processOutput, failure, wantsJson);
      process.exit(failure.exitCode);
    }) as unknown as Argv<GlobalArgs>;
}

/**
 * A reader that stops reading (`agentlab sandbox list | head -1`) is not a failure of the command: its
 * work is done, so exit 0 without a word instead of an unhandled EPIPE stack trace.
 */
function quietOnClosedPipe(stream: NodeJS.WriteStream): void {
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0);
    throw error;
  });
}

export async function main(argv: string[] = hideBin(process.argv)): Promise<void> {
  quietOnClosedPipe(process.stdout);
  quietOnClosedPipe(process.stderr);
  const names = argv.includes(COMPLETION_FLAG)
    ? await (await import("./completion-names.js")).completionNames(argv, COMPLETION_FLAG)
    : [];
  await (await buildCli(argv, names)).parseAsync();
}
