/**
 * The yargs CLI: global flags, every command module the command line needs, help, usage errors.
 */
import yargs, { type Argv, type FallbackCompletionFunction } from "yargs";
import { editDistance } from "../config/suggest.js";
import { AgentlabError } from "../protocol/errors.js";
import { VERSION } from "../version.js";
import { type AnyCommand, commandsFor, VALUE_FLAGS } from "./command-table.js";
import { COMPLETION_FLAG } from "./commands/completion.js";
import { defaultSocket, type GlobalArgs, parseTimeout } from "./context.js";
import { processOutput, renderError } from "./render.js";

/** Help is wrapped at a fixed width so docs/cli.md, generated from it, does not depend on the terminal. */
export const HELP_WIDTH = 100;

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

/**
 * `names`: the daemon's names for a completion request (completionNames), added to yargs' own.
 * `commands`: the command modules, by default those the command line needs.
 */
export async function buildCli(
  argv: string[],
  names: readonly string[] = [],
  commands?: readonly AnyCommand[],
): Promise<Argv<GlobalArgs>> {
  const wantsJson = argv.includes("--json");
  const modules = commands ?? (await commandsFor(argv));
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
  for (const command of modules) cli.command(command);
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
