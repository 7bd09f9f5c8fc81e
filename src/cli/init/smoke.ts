/**
 * `agentlab init --smoke-test`: one tiny job end to end, then the network check, then everything
 * removed again. Each step prints `[smoke] <step>: ok|FAIL <detail>` as it ends; the first failure skips
 * the steps after it, but the cleanup (repo server, firewall rule, temporary directory) and the destroy
 * of the job's sandbox always run, also after Ctrl-C.
 *
 * Steps: daemon (status, guest listener, Proxmox) -> profile -> repo (temporary repository, server, and
 * a firewall hole for it) -> job (job.run with keepalive, followed until terminal) -> cleanup (the repo
 * is no longer needed: the network check sees the production ruleset) -> network (smoke_test.sh inside
 * the sandbox) -> destroy.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import type { ParamsOf, ResultOf } from "../../protocol/call-types.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { JobDetail } from "../../protocol/job.js";
import type { Wire } from "../../protocol/method.js";
import {
  daemonStatus,
  jobRun,
  jobShow,
  profileList,
  sandboxDestroy,
  sandboxShow,
} from "../../protocol/wire.js";
import { call } from "../client.js";
import { type CommandContext, DEFAULT_PROGRESS_TIMEOUT_MS, DEFAULT_TIMEOUT_MS } from "../context.js";
import { followJob } from "../job-follow.js";
import { asAgentlabError, type Output, progressPrinter } from "../render.js";
import { closeHole, type Hole, HoleError, type NftCall, openHole } from "./firewall-hole.js";
import { execRunner, type HostEnv, type HostSettings, scriptPath } from "./host-checks.js";
import {
  createSmokeRepo,
  findRepoServer,
  importRepo,
  NO_REPO_SERVER_HINT,
  type RepoServer,
  type SmokeRepo,
  startRepoServer,
} from "./repo-server.js";
import {
  chooseProfile,
  type GuestEndpoint,
  guestEndpoint,
  judgeJob,
  type SmokeOptions,
  smokeRunScript,
  smokeTask,
  smokeTestArgs,
  smokeTtlMinutes,
} from "./smoke-plan.js";
import { runCommand } from "./spawn.js";

export const SMOKE_STEPS = ["daemon", "profile", "repo", "job", "cleanup", "network", "destroy"] as const;
export type SmokeStepName = (typeof SMOKE_STEPS)[number];

export interface SmokeStep {
  step: SmokeStepName;
  status: "ok" | "fail" | "skipped";
  detail: string;
  hint?: string;
  /** Lines the step showed: smoke_test.sh's PASS/FAIL lines, the tail of a failed job's output. */
  output?: string[];
}

export interface SmokeReport {
  ok: boolean;
  /** Ctrl-C (or SIGTERM) stopped it; the cleanup still ran. */
  interrupted: boolean;
  profile?: string;
  repo_url?: string;
  job_id?: string;
  vmid?: number;
  steps: SmokeStep[];
}

export interface SmokeEnv {
  socket: string;
  /** --timeout for each daemon call; unset: the CLI's defaults. */
  rpcTimeoutMs?: number | undefined;
  json: boolean;
  out: Output;
  host: HostEnv;
  settings: HostSettings;
  options: SmokeOptions;
  /** nft for the firewall hole; default: the host's nft. */
  nft?: NftCall;
  /** How often job.show is polled. */
  pollMs?: number;
}

class Interrupted extends Error {
  constructor() {
    super("interrupted (Ctrl-C)");
  }
}

/** A step's failure with what to do about it. */
class StepFailure extends Error {
  constructor(
    message: string,
    readonly hint: string,
  ) {
    super(message);
  }
}

/** Text for people: on stdout, or on stderr under --json so stdout stays one JSON document. */
class StepLog {
  readonly steps: SmokeStep[] = [];
  constructor(private readonly say: (line: string) => void) {}

  start(step: SmokeStepName, what: string): void {
    this.say(`[smoke] ${step}: ${what} ...`);
  }

  ok(step: SmokeStepName, detail: string, output?: string[]): void {
    this.steps.push({ step, status: "ok", detail, ...(output ? { output } : {}) });
    this.say(`[smoke] ${step}: ok ${detail}`);
  }

