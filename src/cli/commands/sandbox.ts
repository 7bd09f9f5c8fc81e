import type { Argv, CommandModule } from "yargs";
import { resolveModifiers } from "../../config/modifiers.js";
import type { ParamsOf, ResultOf } from "../../protocol/call-types.js";
import { AgentlabError } from "../../protocol/errors.js";
import { describeHostKey } from "../../protocol/host-keys.js";
import type { Sandbox, SandboxDetail, SandboxEvent, SandboxSnapshot } from "../../protocol/sandbox.js";
import { snapshotNameProblem } from "../../protocol/snapshot-names.js";
import { SANDBOX_STATE_NAMES } from "../../protocol/states.js";
import { formatDuration, parseMemoryMb, parseTtlMinutes } from "../../protocol/units.js";
import {
  profileList,
  sandboxCreate,
  sandboxDestroy,
  sandboxLeaseRenew,
  sandboxList,
  sandboxLogs,
  sandboxPause,
  sandboxPrune,
  sandboxResume,
  sandboxRevert,
  sandboxShow,
  sandboxSnapshotList,
  sandboxSnapshotRestore,
  sandboxSnapshotSave,
  sandboxStart,
  sandboxStop,
  sandboxStopAll,
  sandboxUpdate,
  sandboxValidate,
} from "../../protocol/wire.js";
import { confirm } from "../confirm.js";
import { type CommandContext, execute, type GlobalArgs } from "../context.js";
import { doctorCommand } from "../doctor.js";
import { ttlOption, vmidArg } from "../options.js";
import { fields, table } from "../render.js";
import { cpCommand } from "./sandbox-cp.js";
import { execCommand } from "./sandbox-exec.js";
import { inventoryCommand, reconcileCommand } from "./sandbox-maintenance.js";

type Args<T> = GlobalArgs & T;

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
  if (s.workspace_id) pairs.push(["workspace", `${s.workspace_id} (scsi1, mounted at /work)`]);
  if (s.failure_reason) pairs.push(["reason", s.failure_reason]);
  // Fingerprints, as `ssh-keygen -lf` prints them in the guest; the keys themselves are in --json.
  pairs.push([
    "host keys",
    s.ssh_host_keys && s.ssh_host_keys.length > 0
      ? s.ssh_host_keys.map(describeHostKey).join(", ")
      : "none recorded (the guest has not reported its SSH host keys)",
  ]);
  pairs.push(["created", s.created_at]);
  return pairs;
}

function eventLine(event: SandboxEvent): string {
  return `${event.ts}  ${event.kind}${event.msg ? `  ${event.msg}` : ""}`;
}

/** `after 30m idle`, or `off (why)`; then when idle stop last stopped the sandbox. */
function idleStopText(idle: SandboxDetail["idle_stop"]): string {
  const rule =
    idle.after_ms > 0 ? `after ${formatDuration(idle.after_ms)} idle` : `off (${idle.off ?? "disabled"})`;
  if (!idle.last) return rule;
  return `${rule}; stopped it at ${idle.last.at} after ${idle.last.idle_for_minutes} min idle (guest CPU ${idle.last.cpu_usage})`;
}

function detailText(d: SandboxDetail): string {
  const pairs = sandboxFields(d);
  const px = d.proxmox;
  const live = px.found
    ? `${px.status ?? "?"}${px.lock ? ` (locked: ${px.lock})` : ""}${px.cores !== undefined ? `, ${px.cores} cores` : ""}${px.memory_mb !== undefined ? `, ${px.memory_mb} MB` : ""}`
    : (px.error ?? "no VM");
  pairs.push(["proxmox", live]);
  pairs.push(["idle stop", idleStopText(d.idle_stop)]);
  const events = d.events.map((e) => `  ${eventLine(e)}`).join("\n");
  return `${fields(pairs)}events:\n${events || "  (none)"}\n`;
}

