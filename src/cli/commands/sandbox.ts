import type { Argv, CommandModule } from "yargs";
import { resolveModifiers } from "../../config/modifiers.js";
import {
  AgentlabError,
  formatDuration,
  parseTtlMinutes,
  profileList,
  SANDBOX_STATE_NAMES,
  type Sandbox,
  type SandboxDetail,
  type SandboxEvent,
  sandboxCreate,
  sandboxDestroy,
  sandboxLeaseRenew,
  sandboxList,
  sandboxLogs,
  sandboxPrune,
  sandboxShow,
  sandboxStart,
  sandboxStop,
} from "../../protocol/index.js";
import { type CommandContext, execute, type GlobalArgs } from "../context.js";
import { fields, table } from "../render.js";

type Args<T> = GlobalArgs & T;

function ttlOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  try {
    return parseTtlMinutes(text);
  } catch (error) {
    throw new AgentlabError("USAGE", `--ttl: ${(error as Error).message}`, {
      hint: "give minutes (90) or a duration (90m, 2h)",
    });
  }
}

function leaseText(sandbox: Sandbox, now = Date.now()): string {
  if (sandbox.state === "DESTROYED") return "-";
  if (!sandbox.lease_expires_at) return "none";
  const left = Date.parse(sandbox.lease_expires_at) - now;
  return left <= 0 ? "expired" : `${formatDuration(Math.round(left / 60_000) * 60_000 || 60_000)} left`;
}

export function sandboxTable(sandboxes: Sandbox[]): string {
  if (sandboxes.length === 0)
    return "no sandboxes (create one with agentlab sandbox new --profile <profile>)\n";
  return table(
    ["VMID", "NAME", "PROFILE", "STATE", "IP", "LEASE"],
    sandboxes.map((s) => [String(s.vmid), s.name, s.profile, s.state, s.ip ?? "-", leaseText(s)]),
  );
}

function sandboxFields(s: Sandbox): Array<[string, string]> {
  const pairs: Array<[string, string]> = [
    ["vmid", String(s.vmid)],
    ["name", s.name],
    ["profile", s.profile],
    ["state", s.state],
    ["ip", s.ip ?? "-"],
    ["node", s.node ?? "-"],
    ["lease", s.lease_expires_at ? `${s.lease_expires_at} (${leaseText(s)})` : "none"],
    ["keepalive", s.keepalive ? "yes" : "no"],
    ["tags", s.tags.length > 0 ? s.tags.join(", ") : "-"],
  ];
  if (s.failure_reason) pairs.push(["reason", s.failure_reason]);
  pairs.push(["created", s.created_at]);
  return pairs;
}

function eventLine(event: SandboxEvent): string {
  return `${event.ts}  ${event.kind}${event.msg ? `  ${event.msg}` : ""}`;
}

function detailText(d: SandboxDetail): string {
  const pairs = sandboxFields(d);
  const px = d.proxmox;
  const live = px.found
    ? `${px.status ?? "?"}${px.lock ? ` (locked: ${px.lock})` : ""}${px.cores !== undefined ? `, ${px.cores} cores` : ""}${px.memory_mb !== undefined ? `, ${px.memory_mb} MB` : ""}`
    : (px.error ?? "no VM");
  pairs.push(["proxmox", live]);
  const events = d.events.map((e) => `  ${eventLine(e)}`).join("\n");
  return `${fields(pairs)}events:\n${events || "  (none)"}\n`;
}

const vmidPositional = <T>(yargs: Argv<T>) =>
  yargs.positional("vmid", { type: "number", demandOption: true, describe: "the sandbox's VMID" }) as Argv<
    T & { vmid: number }
  >;

async function resolveProfile(
  ctx: CommandContext,
  profile: string | undefined,
  mods: string[],
): Promise<string> {
  if (profile !== undefined && mods.length > 0) {
    throw new AgentlabError("USAGE", "use either --profile or +modifiers, not both");
  }
  if (profile !== undefined) return profile;
  if (mods.length === 0) {
    throw new AgentlabError("USAGE", "profile is required", {
      hint: "give --profile NAME or +modifiers (agentlab profile list shows the profiles)",
    });
  }
  const { profiles } = await ctx.call(profileList, {});
  return resolveModifiers(
    mods,
    profiles.map((p) => p.name),
  );
}

interface NewArgs {
  modifiers?: string[];
  profile?: string;
  name?: string;
  ttl?: string;
  keepalive?: boolean;
  vmid?: number;
  tag?: string[];
}