  fail(step: SmokeStepName, detail: string, hint?: string, output?: string[]): void {
    this.steps.push({
      step,
      status: "fail",
      detail,
      ...(hint ? { hint } : {}),
      ...(output?.length ? { output } : {}),
    });
    this.say(`[smoke] ${step}: FAIL ${detail}`);
    // smoke_test.sh's lines were shown as they came; other output (a job's last lines) is shown here.
    if (output && step !== "network") for (const text of output) this.say(`    ${text}`);
    if (hint) this.say(`        hint: ${hint}`);
  }

  skip(step: SmokeStepName, why: string): void {
    this.steps.push({ step, status: "skipped", detail: why });
    this.say(`[smoke] ${step}: skipped (${why})`);
  }

  get failed(): SmokeStep | undefined {
    return this.steps.find((s) => s.status === "fail");
  }
}

/** What the smoke test has created so far, for the cleanup and for the "left behind" message. */
interface Made {
  tmp?: string;
  server?: RepoServer;
  hole?: Hole;
  jobId?: string;
  vmid?: number;
}

export async function runSmokeTest(env: SmokeEnv): Promise<SmokeReport> {
  const say = (line: string) => (env.json ? env.out.stderr : env.out.stdout)(`${line}\n`);
  const progress = (line: string) => env.out.stderr(`• ${line}\n`);
  const log = new StepLog(say);
  const made: Made = {};
  const report: Omit<SmokeReport, "ok" | "steps"> = { interrupted: false };
  const abort = new AbortController();
  const nft: NftCall = env.nft ?? ((args) => execRunner(env.host.nft, args));

  let interrupts = 0;
  const onSignal = () => {
    interrupts++;
    if (interrupts === 1) {
      report.interrupted = true;
      env.out.stderr(
        "[smoke] interrupted: cleaning up (press Ctrl-C again to leave at once, leaving things behind)\n",
      );
      abort.abort();
      return;
    }
    env.out.stderr(leftovers(made));
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const rpc = <M extends Wire>(
    method: M,
    params: Omit<ParamsOf<M>, "progress_token">,
    options: { signal?: AbortSignal; progress?: boolean } = {},
  ): Promise<ResultOf<M>> => {
    const onProgress = options.progress ? progressPrinter(env.out, env.json) : undefined;
    return call(
      {
        socketPath: env.socket,
        timeoutMs: env.rpcTimeoutMs ?? (method.progress ? DEFAULT_PROGRESS_TIMEOUT_MS : DEFAULT_TIMEOUT_MS),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(onProgress ? { onProgress } : {}),
      },
      method,
      params,
    );
  };
  const checkAbort = () => {
    if (abort.signal.aborted) throw new Interrupted();
  };

  /** Run one step: its failures (thrown) become its FAIL line; returns whether to go on. */
  const step = async (name: SmokeStepName, what: string, work: () => Promise<boolean>): Promise<boolean> => {
    log.start(name, what);
    try {
      checkAbort();
      return await work();
    } catch (error) {
      if (error instanceof Interrupted || abort.signal.aborted) {
        log.fail(name, "interrupted (Ctrl-C)");
      } else if (error instanceof HoleError || error instanceof StepFailure) {
        log.fail(name, error.message, error.hint);
      } else {
        const failure = asAgentlabError(error);
        const generic = failure.code === "INTERNAL" && !(error instanceof AgentlabError);
        log.fail(name, failure.message, generic ? undefined : failure.hint || undefined);
      }
      return false;
    }
  };

  let endpoint: GuestEndpoint | undefined;
  let profile = "";
  let repo: SmokeRepo | undefined;
  let marker = "";
  /** What agentlabd (root) saw of the nftables ruleset; undefined from older daemons. */
  let rulesetLoaded: boolean | undefined;

  const plan: Array<[SmokeStepName, string, () => Promise<boolean>]> = [
    [
      "daemon",
      "asking agentlabd for its status",
      async () => {
        const status = await rpc(daemonStatus, {}, { signal: abort.signal });
        if (!status.backend.reachable) {
          log.fail(
            "daemon",
            `agentlabd answers but Proxmox does not: ${status.backend.error?.message ?? "unreachable"}`,
            status.backend.error?.hint ?? "agentlab status",
          );
          return false;
        }
        const found = guestEndpoint(status.guest_listener, env.settings.bridge_address);
        if ("error" in found) {
          log.fail("daemon", found.error, found.hint);
          return false;
        }
        endpoint = found;
        rulesetLoaded = status.isolation?.ruleset.loaded;
        log.ok(
          "daemon",
          `agentlabd ${status.version}, Proxmox ${status.backend.version ?? "reachable"}, guest listener ${status.guest_listener.url}`,
        );
        return true;
      },
    ],
    [
      "profile",
      "choosing the profile",
      async () => {
        const { profiles } = await rpc(profileList, {}, { signal: abort.signal });
        const choice = chooseProfile(
          profiles.map((p) => p.name),
          env.options.profile,
        );
        if ("error" in choice) {
          log.fail("profile", choice.error, choice.hint);
          return false;
        }
        profile = choice.profile;
        report.profile = profile;
        const summary = profiles.find((p) => p.name === profile)!;
        log.ok("profile", `${profile} (template ${summary.template_vmid}, network ${summary.network_mode})`);
        return true;
      },
    ],
    [
      "repo",
      "serving a temporary git repository",
      async () => {
        const kind = await findRepoServer();
        if (!kind) {
          log.fail(
            "repo",
            "cannot run a temporary repo server: neither git daemon nor python3 is available",
            NO_REPO_SERVER_HINT,
          );
          return false;
        }
        made.tmp = mkdtempSync(path.join(tmpdir(), "agentlab-smoke-"));
        marker = `agentlab-smoke-${randomBytes(8).toString("hex")}`;
        try {
          repo = env.options.repo
            ? await importRepo(made.tmp, env.options.repo)
            : await createSmokeRepo(made.tmp, smokeRunScript(marker));
        } catch (error) {
          throw new StepFailure(
            (error as Error).message,
            env.options.repo
              ? "--smoke-repo takes a local git repository with a branch checked out"
              : "git --version",
          );
        }
        checkAbort();
        try {
          made.server = await startRepoServer(kind, repo, endpoint!.host);
        } catch (error) {
          throw new StepFailure(
            (error as Error).message,
            `the server binds the guest listener's address ${endpoint!.host}, which must be an address of this host (ip -4 addr show ${env.settings.bridge})`,
          );
        }
        report.repo_url = made.server.url;
        checkAbort();
        made.hole = await openHole(
          nft,
          {
            bridge: env.settings.bridge,
            subnet: env.settings.agent_subnet,
            host: endpoint!.host,
            port: made.server.port,
            pid: process.pid,
          },
          rulesetLoaded,
        );
        const hole = made.hole;
        const firewall = hole.opened
          ? `firewall: temporary rule (handle ${hole.handle}) accepts TCP ${made.server.port} from ${env.settings.agent_subnet} on ${env.settings.bridge}`
          : `firewall: ${hole.reason}`;
        log.ok(
          "repo",
          `${made.server.url} (${kind === "git-daemon" ? "git daemon" : "python3 http.server"}, branch ${repo.ref} at ${repo.head.slice(0, 12)}); ${firewall}`,
        );
        return true;
      },
    ],
    [
      "job",
      "running the repository's .agentlab/run.sh as a job",
      async () => {
        const queued = await rpc(
          jobRun,
          {
            repo_url: made.server!.url,
            task: smokeTask(env.options.repo ? undefined : marker),
            profile,
            ref: repo!.ref,
            keepalive: true,
            ttl_minutes: smokeTtlMinutes(env.options.timeoutSeconds),
          },
          { signal: abort.signal },
        );
        made.jobId = queued.id;
        report.job_id = queued.id;
        progress(`job ${queued.id}: ${queued.status}`);
        const job = await follow(queued.id);
        if (job.sandbox_vmid !== undefined) {
          made.vmid = job.sandbox_vmid;
          report.vmid = job.sandbox_vmid;
        }
        const verdict = judgeJob(job, { commit: repo!.head, marker: env.options.repo ? undefined : marker });
        if (!verdict.ok) {
          log.fail("job", verdict.detail, verdict.hint, verdict.tail);
          return false;
        }
        log.ok("job", verdict.detail);
        return true;
      },
    ],
  ];

  /** job.show until the job is terminal or the smoke timeout passes, its events shown as progress. */
  const follow = async (id: string): Promise<JobDetail> => {
    // followJob calls through a CommandContext; this one has no Ctrl-C handling of its own (ours is above).
    const ctx: CommandContext = {
      args: { socket: env.socket, json: env.json },
      out: env.out,
      call: (method, params) => rpc(method, params, { signal: abort.signal }),
    };
    try {
      return await followJob(ctx, id, {
        timeoutMs: env.options.timeoutSeconds * 1000,
        intervalMs: env.pollMs ?? 1000,
        signal: abort.signal,
        onEvent: (event) => progress(`${event.kind}${event.msg ? `: ${event.msg}` : ""}`),
      });
    } catch (error) {
      if (abort.signal.aborted) throw new Interrupted();
      if (error instanceof AgentlabError && error.code === "DAEMON_TIMEOUT" && error.details?.job_id === id) {
        throw new StepFailure(
          `job ${id} is still ${String(error.details.status)} after ${env.options.timeoutSeconds} s (--smoke-timeout)`,
          `agentlab job show ${id}; journalctl -u agentlabd -f; a slow first boot may need a longer --smoke-timeout`,
        );
      }
      throw error;
    }
  };

  const cleanupStep = async () => {
    log.start(
      "cleanup",
      "stopping the repo server, closing the firewall hole, removing the temporary repository",
    );
    const done: string[] = [];
    const problems: string[] = [];
    const hints: string[] = [];
    if (made.server) {
      await made.server.stop();
      done.push(`repo server stopped (pid ${made.server.pid})`);
      made.server = undefined;
    }
    if (made.hole) {
      try {
        const closed = await closeHole(nft, made.hole);
        if (closed === "removed" && made.hole.opened)
          done.push(`firewall rule handle ${made.hole.handle} deleted`);
        if (closed === "gone") done.push("firewall rule already gone (ruleset reloaded)");
        made.hole = undefined;
      } catch (error) {
        problems.push((error as Error).message);
        if (error instanceof HoleError) hints.push(error.hint);
      }
    }
    if (made.tmp) {
      try {
        rmSync(made.tmp, { recursive: true, force: true });
        done.push(`${made.tmp} removed`);
        made.tmp = undefined;
      } catch (error) {
        problems.push(`cannot remove ${made.tmp}: ${(error as Error).message}`);
        hints.push(`rm -rf ${made.tmp}`);
      }
    }
    if (problems.length > 0) log.fail("cleanup", problems.join("; "), hints.join("; ") || undefined);
    else log.ok("cleanup", done.length > 0 ? done.join("; ") : "nothing to clean up");
  };

  const networkStep = async () => {
    if (made.vmid === undefined) return;
    const vmid = made.vmid;
    await step("network", `checking the network from inside sandbox ${vmid}`, async () => {
      const sandbox = await rpc(sandboxShow, { vmid }, { signal: abort.signal });
      if (!sandbox.ip) {
        log.fail(
          "network",
          `sandbox ${vmid} has no IP address (state ${sandbox.state})`,
          `agentlab sandbox show ${vmid}`,
        );
        return false;
      }
      const args = smokeTestArgs({
        ip: sandbox.ip,
        vmid,
        gateway: endpoint!,
        bridge: env.settings.bridge,
        exec: env.options.exec,
        netArgs: env.options.netArgs,
      });
      const script = path.join(env.host.scriptsDir, "smoke_test.sh");
      const shown = [
        scriptPath(env.host, "smoke_test.sh"),
        ...args.map((a) => (/\s/.test(a) ? `"${a}"` : a)),
      ].join(" ");
      say(`  ${shown}`);
      const lines: string[] = [];
      const result = await runCommand("sh", [script, ...args], {
        onLine: (line) => {
          lines.push(line);
          say(`  ${line}`);
        },
        signal: abort.signal,
      });
      checkAbort();
      if (result.spawnError) throw new Error(`cannot run sh ${script}: ${result.spawnError}`);
      const summary = [...lines].reverse().find((l) => /^(PASS|FAIL) \(/.test(l));
      if (result.code === 0) {
        log.ok("network", summary ?? "smoke_test.sh passed", lines);
        return true;
      }
      const failedChecks = lines
        .filter((l) => l.startsWith("FAIL ") && !/^FAIL \(/.test(l))
        .map((l) => l.split(/\s+/)[1]);
      log.fail(
        "network",
        `${summary ?? `smoke_test.sh exited ${result.code}`}${failedChecks.length ? `: ${failedChecks.join(", ")}` : ""}`,
        `run it again: ${shown}; docs/networking.md explains each check`,
        lines,
      );
      return false;
    });
  };

  const destroyStep = async () => {
    if (made.vmid === undefined && made.jobId !== undefined) {
      // Interrupted before the job named its sandbox: ask once more.
      try {
        const latest = await rpc(jobShow, { id: made.jobId, events_tail: 0 });
        if (latest.sandbox_vmid !== undefined) {
          made.vmid = latest.sandbox_vmid;
          report.vmid = latest.sandbox_vmid;
        }
      } catch {
        // reported below as nothing to destroy
      }
    }
    if (made.vmid === undefined) {
      log.skip(
        "destroy",
        made.jobId
          ? `job ${made.jobId} has no sandbox yet; check agentlab job show ${made.jobId}`
          : "no sandbox was created",
      );
      return;
    }
    const vmid = made.vmid;
    log.start("destroy", `destroying sandbox ${vmid}`);
    try {
      await rpc(sandboxDestroy, { vmid }, { progress: true });
      const after = await rpc(sandboxShow, { vmid });
      if (after.state === "DESTROYED") {
        log.ok("destroy", `sandbox ${vmid} DESTROYED`);
        made.vmid = undefined;
      } else {
        log.fail(
          "destroy",
          `sandbox ${vmid} is ${after.state} after destroy`,
          `agentlab sandbox destroy --force ${vmid}`,
        );
      }
    } catch (error) {
      const failure = asAgentlabError(error);
      log.fail("destroy", failure.message, `agentlab sandbox destroy --force ${vmid}`);
    }
  };

  try {
    let going = true;
    for (const [name, what, work] of plan) {
      if (!going) {
        log.skip(name, `${log.failed?.step ?? "an earlier step"} failed`);
        continue;
      }
      going = await step(name, what, work);
    }
    await cleanupStep();
    if (going && !abort.signal.aborted) await networkStep();
    else log.skip("network", `${log.failed?.step ?? "an earlier step"} failed`);
    await destroyStep();
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  const failed = log.failed;
  const ok = failed === undefined && !report.interrupted;
  say(
    ok
      ? "[smoke] PASS"
      : `[smoke] FAIL${failed ? ` at ${failed.step}` : ""}${report.interrupted ? " (interrupted)" : ""}`,
  );
  return { ok, ...report, steps: log.steps };
}

/** After a second Ctrl-C: what is left and the command that removes each. */
function leftovers(made: Made): string {
  const lines: string[] = [];
  if (made.vmid !== undefined) lines.push(`sandbox ${made.vmid}: agentlab sandbox destroy ${made.vmid}`);
  else if (made.jobId)
    lines.push(`job ${made.jobId}: agentlab job show ${made.jobId}, then destroy its sandbox`);
  if (made.server?.pid) lines.push(`repo server: kill ${made.server.pid}`);
  if (made.hole?.opened)
    lines.push(`firewall rule: nft delete rule inet agentlab input handle ${made.hole.handle}`);
  if (made.tmp) lines.push(`temporary repository: rm -rf ${made.tmp}`);
  if (lines.length === 0) return "[smoke] stopped; nothing was left behind\n";
  return `[smoke] stopped before cleaning up; left behind:\n${lines.map((l) => `  ${l}\n`).join("")}`;
}
