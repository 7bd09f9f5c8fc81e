import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import type { Job, JobDetail } from "../../protocol/job.js";
import type { SandboxEvent } from "../../protocol/sandbox.js";
import { JOB_STATUSES } from "../../protocol/states.js";
import { jobCancel, jobList, jobRun, jobShow, jobValidate, workspaceCreate } from "../../protocol/wire.js";
import { type CommandContext, execute, type GlobalArgs, parseTimeout } from "../context.js";
import { doctorCommand } from "../doctor.js";
import { followJob } from "../job-follow.js";
import { sizeOption, ttlOption } from "../options.js";
import { fields, table } from "../render.js";
import { artifactsCommand, logsCommand, streamJobLog } from "./job-output.js";

type Args<T> = GlobalArgs & T;

/** How long --wait follows a job by default: the longest a job's own time limit usually is. */
const DEFAULT_WAIT = "2h";

function jobTable(jobs: Job[]): string {
  if (jobs.length === 0) {
    return "no jobs (run one with agentlab job run --repo <url> --task <text> --profile <profile>)\n";
  }
  return table(
    ["ID", "STATUS", "PROFILE", "SANDBOX", "REPO", "CREATED"],
    jobs.map((j) => [
      j.id,
      j.status,
      j.profile,
      j.sandbox_vmid !== undefined ? String(j.sandbox_vmid) : "-",
      `${j.repo_url}@${j.ref}`,
      j.created_at,
    ]),
  );
}

/** The runner's result fields worth a line each; the rest stays in --json. */
function resultPairs(job: Job): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const report = job.result;
  if (!report) return pairs;
  pairs.push([
    "last report",
    `${report.status}${report.message ? `: ${report.message}` : ""} (${report.reported_at})`,
  ]);
  const result = report.result as Record<string, unknown> | undefined;
  if (result && typeof result === "object") {
    if (result.exit_code !== undefined && result.exit_code !== null)
      pairs.push(["exit code", String(result.exit_code)]);
    if (typeof result.commit === "string") pairs.push(["commit", result.commit]);
    if (typeof result.branch === "string") {
      // A --branch job: where the runner's commit went (docs/jobs.md, "On a branch").
      const pushed =
        result.pushed === true
          ? `pushed to origin`
          : `not pushed${typeof result.push_error === "string" ? `: ${result.push_error}` : ""}; the commit stays on the branch in the session's workspace`;
      pairs.push(["branch", `${result.branch} (${pushed})`]);
    }
    if (typeof result.duration_seconds === "number") pairs.push(["duration", `${result.duration_seconds} s`]);
  }
  return pairs;
}

function jobText(job: Job | JobDetail): string {
  const pairs: Array<[string, string]> = [
    ["job", job.id],
    ["status", job.status],
    ["repo", `${job.repo_url} (ref ${job.ref})`],
    ["profile", job.profile],
    ["sandbox", job.sandbox_vmid !== undefined ? String(job.sandbox_vmid) : "not yet reserved"],
    ...(job.workspace_id !== undefined ? ([["workspace", job.workspace_id]] as Array<[string, string]>) : []),
    ...(job.branch !== undefined
      ? ([["on branch", `${job.branch} (session ${job.session_id ?? "?"})`]] as Array<[string, string]>)
      : []),
    ["keepalive", job.keepalive ? "yes (the sandbox stays when the job ends)" : "no"],
  ];
  if (job.ttl_minutes !== undefined) pairs.push(["time limit", `${job.ttl_minutes} min`]);
  if (job.failure_reason) pairs.push(["reason", job.failure_reason]);
  pairs.push(...resultPairs(job));
  let text = fields(pairs);
  const tail = (job.result?.result as { output_tail?: unknown } | undefined)?.output_tail;
  if (typeof tail === "string" && tail !== "")
    text += `\noutput (last lines):\n${tail.replace(/\n?$/, "\n")}`;
  if ("events" in job && job.events && job.events.length > 0) {
    text += `\nevents:\n${job.events.map(eventLine).join("")}`;
  }
  return text;
}

function eventLine(e: SandboxEvent): string {
  return `  ${e.ts}  ${e.kind}${e.msg ? `  ${e.msg}` : ""}\n`;
}

/**
 * Follow a job for --wait: events go to stderr as progress and the agent's output to stdout as it
 * runs (neither under --json); exit 0 only for COMPLETED.
 */
