/**
 * Names for shell completion that only the daemon knows: VMIDs, workspace and session names, job ids,
 * profile names. Asked quickly and silently: completion must never hang a shell or print an error, so a
 * daemon that is down or slow gives no names (yargs' own candidates still come).
 */
import { jobList, profileList, sandboxList, sessionList, workspaceList } from "../protocol/wire.js";
import { commandContext, defaultSocket, type GlobalArgs } from "./context.js";
import type { Output } from "./render.js";

export type NameKind = "vmid" | "workspace" | "session" | "job" | "profile";

/** Commands whose first positional names something the daemon has. */
export const POSITIONAL_KINDS: Readonly<Record<string, NameKind>> = {
  "sandbox destroy": "vmid",
  "sandbox doctor": "vmid",
  "sandbox exec": "vmid",
  "sandbox lease renew": "vmid",
  "sandbox logs": "vmid",
  "sandbox pause": "vmid",
  "sandbox resume": "vmid",
  "sandbox revert": "vmid",
  "sandbox show": "vmid",
  "sandbox snapshot list": "vmid",
  "sandbox snapshot restore": "vmid",
  "sandbox snapshot save": "vmid",
  "sandbox start": "vmid",
  "sandbox update": "vmid",
  logs: "vmid",
  rm: "vmid",
  show: "vmid",
  start: "vmid",
  ssh: "vmid",
  "workspace attach": "workspace",
  "workspace check": "workspace",
  "workspace destroy": "workspace",
  "workspace detach": "workspace",
  "workspace fork": "workspace",
  "workspace fsck": "workspace",
  "workspace lease clear": "workspace",
  "workspace rebind": "workspace",
  "workspace show": "workspace",
  "workspace snapshot create": "workspace",
  "workspace snapshot list": "workspace",
  "workspace snapshot restore": "workspace",
  "session doctor": "session",
  "session fork": "session",
  "session resume": "session",
  "session show": "session",
  "session stop": "session",
  "job artifacts download": "job",
  "job cancel": "job",
  "job doctor": "job",
  "job logs": "job",
  "job show": "job",
};

/** Options whose value names something the daemon has. */
export const FLAG_KINDS: Readonly<Record<string, NameKind>> = {
  "--profile": "profile",
  "--workspace": "workspace",
  "--session": "session",
};

/**
 * Options that take no value, so the word after one is an argument. Every other option is taken to
 * carry the next word as its value (`--ttl 1h`, `--socket PATH`): counting `1h` as the command's
 * argument would stop `sandbox lease renew --ttl 1h <TAB>` from offering VMIDs. An option missing here
 * only makes completion offer names once too often, never hide them.
 */
const BOOLEAN_FLAGS = new Set(
  [
    "all",
    "apply",
    "clear-tags",
    "dry-run",
    "events",
    "follow",
    "force",
    "help",
    "hot",
    "json",
    "keep-old",
    "keepalive",
    "print",
    "recursive",
    "repair",
    "restart",
    "smoke-test",
    "version",
    "wait",
    "yes",
  ].map((name) => `--${name}`),
);

function takesValue(option: string): boolean {
  if (option.includes("=") || option.startsWith("--no-")) return false;
  // Short options (-f, -r) are all switches.
  return option.startsWith("--") && !BOOLEAN_FLAGS.has(option);
}

/**
 * What the word being completed names, from the words before it (without the program name), or
 * undefined. Only the first positional of a command is completed: once a word follows the command,
 * its argument is there.
 */
export function nameKind(before: readonly string[]): NameKind | undefined {
  const last = before.at(-1);
  if (last !== undefined && last in FLAG_KINDS) return FLAG_KINDS[last];
  // The positional words, in order: options and the values they carry left out.
  const words: string[] = [];
  for (let i = 0; i < before.length; i++) {
    const word = before[i]!;
    if (!word.startsWith("-")) words.push(word);
    else if (takesValue(word)) i++;
  }
  for (let length = Math.min(3, words.length); length > 0; length--) {
    const kind = POSITIONAL_KINDS[words.slice(0, length).join(" ")];
    if (kind === undefined) continue;
    return words.length === length ? kind : undefined;
  }
  return undefined;
}

const ASK_MS = 1500;

/**
 * The connection to ask, from the flags on the whole line (`agentlab --socket S --get-yargs-completions
 * …`: yargs parses only the words after the completion flag) with the usual precedence behind them.
 */
export function completionArgs(raw: readonly string[]): GlobalArgs {
  const found: Record<string, string> = {};
  for (const name of ["socket", "endpoint", "token"] as const) {
    for (let i = 0; i < raw.length; i++) {
      const word = raw[i]!;
      if (word === `--${name}` && raw[i + 1] !== undefined) found[name] = raw[i + 1]!;
      else if (word.startsWith(`--${name}=`)) found[name] = word.slice(name.length + 3);
    }
  }
  return {
    socket: found.socket ?? defaultSocket(),
    socketGiven: found.socket !== undefined,
    json: true,
    ...(found.endpoint !== undefined ? { endpoint: found.endpoint } : {}),
    ...(found.token !== undefined ? { token: found.token } : {}),
  } as GlobalArgs;
}

/**
 * The daemon's names for the word being completed on this command line (the words after the
 * completion flag, the program name first), or [] when the word is not a name or nobody answers.
 * Asked before yargs runs: its completion must stay synchronous, or it goes on to validate and run
 * the half-typed command.
 */
export async function completionNames(raw: readonly string[], flag: string): Promise<string[]> {
  const words = raw.slice(raw.indexOf(flag) + 2);
  const current = words.at(-1) ?? "";
  const kind = current.startsWith("-") ? undefined : nameKind(words.slice(0, -1));
  if (kind === undefined) return [];
  return (await daemonNames(kind, completionArgs(raw))).filter((name) => name.startsWith(current));
}

/** The daemon's names of that kind, or [] when it cannot answer within ASK_MS. */
export async function daemonNames(kind: NameKind, args: GlobalArgs): Promise<string[]> {
  const quiet: Output = { stdout: () => {}, stderr: () => {} };
  const ctx = commandContext({ ...args, json: true }, quiet);
  const options = { timeoutMs: ASK_MS, onProgress: () => {} };
  const ask = async (): Promise<string[]> => {
    switch (kind) {
      case "vmid":
        return (await ctx.call(sandboxList, {}, options)).sandboxes.map((s) => String(s.vmid));
      case "workspace":
        return (await ctx.call(workspaceList, {}, options)).workspaces.map((w) => w.name);
      case "session":
        return (await ctx.call(sessionList, {}, options)).sessions.map((s) => s.name);
      case "job":
        return (await ctx.call(jobList, { limit: 50 }, options)).jobs.map((j) => j.id);
      case "profile":
        return (await ctx.call(profileList, {}, options)).profiles.map((p) => p.name);
    }
  };
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string[]>((resolve) => {
    timer = setTimeout(() => resolve([]), ASK_MS);
  });
  try {
    return await Promise.race([ask().catch(() => []), late]);
  } finally {
    clearTimeout(timer);
  }
}