const newCommand = (command: string): CommandModule<GlobalArgs, Args<NewArgs>> => ({
  command: `${command} [modifiers..]`,
  describe: "Create a sandbox from a profile and wait until it runs",
  builder: (yargs) =>
    yargs
      .positional("modifiers", {
        type: "string",
        array: true,
        describe: "+mod words naming a profile in any order (+yolo +ephemeral finds yolo-ephemeral)",
      })
      .option("profile", { type: "string", describe: "profile to create from (agentlab profile list)" })
      .option("name", { type: "string", describe: "sandbox name (default sandbox-<vmid>)" })
      .option("ttl", {
        type: "string",
        describe: "lease: minutes (90) or a duration (90m, 2h); default from the profile",
      })
      .option("keepalive", {
        type: "boolean",
        describe: "keep the sandbox when its job ends (default from the profile)",
      })
      .option("vmid", { type: "number", describe: "use this VMID instead of the next free one" })
      .option("tag", { type: "string", array: true, describe: "tag the VM (repeatable)" })
      .example(
        "agentlab sandbox new --profile yolo-ephemeral --ttl 2h",
        "a sandbox that expires in two hours",
      )
      .example("agentlab new +yolo +ephemeral", "the same profile, named by its words") as unknown as Argv<
      Args<NewArgs>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const mods = (argv.modifiers ?? []).map(String);
      const stray = mods.find((m) => !m.startsWith("+"));
      if (stray !== undefined) {
        throw new AgentlabError("USAGE", `unexpected argument "${stray}": modifiers start with +`, {
          hint: "name the profile with --profile NAME or +word modifiers",
        });
      }
      const profile = await resolveProfile(ctx, argv.profile, mods);
      const ttl = ttlOption(argv.ttl);
      const sandbox = await ctx.call(sandboxCreate, {
        profile,
        ...(argv.name !== undefined ? { name: argv.name } : {}),
        ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
        ...(argv.keepalive !== undefined ? { keepalive: argv.keepalive } : {}),
        ...(argv.vmid !== undefined ? { vmid: argv.vmid } : {}),
        ...(argv.tag !== undefined ? { tags: argv.tag.map(String) } : {}),
      });
      return { data: sandbox, text: fields(sandboxFields(sandbox)) };
    }),
});

interface ListArgs {
  state?: string;
  profile?: string;
  all?: boolean;
}

const listCommand = (command: string, aliases: string[] = []): CommandModule<GlobalArgs, Args<ListArgs>> => ({
  command,
  aliases,
  describe: "List sandboxes (DESTROYED ones only with --all)",
  builder: (yargs) =>
    yargs
      .option("state", {
        type: "string",
        choices: SANDBOX_STATE_NAMES,
        describe: "only sandboxes in this state",
      })
      .option("profile", { type: "string", describe: "only sandboxes of this profile" })
      .option("all", { type: "boolean", default: false, describe: "include DESTROYED sandboxes" }) as Argv<
      Args<ListArgs>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sandboxList, {
        ...(argv.state ? { state: argv.state as Sandbox["state"] } : {}),
        ...(argv.profile ? { profile: argv.profile } : {}),
        all: argv.all === true,
      });
      return { data: result, text: sandboxTable(result.sandboxes) };
    }),
});

const showCommand = (command: string): CommandModule<GlobalArgs, Args<{ vmid: number; events: number }>> => ({
  command: `${command} <vmid>`,
  describe: "Show a sandbox: record, live Proxmox status, lease, last events",
  builder: (yargs) =>
    vmidPositional(yargs).option("events", {
      type: "number",
      default: 20,
      describe: "how many recent events to show",
    }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const detail = await ctx.call(sandboxShow, { vmid: argv.vmid, events: argv.events });
      return { data: detail, text: detailText(detail) };
    }),
});

const destroyCommand = (
  command: string,
  aliases: string[] = [],
): CommandModule<GlobalArgs, Args<{ vmid: number; force: boolean }>> => ({
  command: `${command} <vmid>`,
  aliases: aliases.map((alias) => `${alias} <vmid>`),
  describe: "Destroy a sandbox's VM and mark it DESTROYED",
  builder: (yargs) =>
    vmidPositional(yargs)
      .option("force", {
        type: "boolean",
        default: false,
        describe: "also for TIMEOUT or stuck sandboxes and for VMs already gone from Proxmox",
      })
      .example("agentlab sandbox destroy --force 1012", "clear a TIMEOUT sandbox whose VM no longer exists"),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const sandbox = await ctx.call(sandboxDestroy, { vmid: argv.vmid, force: argv.force });
      return { data: sandbox, text: `sandbox ${sandbox.vmid} destroyed\n` };
    }),
});

const pruneCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "prune",
  describe: "Remove orphaned entries: TIMEOUT sandboxes and sandboxes whose VM no longer exists",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sandboxPrune, {});
      const list = result.vmids.length > 0 ? ` (${result.vmids.join(", ")})` : "";
      return {
        data: result,
        text: `pruned ${result.count} sandbox${result.count === 1 ? "" : "es"}${list}\n`,
      };
    }),
};

const powerCommand = (
  command: string,
  verb: "start" | "stop",
): CommandModule<GlobalArgs, Args<{ vmid: number }>> => ({
  command: `${command} <vmid>`,
  describe:
    verb === "start" ? "Start a STOPPED sandbox and re-discover its IP" : "Stop (power off) a sandbox",
  builder: (yargs) => vmidPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const sandbox = await ctx.call(verb === "start" ? sandboxStart : sandboxStop, { vmid: argv.vmid });
      return {
        data: sandbox,
        text: `sandbox ${sandbox.vmid} is ${sandbox.state}${sandbox.ip ? ` at ${sandbox.ip}` : ""}\n`,
      };
    }),
});

const leaseCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "lease <command>",
  describe: "Manage a sandbox's lease",
  builder: (yargs) =>
    yargs
      .command({
        command: "renew <vmid>",
        describe: "Set a RUNNING sandbox's lease to expire --ttl from now",
        builder: (y: Argv<GlobalArgs>) =>
          vmidPositional(y).option("ttl", {
            type: "string",
            demandOption: true,
            describe: "minutes (120) or a duration (2h)",
          }),
        handler: (argv: Args<{ vmid: number; ttl: string }>) =>
          execute(argv, async (ctx) => {
            const result = await ctx.call(sandboxLeaseRenew, {
              vmid: argv.vmid,
              ttl_minutes: ttlOption(argv.ttl)!,
            });
            return {
              data: result,
              text: `sandbox ${result.vmid} lease expires at ${result.lease_expires_at}\n`,
            };
          }),
      })
      .demandCommand(1, "name a lease command"),
  handler: () => {},
};

const logsCommand = (
  command: string,
): CommandModule<GlobalArgs, Args<{ vmid: number; follow: boolean; tail: number }>> => ({
  command: `${command} <vmid>`,
  describe: "Show a sandbox's events (--follow to keep watching)",
  builder: (yargs) =>
    vmidPositional(yargs)
      .option("follow", { alias: "f", type: "boolean", default: false, describe: "keep printing new events" })
      .option("tail", {
        type: "number",
        default: 50,
        describe: "how many recent events to start with (max 1000)",
      }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const print = (events: SandboxEvent[]) => {
        for (const event of events)
          ctx.out.stdout(argv.json ? `${JSON.stringify(event)}\n` : `${eventLine(event)}\n`);
      };
      let result = await ctx.call(sandboxLogs, { vmid: argv.vmid, tail: argv.tail });
      print(result.events);
      while (argv.follow) {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        result = await ctx.call(sandboxLogs, { vmid: argv.vmid, after_id: result.last_id });
        print(result.events);
      }
      return { data: undefined, text: "", printed: true };
    }),
});

export const sandboxCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "sandbox <command>",
  describe: "Create and manage sandboxes (Proxmox VMs for agents)",
  builder: (yargs) =>
    yargs
      .command(newCommand("new"))
      .command(listCommand("list", ["ls"]))
      .command(showCommand("show"))
      .command(powerCommand("start", "start"))
      .command(powerCommand("stop", "stop"))
      .command(destroyCommand("destroy", ["rm"]))
      .command(pruneCommand)
      .command(leaseCommand)
      .command(logsCommand("logs"))
      .demandCommand(1, "name a sandbox command"),
  handler: () => {},
};

/** The short forms: agentlab new|ls|show|start|stop|rm|logs. */
export const sandboxShortcuts: CommandModule<GlobalArgs, never>[] = [
  newCommand("new"),
  listCommand("ls"),
  showCommand("show"),
  powerCommand("start", "start"),
  powerCommand("stop", "stop"),
  destroyCommand("rm"),
  logsCommand("logs"),
] as unknown as CommandModule<GlobalArgs, never>[];