async function waitFor(ctx: CommandContext, id: string, wait: string | undefined) {
  const timeoutMs = parseTimeout(wait ?? DEFAULT_WAIT);
  const stopLog = new AbortController();
  // The output ends with the job; the events follow decides when waiting is over (or times out).
  const log = ctx.args.json
    ? Promise.resolve()
    : streamJobLog(ctx, id, (text) => ctx.out.stdout(text), stopLog.signal).then(
        () => {},
        () => {},
      );
  let job: JobDetail;
  try {
    job = await followJob(ctx, id, {
      timeoutMs,
      onEvent: (e) => {
        if (!ctx.args.json) ctx.out.stderr(eventLine(e));
      },
    });
  } catch (error) {
    stopLog.abort();
    await log;
    throw error;
  }
  await log;
  return { data: job, text: jobText({ ...job, events: [] }), exitCode: job.status === "COMPLETED" ? 0 : 1 };
}

interface RunArgs {
  repo: string;
  task: string;
  profile: string;
  ref?: string;
  mode?: string;
  ttl?: string;
  keepalive?: boolean;
  workspace?: string;
  "workspace-size"?: string;
  "workspace-storage"?: string;
  branch?: string;
  wait?: boolean;
  "wait-timeout"?: string;
}

/** The options of a job request, shared by run and validate. */
function requestOptions<T>(yargs: Argv<T>) {
  return yargs
    .option("repo", {
      type: "string",
      demandOption: true,
      describe: "git URL the sandbox clones (https://, git://, ssh:// or user@host:path)",
    })
    .option("task", { type: "string", demandOption: true, describe: "what the agent should do" })
    .option("profile", { type: "string", demandOption: true, describe: "profile of the job's sandbox" })
    .option("ref", { type: "string", describe: "branch, tag or commit to check out (default main)" })
    .option("mode", {
      type: "string",
      describe: "agent permission mode passed to the runner (default dangerous)",
    })
    .option("ttl", {
      type: "string",
      describe:
        "time limit of the job and lease of its sandbox: minutes (90) or 90m, 2h (default: the profile's)",
    })
    .option("keepalive", {
      type: "boolean",
      describe: "keep the sandbox when the job ends (default: the profile's); destroy it yourself later",
    })
    .option("workspace", {
      type: "string",
      describe:
        "workspace attached as /work before the first boot: an existing, detached one (name or id), or new:NAME to create it first (with --workspace-size); the repository is cloned into /work/repo, or /work/repo-<job id> when that is taken",
    })
    .option("workspace-size", {
      type: "string",
      describe: "with --workspace new:NAME: its disk size, 80G, 80 or 1T (required)",
    })
    .option("workspace-storage", {
      type: "string",
      describe: "with --workspace new:NAME: its Proxmox storage (default: config workspace_storage)",
    })
    .option("branch", {
      type: "string",
      describe:
        "git branch the agent works on, in the workspace of the branch session branch-<slug> (created with an 80G workspace when missing): the first job creates the branch from --ref, later ones continue it; the runner commits what the agent left and pushes the branch when origin accepts it. Not with --workspace",
    });
}

/** `--workspace new:NAME` with its size and storage, or undefined for an existing workspace (or none). */
function newWorkspace(argv: RunArgs): { name: string; size_gb: number; storage?: string } | undefined {
  if (argv.branch !== undefined && argv.workspace !== undefined) {
    throw new AgentlabError("USAGE", "--branch and --workspace do not go together", {
      hint: "a --branch job runs in the workspace of its branch session (branch-<slug>); drop --workspace, or drop --branch",
    });
  }
  const create = argv.workspace?.startsWith("new:") ? argv.workspace.slice(4) : undefined;
  if (create === undefined) {
    for (const flag of ["workspace-size", "workspace-storage"] as const) {
      if (argv[flag] !== undefined) {
        throw new AgentlabError("USAGE", `--${flag} goes with --workspace new:NAME`, {
          hint: "to use an existing workspace, give only --workspace <name>",
        });
      }
    }
    return undefined;
  }
  if (create === "") throw new AgentlabError("USAGE", "--workspace new:NAME needs a name after new:");
  if (argv["workspace-size"] === undefined) {
    throw new AgentlabError("USAGE", "--workspace new:NAME needs --workspace-size (e.g. 80G)");
  }
  return {
    name: create,
    size_gb: sizeOption("--workspace-size", argv["workspace-size"]),
    ...(argv["workspace-storage"] !== undefined ? { storage: argv["workspace-storage"] } : {}),
  };
}

/** The job.run / job.validate params of the command line. */
function requestParams(argv: RunArgs) {
  const ttl = ttlOption(argv.ttl);
  return {
    repo_url: argv.repo,
    task: argv.task,
    profile: argv.profile,
    ...(argv.ref !== undefined ? { ref: argv.ref } : {}),
    ...(argv.mode !== undefined ? { mode: argv.mode } : {}),
    ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
    ...(argv.keepalive !== undefined ? { keepalive: argv.keepalive } : {}),
    ...(argv.workspace !== undefined ? { workspace: argv.workspace } : {}),
    ...(argv.branch !== undefined ? { branch: argv.branch } : {}),
  };
}