const vmidPositional = <T>(yargs: Argv<T>) =>
  yargs.positional("vmid", {
    type: "string",
    demandOption: true,
    coerce: vmidArg("<vmid>"),
    describe: "the sandbox's VMID",
  }) as Argv<T & { vmid: number }>;

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

export interface NewArgs {
  modifiers?: string[];
  profile?: string;
  name?: string;
  ttl?: string;
  keepalive?: boolean;
  vmid?: number;
  tag?: string[];
  workspace?: string;
}

/** The flags of sandbox new, shared with sandbox validate. */
function createOptions(yargs: Argv<GlobalArgs>) {
  return yargs
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
    .option("vmid", {
      type: "string",
      coerce: vmidArg("--vmid"),
      describe: "use this VMID instead of the next free one",
    })
    .option("tag", { type: "string", array: true, describe: "tag the VM (repeatable)" })
    .option("workspace", {
      type: "string",
      describe: "attach this detached workspace (name or id) as /work before the first boot",
    }) as unknown as Argv<Args<NewArgs>>;
}

/**
 * The sandbox.create params the flags of sandbox new stand for. `ttl` turns --ttl into minutes: new
 * refuses a bad one as a usage error, validate passes a non-positive one on for the daemon to report.
 */
async function createParams(
  ctx: CommandContext,
  argv: Args<NewArgs>,
  ttl: (text: string | undefined) => number | undefined,
): Promise<Omit<ParamsOf<typeof sandboxCreate>, "progress_token">> {
  const mods = (argv.modifiers ?? []).map(String);
  const stray = mods.find((m) => !m.startsWith("+"));
  if (stray !== undefined) {
    throw new AgentlabError("USAGE", `unexpected argument "${stray}": modifiers start with +`, {
      hint: "name the profile with --profile NAME or +word modifiers",
    });
  }
  const profile = await resolveProfile(ctx, argv.profile, mods);
  const ttlMinutes = ttl(argv.ttl);
  return {
    profile,
    ...(argv.name !== undefined ? { name: argv.name } : {}),
    ...(ttlMinutes !== undefined ? { ttl_minutes: ttlMinutes } : {}),
    ...(argv.keepalive !== undefined ? { keepalive: argv.keepalive } : {}),
    ...(argv.vmid !== undefined ? { vmid: argv.vmid } : {}),
    ...(argv.tag !== undefined ? { tags: argv.tag.map(String) } : {}),
    ...(argv.workspace !== undefined ? { workspace: argv.workspace } : {}),
  };
}

/** `sandbox new` (and `new`): create, wait until it runs, print it. The yargs path and direct.ts both run it. */
export function runNew(argv: Args<NewArgs>): Promise<void> {
  return execute(argv, async (ctx) => {
    const sandbox = await ctx.call(sandboxCreate, await createParams(ctx, argv, ttlOption));
    return { data: sandbox, text: fields(sandboxFields(sandbox)) };
  });
}

/** `run` is what the parsed command line goes to: runNew, or a test's recorder of what yargs parsed. */
export const newCommand = (
  command: string,
  run: (argv: Args<NewArgs>) => Promise<void> = runNew,
): CommandModule<GlobalArgs, Args<NewArgs>> => ({
  command: `${command} [modifiers..]`,
  describe: "Create a sandbox from a profile and wait until it runs",
  builder: (yargs) =>
    createOptions(yargs)
      .example(
        "agentlab sandbox new --profile yolo-ephemeral --ttl 2h",
        "a sandbox that expires in two hours",
      )
      .example("agentlab new +yolo +ephemeral", "the same profile, named by its words")
      .example(
        "agentlab sandbox new --profile yolo-workspace --workspace ws1",
        "a sandbox with the detached workspace ws1 mounted at /work",
      ),
  handler: run,
});

