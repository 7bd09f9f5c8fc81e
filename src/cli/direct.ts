/**
 * Commands run without yargs when the command line holds nothing but their plain forms: loading yargs
 * alone costs about as much as Node's own start (issue 15, docs/performance.md "CLI start"), and
 * `agentlab status` and `agentlab sandbox new` from the warm pool (issue 17: RUNNING in under half a
 * second) are the calls where a person or an agent waits for that. Only plain forms are taken here: the
 * command words, the global flags and the command's own value flags, each at most once (`--json`,
 * `--socket PATH`, `--socket=PATH`, `--profile NAME`). A command line with anything more (help, a flag
 * given twice, an unknown flag, a flag before the command words, a value that looks like a flag, an
 * empty value, an invalid --timeout, a positional argument) goes to yargs, which parses and reports it
 * as it always has. test/unit/cli-start.test.ts holds these arguments against what yargs makes of the
 * same command line.
 */
import type { NewArgs } from "./commands/sandbox.js";
import { defaultSocket, type GlobalArgs, parseTimeout } from "./context.js";

/** The global flags that take a value, by the GlobalArgs field each sets (command-table.ts skips their values). */
export const GLOBAL_VALUE_FLAGS = {
  "--socket": "socket",
  "--timeout": "timeout",
  "--endpoint": "endpoint",
  "--token": "token",
} as const;

/** A command's own flag values by argument name (`profile`), undefined when not given. */
type CommandValues = { [name: string]: unknown };

interface DirectCommand {
  /** The command's own flags that take a string value, by the argument name yargs gives each. */
  flags: Readonly<Record<string, string>>;
  /** The command's handler, loaded only when it runs. */
  load: () => Promise<(args: GlobalArgs & CommandValues) => Promise<void>>;
}

/** `sandbox new`'s flags that are plain strings in yargs too (`--keepalive`, `--tag`, `--vmid` are not). */
const NEW: DirectCommand = {
  flags: { "--profile": "profile", "--name": "name", "--ttl": "ttl", "--workspace": "workspace" },
  load: async () => {
    const { runNew } = await import("./commands/sandbox.js");
    return (args) => runNew(args as GlobalArgs & NewArgs);
  },
};

/** By their command words, space-separated. */
const DIRECT: Readonly<Record<string, DirectCommand>> = {
  status: { flags: {}, load: async () => (await import("./commands/status.js")).showStatus },
  "sandbox new": NEW,
  new: NEW,
};

/** A command line directArgs takes: the command's words, the global flags, the command's own values. */
export interface DirectLine {
  command: string;
  args: GlobalArgs & CommandValues;
}

/**
 * The command words, global flags and command flags of a command line that holds only their plain
 * forms, each flag at most once and the command's own flags after its words; undefined for any other
 * command line. Every flag the command takes is in `args`, undefined when not given (as yargs has it).
 */
export function directArgs(argv: readonly string[]): DirectLine | undefined {
  const words: string[] = [];
  let json = false;
  const globals: Partial<Record<(typeof GLOBAL_VALUE_FLAGS)[keyof typeof GLOBAL_VALUE_FLAGS], string>> = {};
  const own: Record<string, string> = {};
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-")) {
      words.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const flag = eq >= 0 ? arg.slice(0, eq) : arg;
    if (seen.has(flag)) return undefined;
    seen.add(flag);
    if (flag === "--json" && eq < 0) {
      json = true;
      continue;
    }
    const global = Object.hasOwn(GLOBAL_VALUE_FLAGS, flag)
      ? GLOBAL_VALUE_FLAGS[flag as keyof typeof GLOBAL_VALUE_FLAGS]
      : undefined;
    // A command flag counts only once the command's words are complete (`sandbox new --profile p`).
    const flags = DIRECT[words.join(" ")]?.flags;
    const name = flags && Object.hasOwn(flags, flag) ? flags[flag] : undefined;
    if (global === undefined && name === undefined) return undefined;
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || value === "" || value.startsWith("-")) return undefined;
    if (global !== undefined) globals[global] = value;
    else own[name!] = value;
  }
  const command = words.join(" ");
  if (!Object.hasOwn(DIRECT, command)) return undefined;
  if (globals.timeout !== undefined) {
    try {
      parseTimeout(globals.timeout);
    } catch {
      return undefined;
    }
  }
  const values = Object.fromEntries(Object.values(DIRECT[command]!.flags).map((key) => [key, own[key]]));
  return {
    command,
    args: {
      ...values,
      socket: globals.socket ?? defaultSocket(),
      json,
      timeout: globals.timeout,
      endpoint: globals.endpoint,
      token: globals.token,
      socketGiven: globals.socket !== undefined,
    },
  };
}

/** The command to run without yargs, when the command line is one directArgs takes. */
export async function directCommand(argv: readonly string[]): Promise<(() => Promise<void>) | undefined> {
  const direct = directArgs(argv);
  if (!direct) return undefined;
  const run = await DIRECT[direct.command]!.load();
  return () => run(direct.args);
}