/**
 * job run with --workspace new:NAME: the request is checked without its workspace first, so a job that
 * would be refused creates nothing; then the workspace is created (with progress) and the job run on it.
 */
async function runWithNewWorkspace(
  ctx: CommandContext,
  argv: RunArgs,
  create: { name: string; size_gb: number; storage?: string },
) {
  const { workspace: _new, ...withoutWorkspace } = requestParams(argv);
  await ctx.call(jobValidate, withoutWorkspace);
  const ws = await ctx.call(workspaceCreate, create);
  if (!ctx.args.json) ctx.out.stderr(`workspace ${ws.name} (${ws.id}, ${ws.size_gb}G) created\n`);
  try {
    return await ctx.call(jobRun, { ...withoutWorkspace, workspace: ws.id });
  } catch (error) {
    if (error instanceof AgentlabError) {
      throw new AgentlabError(error.code, `${error.message} (workspace ${ws.name} was created and stays)`, {
        hint: `run the job on it with --workspace ${ws.name}, or remove it: agentlab workspace destroy ${ws.name}`,
        details: error.details,
      });
    }
    throw error;
  }
}

const runCommand: CommandModule<GlobalArgs, Args<RunArgs>> = {
  command: "run",
  describe: "Run an agent on a repository in a new sandbox",
  builder: (yargs) =>
    requestOptions(yargs)
      .option("wait", {
        type: "boolean",
        default: false,
        describe:
          "follow the job until it ends, printing its events (stderr) and the agent's output (stdout); exit 0 only if it COMPLETED",
      })
      .option("wait-timeout", {
        type: "string",
        describe: `with --wait: stop following after this long (default ${DEFAULT_WAIT})`,
      })
      .example(
        "agentlab job run --repo https://github.com/acme/app.git --task 'fix the failing test' --profile yolo-ephemeral --wait",
        "run a job and follow it to the end",
      )
      .example(
        "agentlab job run --repo https://github.com/acme/app.git --task 'add the login page' --profile yolo-workspace --branch feature/login --wait",
        "work on branch feature/login in the workspace of session branch-feature-login; run it again to continue the branch",
      )
      .epilogue(
        "The sandbox's runner clones the repository and runs, in order of preference: the command in " +
          "AGENTLAB_AGENT_COMMAND (/etc/agentlab/agent-runner.env in the template), the repository's " +
          "executable .agentlab/run.sh, or agentlab-agent. The task is on its standard input and in " +
          "AGENTLAB_TASK. See docs/jobs.md.",
      ) as Argv<Args<RunArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv["wait-timeout"] !== undefined && !argv.wait) {
        throw new AgentlabError("USAGE", "--wait-timeout goes with --wait", { hint: "add --wait" });
      }
      const create = newWorkspace(argv);
      const job = create
        ? await runWithNewWorkspace(ctx, argv, create)
        : await ctx.call(jobRun, requestParams(argv));
      if (!argv.wait) {
        return {
          data: job,
          text: `job ${job.id} queued; follow it with agentlab job show ${job.id} --wait\n`,
        };
      }
      if (!argv.json) ctx.out.stderr(`job ${job.id} queued\n`);
      return waitFor(ctx, job.id, argv["wait-timeout"]);
    }),
};

interface ShowArgs {
  id: string;
  events?: number;
  wait?: boolean;
  "wait-timeout"?: string;
}

const showCommand: CommandModule<GlobalArgs, Args<ShowArgs>> = {
  command: "show <id>",
  describe: "Show a job: status, sandbox, the runner's last report and recent events",
  builder: (yargs) =>
    (
      yargs.positional("id", { type: "string", demandOption: true, describe: "job id (job_...)" }) as Argv<
        Args<{ id: string }>
      >
    )
      .option("events", { type: "number", describe: "how many recent events (default 50, 0 none)" })
      .option("wait", {
        type: "boolean",
        default: false,
        describe: "follow the job until it ends; exit 0 only if it COMPLETED",
      })
      .option("wait-timeout", {
        type: "string",
        describe: `with --wait: stop following after this long (default ${DEFAULT_WAIT})`,
      }) as Argv<Args<ShowArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.wait) return waitFor(ctx, argv.id, argv["wait-timeout"]);
      if (
        argv.events !== undefined &&
        (!Number.isInteger(argv.events) || argv.events < 0 || argv.events > 1000)
      ) {
        throw new AgentlabError(
          "USAGE",
          `--events must be a whole number from 0 to 1000, got ${argv.events}`,
        );
      }
      const job = await ctx.call(jobShow, {
        id: argv.id,
        ...(argv.events !== undefined ? { events_tail: argv.events } : {}),
      });
      return { data: job, text: jobText(job) };
    }),
};

