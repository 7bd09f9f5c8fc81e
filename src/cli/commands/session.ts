import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import type { Sandbox } from "../../protocol/sandbox.js";
import type { Session } from "../../protocol/session.js";
import {
  sessionBranch,
  sessionCreate,
  sessionFork,
  sessionList,
  sessionResume,
  sessionShow,
  sessionStop,
} from "../../protocol/wire.js";
import type { Workspace } from "../../protocol/workspace.js";
import { execute, type GlobalArgs } from "../context.js";
import { doctorCommand } from "../doctor.js";
import { sizeOption, ttlOption } from "../options.js";
import { fields, table } from "../render.js";

type Args<T> = GlobalArgs & T;

const sessionPositional = <T>(yargs: Argv<T>) =>
  yargs.positional("session", {
    type: "string",
    demandOption: true,
    describe: "session name or id",
  }) as Argv<T & { session: string }>;

function sessionTable(sessions: Session[]): string {
  if (sessions.length === 0) {
    return "no sessions (create one with agentlab session create --name <name> --profile <profile> --workspace-create <workspace>)\n";
  }
  return table(
    ["NAME", "STATE", "PROFILE", "WORKSPACE", "SANDBOX", "BRANCH"],
    sessions.map((s) => [
      s.name,
      s.state,
      s.profile,
      s.workspace_name ?? s.workspace_id,
      s.current_vmid !== undefined ? String(s.current_vmid) : "-",
      s.branch ?? "-",
    ]),
  );
}

function sessionText(session: Session, workspace?: Workspace, sandbox?: Sandbox): string {
  const pairs: Array<[string, string]> = [
    ["session", session.name],
    ["id", session.id],
    ["state", session.state],
    ["profile", session.profile],
    [
      "workspace",
      workspace ? `${workspace.name} (${workspace.id})` : (session.workspace_name ?? session.workspace_id),
    ],
  ];
  if (session.branch) pairs.push(["branch", session.branch]);
  if (sandbox) {
    pairs.push(["sandbox", `${sandbox.vmid} ${sandbox.state}${sandbox.ip ? ` at ${sandbox.ip}` : ""}`]);
  } else pairs.push(["sandbox", "none (agentlab session resume starts one)"]);
  return fields(pairs);
}

interface CreateArgs {
  name: string;
  profile: string;
  workspace?: string;
  "workspace-create"?: string;
  "workspace-size"?: string;
  "workspace-storage"?: string;
  branch?: string;
  ttl?: string;
}

const createCommand: CommandModule<GlobalArgs, Args<CreateArgs>> = {
  command: "create",
  describe: "Create a session and start its sandbox with the workspace attached",
  builder: (yargs) =>
    yargs
      .option("name", { type: "string", demandOption: true, describe: "session name" })
      .option("profile", {
        type: "string",
        demandOption: true,
        describe: "profile of the session's sandboxes",
      })
      .option("workspace", { type: "string", describe: "use this existing (detached) workspace" })
      .option("workspace-create", { type: "string", describe: "create a new workspace with this name" })
      .option("workspace-size", { type: "string", describe: "size of the new workspace (default 80G)" })
      .option("workspace-storage", { type: "string", describe: "storage of the new workspace" })
      .option("branch", { type: "string", describe: "a branch label for the session" })
      .option("ttl", { type: "string", describe: "lease of the sandbox: minutes (90) or 90m, 2h" })
      .example(
        "agentlab session create --name feat-x --profile yolo-workspace --workspace-create feat-x --workspace-size 40G",
        "a new session with a new 40 GiB workspace",
      ) as Argv<Args<CreateArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if ((argv.workspace === undefined) === (argv["workspace-create"] === undefined)) {
        throw new AgentlabError("USAGE", "give exactly one of --workspace or --workspace-create", {
          hint: "--workspace NAME uses an existing workspace; --workspace-create NAME makes a new one",
        });
      }
      if (
        argv.workspace !== undefined &&
        (argv["workspace-size"] !== undefined || argv["workspace-storage"] !== undefined)
      ) {
        throw new AgentlabError(
          "USAGE",
          "--workspace-size and --workspace-storage go with --workspace-create",
          {
            hint: "an existing workspace keeps its size and storage",
          },
        );
      }
      const ttl = ttlOption(argv.ttl);
      const result = await ctx.call(sessionCreate, {
        name: argv.name,
        profile: argv.profile,
        ...(argv.workspace !== undefined ? { workspace: argv.workspace } : {}),
        ...(argv["workspace-create"] !== undefined ? { workspace_create: argv["workspace-create"] } : {}),
        ...(argv["workspace-size"] !== undefined
          ? { workspace_size_gb: sizeOption("--workspace-size", argv["workspace-size"]) }
          : {}),
        ...(argv["workspace-storage"] !== undefined ? { workspace_storage: argv["workspace-storage"] } : {}),
        ...(argv.branch !== undefined ? { branch: argv.branch } : {}),
        ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
      });
      return { data: result, text: sessionText(result.session, result.workspace, result.sandbox) };
    }),
};

const listCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "list",
  aliases: ["ls"],
  describe: "List sessions",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sessionList, {});
      return { data: result, text: sessionTable(result.sessions) };
    }),
};

const showCommand: CommandModule<GlobalArgs, Args<{ session: string }>> = {
  command: "show <session>",
  describe: "Show a session with its workspace and sandbox",
  builder: (yargs) => sessionPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sessionShow, { session: argv.session });
      return { data: result, text: sessionText(result.session, result.workspace, result.sandbox) };
    }),
};

const stopCommand: CommandModule<GlobalArgs, Args<{ session: string }>> = {
  command: "stop <session>",
  describe: "Destroy the session's sandbox; the workspace and the session stay",
  builder: (yargs) => sessionPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sessionStop, { session: argv.session });
      const what =
        result.destroyed_vmid !== undefined
          ? `sandbox ${result.destroyed_vmid} destroyed`
          : "it had no sandbox";
      return {
        data: result,
        text: `session ${result.session.name} stopped (${what}); resume with agentlab session resume ${result.session.name}\n`,
      };
    }),
};

const resumeCommand: CommandModule<GlobalArgs, Args<{ session: string; ttl?: string }>> = {
  command: "resume <session>",
  describe: "Start a new sandbox for a stopped session, with its workspace attached",
  builder: (yargs) =>
    sessionPositional(yargs).option("ttl", {
      type: "string",
      describe: "lease of the sandbox: minutes or 90m, 2h",
    }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const ttl = ttlOption(argv.ttl);
      const result = await ctx.call(sessionResume, {
        session: argv.session,
        ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
      });
      return { data: result, text: sessionText(result.session, result.workspace, result.sandbox) };
    }),
};

const forkCommand: CommandModule<
  GlobalArgs,
  Args<{ session: string; name: string; profile?: string; branch?: string }>
> = {
  command: "fork <session>",
  describe: "New session on a copy of a stopped session's workspace",
  builder: (yargs) =>
    sessionPositional(yargs)
      .option("name", {
        type: "string",
        demandOption: true,
        describe: "name of the new session (and its workspace)",
      })
      .option("profile", { type: "string", describe: "profile (default: the source session's)" })
      .option("branch", { type: "string", describe: "branch label (default: the source session's)" }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sessionFork, {
        session: argv.session,
        name: argv.name,
        ...(argv.profile !== undefined ? { profile: argv.profile } : {}),
        ...(argv.branch !== undefined ? { branch: argv.branch } : {}),
      });
      return { data: result, text: sessionText(result.session, result.workspace, result.sandbox) };
    }),
};

const branchCommand: CommandModule<GlobalArgs, Args<{ branch: string; profile: string }>> = {
  command: "branch <branch>",
  describe: "The session for a branch (branch-<slug>): created, or resumed if stopped",
  builder: (yargs) =>
    yargs
      .positional("branch", { type: "string", demandOption: true, describe: "the branch name" })
      .option("profile", {
        type: "string",
        demandOption: true,
        describe: "profile of the session's sandboxes",
      }) as Argv<Args<{ branch: string; profile: string }>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sessionBranch, { branch: argv.branch, profile: argv.profile });
      return {
        data: result,
        text: `session ${result.session.name} ${result.action}\n${sessionText(result.session, result.workspace, result.sandbox)}`,
      };
    }),
};

export const sessionCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "session <command>",
  describe: "Named, resumable work: a workspace plus a profile",
  builder: (yargs) =>
    yargs
      .command(createCommand)
      .command(listCommand)
      .command(showCommand)
      .command(stopCommand)
      .command(resumeCommand)
      .command(forkCommand)
      .command(branchCommand)
      .command(doctorCommand("session"))
      .demandCommand(1, "name a session command"),
  handler: () => {},
};