/** --ttl for validate: a value that is not positive is the daemon's to report among the problems. */
function lenientTtl(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (/^\s*-?\d+\s*$/.test(text)) return Number(text);
  try {
    return parseTtlMinutes(text);
  } catch (error) {
    if ((error as Error).message === "ttl must be positive") return 0;
    return ttlOption(text);
  }
}

type ValidateResult = ResultOf<typeof sandboxValidate>;

function planText(result: ValidateResult): string {
  const p = result.plan;
  const pairs: Array<[string, string]> = [["profile", p.profile]];
  if (p.template_vmid !== undefined) {
    const where = p.node ? ` on node ${p.node}` : "";
    const clone = p.clone ? `, ${p.clone} clone` : "";
    pairs.push([
      "template",
      `${p.template_vmid}${p.template_name ? ` (${p.template_name})` : ""}${where}${clone}`,
    ]);
  }
  if (p.vmid !== undefined) {
    pairs.push([
      "vmid",
      `${p.vmid}${p.vmid_source === "next_free" ? " (the next free one now; another create may take it first)" : ""}`,
    ]);
  }
  if (p.name !== undefined) pairs.push(["name", p.name]);
  const resources = [
    ...(p.cores !== undefined ? [`${p.cores} cores`] : []),
    ...(p.memory_mb !== undefined ? [`${p.memory_mb} MB memory`] : []),
    ...(p.root_size_gb !== undefined ? [`${p.root_size_gb}G root disk`] : []),
  ];
  if (resources.length > 0) pairs.push(["resources", resources.join(", ")]);
  if (p.network_mode !== undefined)
    pairs.push(["network", `${p.network_mode}${p.bridge ? ` on ${p.bridge}` : ""}`]);
  if (p.ttl_minutes !== undefined) {
    pairs.push([
      "lease",
      `${formatDuration(p.ttl_minutes * 60_000)}${p.lease_expires_at ? ` (until ${p.lease_expires_at} if created now)` : ""}`,
    ]);
  } else if (p.template_vmid !== undefined) pairs.push(["lease", "none (never expires)"]);
  if (p.keepalive !== undefined) pairs.push(["keepalive", p.keepalive ? "yes" : "no"]);
  pairs.push(["tags", p.tags.length > 0 ? p.tags.join(", ") : "-"]);
  const lines = [
    ...result.errors.map((e) => `error:   ${e.message} [${e.code}]`),
    ...result.warnings.map((w) => `warning: ${w.message} [${w.code}]`),
  ];
  const verdict = result.ok
    ? `ok: a sandbox new with these flags would go ahead${result.warnings.length > 0 ? ` (${result.warnings.length} warning${result.warnings.length === 1 ? "" : "s"})` : ""}`
    : `not ok: ${result.errors.length} problem${result.errors.length === 1 ? "" : "s"} would stop sandbox new`;
  return `${fields(pairs)}${lines.map((line) => `${line}\n`).join("")}${verdict}\n`;
}

const validateCommand: CommandModule<GlobalArgs, Args<NewArgs>> = {
  command: "validate [modifiers..]",
  describe: "Check what sandbox new would do with the same flags, without creating anything",
  builder: (yargs) =>
    createOptions(yargs)
      .example("agentlab sandbox validate +yolo +ephemeral", "would sandbox new work with these flags?")
      .epilogue(
        "Exit status: 0 when the plan is valid, 1 when it has problems (listed, with no error envelope).",
      ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sandboxValidate, await createParams(ctx, argv, lenientTtl));
      return { data: result, text: planText(result), exitCode: result.ok ? 0 : 1 };
    }),
};

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
      .option("all", {
        type: "boolean",
        default: false,
        describe: "include DESTROYED sandboxes and warm pool members",
      }) as Argv<Args<ListArgs>>,
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
  describe:
    "Remove orphaned entries: TIMEOUT sandboxes, sandboxes whose VM no longer exists and FAILED ones whose VM was never created. Exits 1 naming each sandbox it could not remove",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sandboxPrune, {});
      const list = result.vmids.length > 0 ? ` (${result.vmids.join(", ")})` : "";
      const failures = result.failed.map(
        (f) =>
          `could not prune sandbox ${f.vmid} (${f.state}): ${f.message}${f.hint ? `\n  hint: ${f.hint}` : ""}\n`,
      );
      return {
        data: result,
        text: `pruned ${result.count} sandbox${result.count === 1 ? "" : "es"}${list}\n${failures.join("")}`,
        exitCode: result.failed.length > 0 ? 1 : 0,
      };
    }),
};

