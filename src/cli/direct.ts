/**
 * Commands that take nothing but the global flags, run without yargs when the command line holds
 * nothing else: yargs and its helpers are most of what `agentlab status` would otherwise load to start
 * (issue 15, docs/performance.md "CLI start"). Only the plain forms are taken here; a command line with
 * anything more (help, a flag given twice, an unknown flag, a value that looks like a flag, an invalid
 * --timeout) goes to yargs, which parses and reports it as it always has. test/unit/cli-start.test.ts
 * holds these arguments against what yargs makes of the same command line.
 */
import { defaultSocket, type GlobalArgs, parseTimeout } from "./context.js";

const DIRECT: Readonly<Record<string, () => Promise<(args: GlobalArgs) => Promise<void>>>> = {
  status: async () => (await import("./commands/status.js")).showStatus,
};

/** The global flags that take a value, by the GlobalArgs field each sets. */
const VALUE_FLAGS = {
  "--socket": "socket",
  "--timeout": "timeout",
  "--endpoint": "endpoint",
  "--token": "token",
} as const;

/**
 * The command word and the global flags of a command line that is one word and global flags in their
 * plain forms (`--json`, `--socket PATH`, `--socket=PATH`), each flag at most once; undefined for any
 * other command line.
 */
export function directArgs(argv: readonly string[]): { word: string; args: GlobalArgs } | undefined {
  let word: string | undefined;
  let json = false;
  const values: Partial<Record<(typeof VALUE_FLAGS)[keyof typeof VALUE_FLAGS], string>> = {};
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-")) {
      if (word !== undefined) return undefined;
      word = arg;
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
    if (!Object.hasOwn(VALUE_FLAGS, flag)) return undefined;
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || value === "" || value.startsWith("-")) return undefined;
    values[VALUE_FLAGS[flag as keyof typeof VALUE_FLAGS]] = value;
  }
  if (word === undefined || !Object.hasOwn(DIRECT, word)) return undefined;
  if (values.timeout !== undefined) {
    try {
      parseTimeout(values.timeout);
    } catch {
      return undefined;
    }
  }
  return {
    word,
    args: {
      socket: values.socket ?? defaultSocket(),
      json,
      timeout: values.timeout,
      endpoint: values.endpoint,
      token: values.token,
      socketGiven: values.socket !== undefined,
    },
  };
}

/** The command to run without yargs, when the command line is one directArgs takes. */
export async function directCommand(argv: readonly string[]): Promise<(() => Promise<void>) | undefined> {
  const direct = directArgs(argv);
  if (!direct) return undefined;
  const run = await DIRECT[direct.word]!();
  return () => run(direct.args);
}
