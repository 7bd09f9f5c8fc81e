/**
 * Which command module a command line needs. Kept apart from the yargs set-up (parser.ts) so that a
 * command run without yargs (direct.ts) does not load it.
 */
import type { CommandModule } from "yargs";
import { COMPLETION_FLAG } from "./commands/completion.js";
import type { GlobalArgs } from "./context.js";
import { GLOBAL_VALUE_FLAGS } from "./direct.js";

/** Global flags whose next argument is their value, not a command word. */
export const VALUE_FLAGS: ReadonlySet<string> = new Set(Object.keys(GLOBAL_VALUE_FLAGS));

export type AnyCommand = CommandModule<GlobalArgs, never>;

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