const stateText = (sandbox: Sandbox) =>
  `sandbox ${sandbox.vmid} is ${sandbox.state}${sandbox.ip ? ` at ${sandbox.ip}` : ""}\n`;

const powerCommand = (
  command: string,
  verb: "start" | "pause" | "resume",
): CommandModule<GlobalArgs, Args<{ vmid: number }>> => {
  const what = {
    start: { method: sandboxStart, describe: "Start a STOPPED sandbox and re-discover its IP" },
    pause: {
      method: sandboxPause,
      describe: "Pause a READY or RUNNING sandbox: suspend its VM to RAM (SUSPENDED)",
    },
    resume: { method: sandboxResume, describe: "Resume a paused (SUSPENDED) sandbox from RAM" },
  }[verb];
  return {
    command: `${command} <vmid>`,
    describe: what.describe,
    builder: (yargs) => vmidPositional(yargs),
    handler: (argv) =>
      execute(argv, async (ctx) => {
        const sandbox = await ctx.call(what.method, { vmid: argv.vmid });
        return { data: sandbox, text: stateText(sandbox) };
      }),
  };
};

interface StopArgs {
  vmid?: number;
  all: boolean;
  force: boolean;
}

function stopAllText(result: ResultOf<typeof sandboxStopAll>): string {
  if (result.total === 0) return "no READY or RUNNING sandboxes to stop\n";
  const rows = table(
    ["VMID", "NAME", "RESULT", "STATE"],
    result.results.map((r) => [
      String(r.vmid),
      r.name,
      r.reason ? `${r.result}: ${r.reason}` : r.result,
      r.state,
    ]),
  );
  return `${rows}stopped ${result.stopped} of ${result.total} sandbox${result.total === 1 ? "" : "es"} (${result.skipped} skipped, ${result.failed} failed)\n`;
}

const stopCommand = (command: string): CommandModule<GlobalArgs, Args<StopArgs>> => ({
  command: `${command} [vmid]`,
  describe: "Stop (power off) a sandbox, or every READY and RUNNING one with --all",
  builder: (yargs) =>
    yargs
      .positional("vmid", { type: "string", coerce: vmidArg("<vmid>"), describe: "the sandbox's VMID" })
      .option("all", { type: "boolean", default: false, describe: "stop every READY and RUNNING sandbox" })
      .option("force", {
        type: "boolean",
        default: false,
        describe: "with --all: do not ask for confirmation (needed with --json or without a terminal)",
      })
      .epilogue("With --all the exit status is 1 when any stop failed; the result lists each sandbox.")
      .example("agentlab sandbox stop 1012", "power off one sandbox")
      .example(
        "agentlab sandbox stop --all --force",
        "power off every running sandbox without asking",
      ) as Argv<Args<StopArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.all && argv.vmid !== undefined) {
        throw new AgentlabError("USAGE", "give either a vmid or --all, not both");
      }
      if (!argv.all) {
        if (argv.vmid === undefined) {
          throw new AgentlabError("USAGE", "name the sandbox to stop (its vmid), or use --all", {
            hint: "agentlab sandbox stop <vmid>, or agentlab sandbox stop --all",
          });
        }
        if (argv.force) throw new AgentlabError("USAGE", "--force only applies with --all");
        const sandbox = await ctx.call(sandboxStop, { vmid: argv.vmid });
        return { data: sandbox, text: stateText(sandbox) };
      }
      await confirm({
        question: "stop all sandboxes",
        action: "stop all sandboxes",
        force: argv.force,
        json: argv.json,
        out: ctx.out,
      });
      const result = await ctx.call(sandboxStopAll, {});
      return { data: result, text: stopAllText(result), exitCode: result.failed > 0 ? 1 : 0 };
    }),
});