const listCommand: CommandModule<GlobalArgs, Args<{ status?: string; limit?: number }>> = {
  command: "list",
  aliases: ["ls"],
  describe: "List jobs, newest first",
  builder: (yargs) =>
    yargs
      .option("status", { type: "string", choices: JOB_STATUSES, describe: "only jobs in this status" })
      .option("limit", { type: "number", describe: "at most this many (default 100)" }) as Argv<
      Args<{ status?: string; limit?: number }>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (
        argv.limit !== undefined &&
        (!Number.isInteger(argv.limit) || argv.limit < 1 || argv.limit > 10000)
      ) {
        throw new AgentlabError("USAGE", `--limit must be a whole number from 1 to 10000, got ${argv.limit}`);
      }
      const result = await ctx.call(jobList, {
        ...(argv.status !== undefined ? { status: argv.status as Job["status"] } : {}),
        ...(argv.limit !== undefined ? { limit: argv.limit } : {}),
      });
      return { data: result, text: jobTable(result.jobs) };
    }),
};

const validateCommand: CommandModule<GlobalArgs, Args<RunArgs>> = {
  command: "validate",
  describe: "Check a job request as job run would, without running it (nothing is recorded or created)",
  builder: (yargs) =>
    requestOptions(yargs)
      .example(
        "agentlab job validate --repo https://github.com/acme/app.git --task 'fix the failing test' --profile yolo-ephemeral",
        "exit 0 when job run would accept it",
      )
      .example(
        "agentlab job validate --repo https://github.com/acme/app.git --task 'next step' --profile yolo-workspace --branch feature/login",
        "check a branch job: the branch name, its session's profile and that no job of the branch is running",
      ) as Argv<Args<RunArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const create = newWorkspace(argv);
      const { workspace: _ws, ...withoutWorkspace } = requestParams(argv);
      // A workspace to be created is not checked here (workspace create refuses a taken name).
      const checked = await ctx.call(jobValidate, create ? withoutWorkspace : requestParams(argv));
      return {
        data: checked,
        text: `valid: job run would queue it\n${fields([
          ["profile", checked.profile],
          ["ref", checked.ref],
          ["mode", checked.mode],
          ["time limit", checked.ttl_minutes !== undefined ? `${checked.ttl_minutes} min` : "none"],
          ["keepalive", checked.keepalive ? "yes" : "no"],
          ...(checked.workspace_id !== undefined
            ? ([["workspace", checked.workspace_id]] as Array<[string, string]>)
            : []),
          ...(checked.branch !== undefined && checked.session !== undefined
            ? ([
                [
                  "branch",
                  `${checked.branch}, in session ${checked.session.name} (${checked.session.exists ? "exists" : "job run creates it, with a new 80G workspace of that name"})`,
                ],
              ] as Array<[string, string]>)
            : []),
        ])}`,
      };
    }),
};

const cancelCommand: CommandModule<GlobalArgs, Args<{ id: string }>> = {
  command: "cancel <id>",
  describe: "Cancel a queued or running job: the agent is stopped and the job ends FAILED (reason cancelled)",
  builder: (yargs) =>
    yargs.positional("id", { type: "string", demandOption: true, describe: "job id (job_...)" }) as Argv<
      Args<{ id: string }>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const job = await ctx.call(jobCancel, { id: argv.id });
      const sandbox =
        job.sandbox_vmid === undefined
          ? "no sandbox was reserved yet"
          : job.keepalive
            ? `sandbox ${job.sandbox_vmid} is kept (keepalive); destroy it with agentlab sandbox destroy ${job.sandbox_vmid}`
            : `sandbox ${job.sandbox_vmid} is being destroyed`;
      return {
        data: job,
        text: `job ${job.id} cancelled: ${job.status} (${job.failure_reason}); ${sandbox}\n`,
      };
    }),
};

export const jobCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "job <command>",
  describe: "Unattended agent runs: a repository and a task in a sandbox of their own",
  builder: (yargs) =>
    yargs
      .command(runCommand)
      .command(validateCommand)
      .command(showCommand)
      .command(listCommand)
      .command(logsCommand)
      .command(cancelCommand)
      .command(artifactsCommand)
      .command(doctorCommand("job"))
      .demandCommand(1, "name a job command"),
  handler: () => {},
};