interface UpdateArgs {
  vmid: number;
  cores?: number;
  memory?: string;
  tag?: string[];
  "clear-tags": boolean;
}

const updateCommand: CommandModule<GlobalArgs, Args<UpdateArgs>> = {
  command: "update <vmid>",
  describe: "Change a sandbox's cores, memory or tags",
  builder: (yargs) =>
    vmidPositional(yargs)
      .option("cores", { type: "number", describe: "number of CPU cores" })
      .option("memory", { type: "string", describe: "memory: MiB (8192) or a size (512M, 8G, 8GiB)" })
      .option("tag", {
        type: "string",
        array: true,
        describe: "set the tags to these (repeatable; replaces the current ones; lower-cased)",
      })
      .option("clear-tags", { type: "boolean", default: false, describe: "remove every tag" })
      .example("agentlab sandbox update 1012 --memory 16G", "16 GiB of memory")
      .example("agentlab sandbox update 1012 --tag ci --tag web", "replace its tags with ci and web")
      .epilogue(
        "Proxmox changes the cores and memory of a running VM only at its next cold start: agentlab sandbox stop, then agentlab sandbox start. The VM keeps its agentlab tag whatever the tags.",
      ) as unknown as Argv<Args<UpdateArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.tag !== undefined && argv["clear-tags"]) {
        throw new AgentlabError("USAGE", "give either --tag or --clear-tags, not both", {
          hint: "--tag already replaces every tag with the ones given",
        });
      }
      if (
        argv.cores === undefined &&
        argv.memory === undefined &&
        argv.tag === undefined &&
        !argv["clear-tags"]
      ) {
        throw new AgentlabError(
          "USAGE",
          "nothing to update: give at least one of --cores, --memory, --tag, --clear-tags",
        );
      }
      if (argv.cores !== undefined && !(Number.isInteger(argv.cores) && argv.cores >= 1)) {
        throw new AgentlabError("USAGE", `--cores: expected a whole number of at least 1, got ${argv.cores}`);
      }
      let memory: number | undefined;
      if (argv.memory !== undefined) {
        try {
          memory = parseMemoryMb(argv.memory);
        } catch (error) {
          throw new AgentlabError("USAGE", `--memory: ${(error as Error).message}`);
        }
      }
      const tags = argv["clear-tags"] ? [] : argv.tag?.map((t) => String(t).toLowerCase());
      const result = await ctx.call(sandboxUpdate, {
        vmid: argv.vmid,
        ...(argv.cores !== undefined ? { cores: argv.cores } : {}),
        ...(memory !== undefined ? { memory_mb: memory } : {}),
        ...(tags !== undefined ? { tags } : {}),
      });
      const now = [
        ...(result.cores !== undefined ? [`${result.cores} cores`] : []),
        ...(result.memory_mb !== undefined ? [`${result.memory_mb} MB memory`] : []),
        `tags ${result.sandbox.tags.length > 0 ? result.sandbox.tags.join(", ") : "-"}`,
      ].join(", ");
      const pending =
        result.pending.length > 0
          ? `pending until the VM's next cold start: ${result.pending.map((k) => (k === "memory_mb" ? "memory" : k)).join(", ")} (apply with agentlab sandbox stop ${argv.vmid}, then agentlab sandbox start ${argv.vmid})\n`
          : "";
      return { data: result, text: `sandbox ${argv.vmid} updated: ${now}\n${pending}` };
    }),
};

interface RevertArgs {
  vmid: number;
  force: boolean;
  restart?: boolean;
  "no-restart"?: boolean;
}

/** States whose revert throws away a live guest, so the CLI asks first. */
const LIVE_STATES: ReadonlyArray<Sandbox["state"]> = ["READY", "RUNNING", "SUSPENDED"];

const revertCommand: CommandModule<GlobalArgs, Args<RevertArgs>> = {
  command: "revert <vmid>",
  describe: 'Roll a sandbox\'s root disk back to its "clean" snapshot (taken right after provisioning)',
  builder: (yargs) =>
    vmidPositional(yargs)
      // --no-restart is a flag of its own here, so that giving both can be refused.
      .parserConfiguration({ "boolean-negation": false })
      .option("force", {
        type: "boolean",
        default: false,
        describe: "do not ask for confirmation (needed with --json or without a terminal)",
      })
      .option("restart", {
        type: "boolean",
        describe: "start the sandbox afterwards (default: if it was running)",
      })
      .option("no-restart", { type: "boolean", describe: "leave the sandbox STOPPED afterwards" })
      .example("agentlab sandbox revert 1012", "asks first; a running sandbox is restarted")
      .example(
        "agentlab sandbox revert --force --no-restart 1012",
        "roll back without asking; leave it stopped",
      )
      .epilogue(
        "Files outside /work are lost: keep durable data in the /work workspace or in artifacts. The workspace is never rolled back.",
      ) as unknown as Argv<Args<RevertArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.restart === true && argv["no-restart"] === true) {
        throw new AgentlabError("USAGE", "give either --restart or --no-restart, not both");
      }
      const restart = argv.restart === true ? true : argv["no-restart"] === true ? false : undefined;
      const current = await ctx.call(sandboxShow, { vmid: argv.vmid, events: 0 });
      if (LIVE_STATES.includes(current.state)) {
        await confirm({
          question: `revert sandbox ${argv.vmid}`,
          action: "revert sandbox",
          force: argv.force,
          json: argv.json,
          out: ctx.out,
        });
      }
      const result = await ctx.call(sandboxRevert, {
        vmid: argv.vmid,
        force: argv.force,
        ...(restart !== undefined ? { restart } : {}),
      });
      const after = result.restarted
        ? `restarted: ${result.sandbox.state}${result.sandbox.ip ? ` at ${result.sandbox.ip}` : ""}`
        : `${result.sandbox.state} (start it with agentlab sandbox start ${argv.vmid})`;
      return {
        data: result,
        text: `sandbox ${argv.vmid} reverted to snapshot "${result.snapshot}"; ${after}\n`,
      };
    }),
};

function snapshotNameArg(name: unknown, purpose: "save" | "restore"): string {
  const text = String(name);
  const problem = snapshotNameProblem(text, purpose);
  if (problem) throw new AgentlabError("USAGE", problem);
  return text;
}

function snapshotTable(vmid: number, snapshots: SandboxSnapshot[]): string {
  if (snapshots.length === 0)
    return `no snapshots (take one with agentlab sandbox snapshot save ${vmid} <name>)\n`;
  return table(
    ["NAME", "CREATED", "RAM", "DESCRIPTION"],
    snapshots.map((s) => [s.name, s.created_at ?? "-", s.vmstate ? "yes" : "no", s.description ?? ""]),
  );
}

interface SnapshotArgs {
  vmid: number;
  name: string;
  force: boolean;
}

const snapshotForce = (describe: string) => ({ type: "boolean" as const, default: false, describe });

const snapshotCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "snapshot <command>",
  describe: "Save, list and restore snapshots of a sandbox's VM",
  builder: (yargs) =>
    yargs
      .command({
        command: "save <vmid> <name>",
        describe: "Take a snapshot of a STOPPED sandbox's disks",
        builder: (y: Argv<GlobalArgs>) =>
          vmidPositional(y)
            .positional("name", {
              type: "string",
              demandOption: true,
              describe:
                "snapshot name: a letter, then letters, digits, _ or - (2-40); not clean, current or pending",
            })
            .option(
              "force",
              snapshotForce("also snapshot a sandbox that is not STOPPED (crash-consistent, without RAM)"),
            )
            .example("agentlab sandbox snapshot save 1012 before-up", "snapshot a stopped sandbox"),
        handler: (argv: Args<SnapshotArgs>) =>
          execute(argv, async (ctx) => {
            const name = snapshotNameArg(argv.name, "save");
            const result = await ctx.call(sandboxSnapshotSave, { vmid: argv.vmid, name, force: argv.force });
            return {
              data: result,
              text: `saved snapshot "${result.name}" of sandbox ${result.vmid} at ${result.created_at}\n`,
            };
          }),
      })
      .command({
        command: "list <vmid>",
        describe: "List a sandbox's snapshots, oldest first",
        builder: (y: Argv<GlobalArgs>) => vmidPositional(y),
        handler: (argv: Args<{ vmid: number }>) =>
          execute(argv, async (ctx) => {
            const result = await ctx.call(sandboxSnapshotList, { vmid: argv.vmid });
            return { data: result, text: snapshotTable(result.vmid, result.snapshots) };
          }),
      })
      .command({
        command: "restore <vmid> <name>",
        describe: "Roll a STOPPED sandbox back to one of its snapshots",
        builder: (y: Argv<GlobalArgs>) =>
          vmidPositional(y)
            .positional("name", {
              type: "string",
              demandOption: true,
              describe: "the snapshot to go back to",
            })
            .option(
              "force",
              snapshotForce("also restore a sandbox that is not STOPPED (the rollback stops its VM)"),
            )
            .example("agentlab sandbox snapshot restore 1012 before-up", "go back to the saved disks"),
        handler: (argv: Args<SnapshotArgs>) =>
          execute(argv, async (ctx) => {
            const name = snapshotNameArg(argv.name, "restore");
            const result = await ctx.call(sandboxSnapshotRestore, {
              vmid: argv.vmid,
              name,
              force: argv.force,
            });
            const s = result.sandbox;
            const after =
              s.state === "RUNNING"
                ? `RUNNING${s.ip ? ` at ${s.ip}` : " (address not known yet)"}`
                : `${s.state} (start it with agentlab sandbox start ${s.vmid})`;
            return {
              data: result,
              text: `sandbox ${s.vmid} restored to snapshot "${result.snapshot}"; ${after}\n`,
            };
          }),
      })
      .demandCommand(1, "name a snapshot command"),
  handler: () => {},
};

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
      .command(validateCommand)
      .command(listCommand("list", ["ls"]))
      .command(showCommand("show"))
      .command(powerCommand("start", "start"))
      .command(stopCommand("stop"))
      .command(powerCommand("pause", "pause"))
      .command(powerCommand("resume", "resume"))
      .command(updateCommand)
      .command(revertCommand)
      .command(snapshotCommand)
      .command(destroyCommand("destroy", ["rm"]))
      .command(pruneCommand)
      .command(inventoryCommand)
      .command(reconcileCommand)
      .command(leaseCommand)
      .command(logsCommand("logs"))
      .command(execCommand)
      .command(cpCommand)
      .command(doctorCommand("sandbox"))
      .demandCommand(1, "name a sandbox command"),
  handler: () => {},
};

/** The short forms: agentlab new|ls|show|start|stop|rm|logs. */
export const sandboxShortcuts: CommandModule<GlobalArgs, never>[] = [
  newCommand("new"),
  listCommand("ls"),
  showCommand("show"),
  powerCommand("start", "start"),
  stopCommand("stop"),
  destroyCommand("rm"),
  logsCommand("logs"),
] as unknown as CommandModule<GlobalArgs, never>[];
