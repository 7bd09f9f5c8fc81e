/**
 * Jobs (docs/jobs.md): `job run` records the job QUEUED and returns; in the background a sandbox is
 * provisioned for it (its cloud-init starts the guest runner with a job token), the job becomes RUNNING
 * once the sandbox runs or the runner says so, and the runner's final report ends it. The sandbox then
 * follows (COMPLETED, FAILED or TIMEOUT) and is destroyed unless the job keeps it alive.
 *
 * A daemon restart loses nothing that matters: provisioning in flight is rolled back by start-up
 * recovery (which fails the job with the reason), a job that never got a sandbox is failed here, a
 * RUNNING job keeps running in its guest and reports with its token as before, and a job that ended
 * while its sandbox was not yet cleaned up has that finished.
 */
import { randomBytes } from "node:crypto";
import type { z } from "zod";
import type { Profile } from "../../../config/profiles.js";
import { AgentlabError } from "../../../protocol/errors.js";
import {
  ARTIFACT_READ_MAX,
  type JobDetail,
  type Job as JobJson,
  type JobRequest,
  type jobArtifactRead,
  type jobArtifacts,
  type jobList,
  type jobLogs,
  type jobValidate,
} from "../../../protocol/job.js";
import type { ProgressValue } from "../../../protocol/progress.js";
import type { DaemonContext } from "../../context.js";
import type { GuestJobEndpoints } from "../../guest/listener.js";
import { secondsBetween } from "../../metrics/observer.js";
import { redacted, redactString } from "../../redact.js";
import { transitionSandbox } from "../../state/sandbox.js";
import { type JobSecretRepo, lazyJobSecretRepo, secretValues } from "../../store/job-secrets.js";
import type { Job, JobStatus } from "../../store/jobs.js";
import { sessionLeaseOwner } from "../../store/leases.js";
import type { Session } from "../../store/sessions.js";
import { describe } from "../maintenance-steps.js";
import { backgroundOperation, type Operation } from "../operation.js";
import { templateNodeRefusal } from "../placement.js";
import { resolveProfile } from "../sandbox/provision.js";
import type { SandboxService } from "../sandboxes.js";
import type { SessionService } from "../sessions/service.js";
import { ArtifactStore, artifactJson } from "./artifacts.js";
import { jobJson } from "./json.js";
import { LogFollowers, type LogUpdate, logText, MAX_LOG_READ } from "./logs.js";
import { type SplitRepoUrl, splitRepoCredentials } from "./repo-url.js";
import { RunnerApi } from "./runner-api.js";

type RunParams = z.output<typeof JobRequest>;
type ValidateResult = z.output<typeof jobValidate.result>;
type LogsParams = z.output<typeof jobLogs.params>;
type LogsResult = z.output<typeof jobLogs.result>;
type ArtifactReadParams = z.output<typeof jobArtifactRead.params>;
/** What job.logs --follow needs from its call: the client going away, and the notifications. */
export interface FollowCall {
  signal: AbortSignal;
  progress(value: ProgressValue): void;
}
/**
 * A job that ends while someone follows its log is announced to them; this re-check is only a net for
 * an end reached elsewhere (maintenance finalising the jobs of a sandbox it removed).
 */
const FOLLOW_RECHECK_MS = 10_000;
/** The failure_reason of a cancelled job (docs/jobs.md: FAILED, not a status of its own). */
export const CANCELLED_REASON = "cancelled";
type ListParams = z.output<typeof jobList.params>;

const DEFAULT_EVENTS_TAIL = 50;
const TERMINAL: readonly JobStatus[] = ["COMPLETED", "FAILED", "TIMEOUT"];

export class JobService {
  readonly #inFlight = new Set<Promise<void>>();
  readonly #stop = new AbortController();
  readonly #runner: RunnerApi;
  readonly #artifacts: ArtifactStore;
  readonly #followers = new LogFollowers();
  readonly #secrets: JobSecretRepo;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    private readonly sessions: SessionService,
  ) {
    this.#secrets = lazyJobSecretRepo(() => ctx.store);
    this.#runner = new RunnerApi(
      ctx,
      {
        started: (job) => this.#event(job, "job.running", "the runner reported the job running"),
        ended: (job) => {
          this.#event(job, `job.${job.status.toLowerCase()}`, `the runner reported ${job.status}`);
          this.#ended(job);
        },
      },
      this.#secrets,
    );
    this.#artifacts = new ArtifactStore(ctx);
  }

  /** The runner's endpoints on the guest listener. */
  guestEndpoints(): GuestJobEndpoints {
    return {
      fetch: (body) => this.#runner.fetch(body),
      report: (body, bearer) => this.#runner.report(body, bearer),
      log: (query, bearer, body) => this.#logChunk(query, bearer, body),
      upload: async (query, bearer, declared, body) => {
        const authed = this.#runner.authenticateActive(query.get("job_id"), bearer, "artifact upload");
        if ("answer" in authed) return authed.answer;
        return this.#artifacts.upload(authed.job, query.get("name"), declared, body);
      },
    };
  }

  /** A chunk of the agent's output: stored at its offset, then handed to the job's followers. */
  #logChunk(query: URLSearchParams, bearer: string | undefined, body: Buffer) {
    const authed = this.#runner.authenticateActive(query.get("job_id"), bearer, "log chunk");
    if ("answer" in authed) return authed.answer;
    const offset = Number(query.get("offset") ?? "");
    if (!Number.isSafeInteger(offset) || offset < 0 || query.get("offset") === "") {
      return {
        status: 400,
        body: { error: "offset must be a whole number >= 0 (?offset=<bytes sent before>)" },
      };
    }
    const { job } = authed;
    const stored = body.length > 0 && this.ctx.store.jobLogs.append(job.id, offset, body);
    if (stored) this.#followers.publish(job.id, { kind: "chunk", chunk: { pos: offset, data: body } });
    return { status: 200, body: { stored, job_status: job.status } };
  }

  /**
   * Queue a job and start provisioning its sandbox in the background. With a branch, its branch session
   * is found or created first (with its workspace: that is what `op` reports), and the job is the
   * session's: its sandbox becomes the session's sandbox.
   */
  async run(params: RunParams, op: Operation): Promise<JobJson> {
    const checked = await this.#check(params);
    // Credentials in the URL never reach the jobs row: they wait in job_secrets for the runner's fetch.
    const repo = splitRepoCredentials(params.repo_url);
    const session =
      params.branch !== undefined
        ? await this.sessions.branchForJob(params.branch, checked.profile, op)
        : undefined;
    // Checked again in the transaction that records the job: one job per branch session at a time.
    const guard = session ? () => this.#refuseBusy(session) : undefined;
    const job = this.#insertQueued(repo, guard, {
      repo_url: repo.url,
      ref: checked.ref,
      profile: checked.profile,
      status: "QUEUED",
      task: params.task,
      mode: checked.mode,
      ttl_minutes: checked.ttl_minutes ?? null,
      keepalive: checked.keepalive,
      workspace_id: session?.workspace_id ?? checked.workspace_id ?? null,
      session_id: session?.id ?? null,
    });
    this.#event(
      job,
      "job.queued",
      `queued: ${job.repo_url}@${job.ref} with profile ${job.profile}${session ? ` on branch ${params.branch} (session ${session.name})` : ""}`,
    );
    this.#track(this.#provision(job));
    return this.#json(job);
  }

  /** Everything run checks, nothing recorded: what the job would be. */
  async validate(params: RunParams): Promise<ValidateResult> {
    return { valid: true, ...(await this.#check(params)) };
  }

  /**
   * A branch session runs one job at a time: its workspace is leased to that job's sandbox until the
   * sandbox goes. Refused naming the job, so the caller knows what to wait for.
   */
  #refuseBusy(session: Session): void {
    const active = this.ctx.store.jobs.activeForSession(session.id);
    if (!active) return;
    throw new AgentlabError(
      "CONFLICT",
      `branch session ${session.name} is busy: job ${active.id} is ${active.status} in its workspace${active.sandbox_vmid !== null ? ` (sandbox ${active.sandbox_vmid})` : ""}`,
      {
        hint: `wait for it: agentlab job show ${active.id} --wait, or stop it: agentlab job cancel ${active.id}`,
        details: { session: session.name, job_id: active.id, status: active.status },
      },
    );
  }

  /**
   * The checks of a job request (params are already schema-checked): the profile, the guest listener the
   * runner needs, the workspace, the template's node. Refusals that can be known now come back to the
   * caller, not as a FAILED job later.
   */
  async #check(params: RunParams): Promise<Omit<ValidateResult, "valid">> {
    const { ctx } = this;
    const profile = resolveProfile(ctx, params.profile);
    const listener = ctx.guestReady?.listener();
    if (!ctx.guestReady?.phoneHomeAvailable) {
      throw new AgentlabError(
        "PROVISIONING_FAILED",
        `jobs need the guest listener, which is not listening${listener?.error ? ` (${listener.error})` : ""}: the runner in the sandbox fetches its job from it`,
        {
          hint:
            listener?.hint ??
            "agentlab status shows the guest listener; fix bootstrap_listen (usually: create vmbr1 with sudo agentlab init --apply) and restart agentlabd",
        },
      );
    }
    // Refusals that can be known now come back to the caller, not as a FAILED job later. Two jobs
    // racing for one workspace both pass here; the second fails at its reservation (lease held).
    let workspaceId: string | null = null;
    if (params.workspace !== undefined && params.branch !== undefined) {
      throw new AgentlabError(
        "INVALID_PARAMS",
        "branch and workspace do not go together: a --branch job runs in the workspace of its branch session",
        {
          hint: "drop --workspace (the branch session branch-<slug> has its own workspace), or drop --branch",
          details: { branch: params.branch, workspace: params.workspace },
        },
      );
    }
    if (params.workspace !== undefined) {
      const checked = this.sandboxes.workspaceRefusal(params.workspace, profile.name);
      if (checked.error) throw checked.error;
      workspaceId = checked.workspace.id;
    }
    let session: ValidateResult["session"];
    if (params.branch !== undefined) {
      const found = this.sessions.branchForJobCheck(params.branch, profile.name);
      if (found.session) {
        this.#refuseBusy(found.session);
        // The session's own lease is no refusal: it is the lease the job's sandbox takes.
        const checked = this.sandboxes.workspaceRefusal(
          found.session.workspace_id,
          profile.name,
          sessionLeaseOwner(found.session.id),
        );
        if (checked.error) throw checked.error;
        workspaceId = checked.workspace.id;
      }
      session = {
        name: found.name,
        exists: found.session !== undefined,
        ...(found.session ? { id: found.session.id } : {}),
      };
    }
    await this.#refuseTemplateElsewhere(profile);
    const ttl = params.ttl_minutes ?? profile.behavior.ttl_minutes_default;
    return {
      profile: profile.name,
      ref: params.ref ?? "main",
      mode: params.mode ?? "dangerous",
      ...(ttl !== undefined && ttl > 0 ? { ttl_minutes: ttl } : {}),
      keepalive: params.keepalive ?? profile.behavior.keepalive_default,
      ...(workspaceId !== null ? { workspace_id: workspaceId } : {}),
      ...(params.branch !== undefined ? { branch: params.branch } : {}),
      ...(session ? { session } : {}),
    };
  }

  /**
   * Cancel a job that has not ended: FAILED with reason "cancelled" (the job table has no CANCELLED
   * status; docs/jobs.md). The runner learns it from the 409 its next log chunk gets and stops the
   * agent; the sandbox takes the job's end like any other and is destroyed unless keepalive.
   */
  cancel(id: string): JobJson {
    const job = this.#get(id);
    const ended = this.ctx.store.jobs.end(job.id, "FAILED", CANCELLED_REASON);
    if (!ended) {
      const now = this.#get(id);
      throw new AgentlabError(
        "JOB_NOT_ACTIVE",
        `job ${id} already ended ${now.status}; there is nothing to cancel`,
        {
          details: { job_id: id, status: now.status },
        },
      );
    }
    this.#event(ended, "job.cancelled", "cancelled: the runner stops the agent");
    this.#ended(ended);
    return this.#json(ended);
  }

  /** The runner's output; with follow, streamed as notifications until the job ends. */
  async logs(params: LogsParams, call: FollowCall): Promise<LogsResult> {
    const job = this.#get(params.id);
    const { store } = this.ctx;
    let offset = params.offset ?? 0;
    const answer = (text: string): LogsResult => {
      const now = this.#get(job.id);
      return {
        job_id: job.id,
        status: now.status,
        text,
        next_offset: offset,
        end: store.jobLogs.end(job.id),
      };
    };
    const readMore = (): string => {
      const chunks = store.jobLogs.read(job.id, offset, MAX_LOG_READ);
      const last = chunks.at(-1);
      if (last) offset = last.pos + last.data.length;
      return chunks.length > 0 ? logText(chunks, this.#secretValues(job.id)) : "";
    };
    if (!params.follow) return answer(readMore());

    // Listen before reading what is stored, so nothing that arrives in between is missed; every wake-up
    // reads the store from the offset, so chunks go out once and in order.
    let wake: (() => void) | undefined;
    let ended = false;
    const stop = this.#followers.follow(job.id, (update: LogUpdate) => {
      if (update.kind === "end") ended = true;
      wake?.();
    });
    const onAbort = () => wake?.();
    call.signal.addEventListener("abort", onAbort);
    try {
      for (;;) {
        for (let text = readMore(); text !== ""; text = readMore())
          call.progress({ step: "log", message: text });
        if (ended || call.signal.aborted || TERMINAL.includes(this.#get(job.id).status)) {
          // A last read: chunks stored just before the end.
          for (let text = readMore(); text !== ""; text = readMore())
            call.progress({ step: "log", message: text });
          return answer("");
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, FOLLOW_RECHECK_MS);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
    } finally {
      stop();
      call.signal.removeEventListener("abort", onAbort);
    }
  }

  artifacts(id: string): z.output<typeof jobArtifacts.result> {
    const job = this.#get(id);
    return { job_id: job.id, artifacts: this.#artifacts.list(job.id).map(artifactJson) };
  }

  async artifactRead(params: ArtifactReadParams): Promise<z.output<typeof jobArtifactRead.result>> {
    const job = this.#get(params.id);
    const { artifact, data } = await this.#artifacts.read(
      job.id,
      params.name,
      params.offset,
      params.length ?? ARTIFACT_READ_MAX,
    );
    return {
      artifact: artifactJson(artifact),
      offset: params.offset,
      data_base64: data.toString("base64"),
      eof: params.offset + data.length >= artifact.size_bytes,
    };
  }

  /** A job ended (runner report, cancel): followers hear it, the sandbox follows. */
  #ended(job: Job): void {
    this.#countEnd(job);
    this.#secrets.delete(job.id);
    this.#followers.publish(job.id, { kind: "end", job });
    this.#track(this.#finishSandbox(job));
  }

  /**
   * A template on another node than agentlabd's is refused now rather than as a FAILED job later. When
   * the cluster cannot be listed, provisioning reports that on the job as before.
   */
  async #refuseTemplateElsewhere(profile: Profile): Promise<void> {
    let template: { vmid: number; node: string } | undefined;
    try {
      template = (await this.ctx.backend.listVms()).find((vm) => vm.vmid === profile.template_vmid);
    } catch {
      return;
    }
    if (!template) return;
    const elsewhere = await templateNodeRefusal(this.ctx, template, profile.name);
    if (elsewhere) throw elsewhere;
  }

  show(id: string, eventsTail: number = DEFAULT_EVENTS_TAIL): JobDetail {
    const job = this.#get(id);
    const values = this.#secretValues(job.id);
    const detail: JobDetail = this.#json(job);
    if (eventsTail > 0) {
      detail.events = this.ctx.store.events.listForJob(job.id, { tail: eventsTail }).map((e) =>
        redacted(
          {
            id: e.id,
            ts: e.ts.toISOString(),
            kind: e.kind,
            ...(e.msg !== null ? { msg: e.msg } : {}),
            ...(e.payload !== undefined && e.payload !== null ? { payload: e.payload } : {}),
          },
          values,
        ),
      );
    }
    return detail;
  }

  list(params: ListParams): { jobs: JobJson[] } {
    const rows = this.ctx.store.jobs.list({
      ...(params.status !== undefined ? { status: params.status } : {}),
      limit: params.limit ?? 100,
    });
    return { jobs: rows.map((job) => this.#json(job)) };
  }

  /**
   * Start-up, before clients connect and after sandbox recovery: fail the jobs whose provisioning died
   * with the previous process before a sandbox was reserved, and mark RUNNING the ones whose sandbox got
   * to run. Then (in the background) finish the sandboxes of jobs that ended while the daemon was away
   * from them.
   */
  recover(): void {
    const { ctx } = this;
    for (const job of ctx.store.jobs.listByStatus("QUEUED")) {
      const sandbox = job.sandbox_vmid === null ? undefined : ctx.store.sandboxes.get(job.sandbox_vmid);
      if (sandbox === undefined) {
        const ended = ctx.store.jobs.end(
          job.id,
          "FAILED",
          "agentlabd restarted before a sandbox was reserved for the job; run it again",
        );
        if (ended) {
          this.#countEnd(ended);
          this.#event(ended, "job.failed", ended.failure_reason ?? "failed");
        }
      } else if (sandbox.state === "RUNNING") {
        const running = ctx.store.jobs.markRunning(job.id);
        if (running) this.#event(running, "job.running", `sandbox ${sandbox.vmid} is running`);
      }
    }
    // Jobs that ended while the daemon was away (reaper, recovery) need their credentials no more.
    this.#secrets.deleteForEndedJobs();
    const live = [
      ...ctx.store.sandboxes.list({ state: "READY" }),
      ...ctx.store.sandboxes.list({ state: "RUNNING" }),
    ];
    for (const sandbox of live) {
      const job = ctx.store.jobs.latestForSandbox(sandbox.vmid);
      if (job && TERMINAL.includes(job.status)) this.#track(this.#finishSandbox(job));
    }
  }

  /** Daemon shutdown: provisioning in flight is cancelled (and rolled back), then awaited. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#stop.abort(new Error("agentlabd is stopping"));
    const all = Promise.allSettled([...this.#inFlight]).then(() => true);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    try {
      return await Promise.race([all, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The wire form, with the branch of a --branch job (its session's label). */
  #json(job: Job): JobJson {
    const branch =
      job.session_id !== null
        ? (this.ctx.store.sessions.get(job.session_id)?.branch ?? undefined)
        : undefined;
    return jobJson(job, this.#secretValues(job.id), branch);
  }

  /** The exact secret values of a job still running (its repository credentials), for redaction. */
  #secretValues(jobId: string): string[] {
    return secretValues(this.#secrets.get(jobId));
  }

  #get(id: string): Job {
    const job = this.ctx.store.jobs.get(id);
    if (!job) {
      throw new AgentlabError("JOB_NOT_FOUND", "job not found", { details: { job_id: id } });
    }
    return job;
  }

  /** Insert with a fresh `job_<16 hex>` id; a clash (astronomically unlikely) draws again. */
  #insertQueued(
    repo: SplitRepoUrl,
    guard: (() => void) | undefined,
    fields: Omit<Parameters<DaemonContext["store"]["jobs"]["insert"]>[0], "id">,
  ): Job {
    for (let attempt = 1; ; attempt++) {
      try {
        return this.ctx.store.tx(() => {
          guard?.();
          const job = this.ctx.store.jobs.insert({ ...fields, id: `job_${randomBytes(8).toString("hex")}` });
          if (repo.credentials) this.#secrets.set(job.id, repo.credentials);
          return job;
        });
      } catch (error) {
        if (attempt >= 5 || !(error instanceof AgentlabError) || error.code !== "CONFLICT") throw error;
      }
    }
  }

  #event(job: Job, kind: string, msg: string, payload?: Record<string, unknown>): void {
    this.ctx.store.events.append({
      kind,
      job_id: job.id,
      sandbox_vmid: job.sandbox_vmid,
      msg,
      ...(payload ? { payload } : {}),
    });
  }

  #track(work: Promise<void>): void {
    const tracked = work.catch((error) => this.ctx.log.error({ err: error }, "job background work failed"));
    this.#inFlight.add(tracked);
    void tracked.finally(() => this.#inFlight.delete(tracked));
  }

  #operation(job: Job): Operation {
    return backgroundOperation(this.ctx.log.child({ job_id: job.id }), this.#stop.signal);
  }

  /** Provision the job's sandbox; the job is RUNNING once it runs, FAILED with the reason if it cannot. */
  async #provision(job: Job): Promise<void> {
    const { ctx } = this;
    const name = `job-${job.id.slice(4, 12)}`;
    try {
      const sandbox =
        job.session_id !== null
          ? // The session's sandbox: its workspace under the session's lease, current_vmid = the sandbox.
            await this.sessions.startJobSandbox(
              job.session_id,
              {
                name,
                keepalive: job.keepalive,
                ...(job.ttl_minutes !== null ? { ttl_minutes: job.ttl_minutes } : {}),
                jobId: job.id,
              },
              this.#operation(job),
            )
          : await this.sandboxes.create(
              {
                profile: job.profile,
                name,
                keepalive: job.keepalive,
                ...(job.ttl_minutes !== null ? { ttl_minutes: job.ttl_minutes } : {}),
                // Attached before the first boot; its lease is the sandbox's, released when it is destroyed.
                ...(job.workspace_id !== null ? { workspace: job.workspace_id } : {}),
                jobId: job.id,
              },
              this.#operation(job),
            );
      const running = ctx.store.jobs.markRunning(job.id);
      if (running) this.#event(running, "job.running", `sandbox ${sandbox.vmid} is running`);
      else {
        // Cancelled while its sandbox was being made: the sandbox follows the job's end now.
        const now = ctx.store.jobs.get(job.id);
        if (now && TERMINAL.includes(now.status)) this.#track(this.#finishSandbox(now));
      }
    } catch (error) {
      const reason = redactString(
        `could not provision the job's sandbox: ${describe(error)}`,
        this.#secretValues(job.id),
      );
      const ended = ctx.store.jobs.end(job.id, "FAILED", reason);
      if (ended) {
        this.#countEnd(ended);
        this.#event(ended, "job.failed", reason);
        this.#followers.publish(ended.id, { kind: "end", job: ended });
      }
      this.#secrets.deleteForEndedJobs();
      ctx.log.warn({ job_id: job.id, err: error }, reason);
    }
  }

  /** Metrics: a job ended, by how (a cancel is FAILED with its own reason) and how long since it was queued. */
  #countEnd(job: Job): void {
    const outcome = job.failure_reason === CANCELLED_REASON ? "cancelled" : job.status;
    this.ctx.metrics?.jobEnded(outcome, secondsBetween(job.created_at, job.updated_at));
  }

  /**
   * After the runner's final report: the sandbox takes the job's end state (once provisioning let go of
   * it: same lock), and unless keepalive is set it is destroyed.
   */
  async #finishSandbox(job: Job): Promise<void> {
    const { ctx } = this;
    const vmid = job.sandbox_vmid;
    if (vmid === null) return;
    const to = job.status as "COMPLETED" | "FAILED" | "TIMEOUT";
    await this.sandboxes.withVmLock(vmid, async () => {
      const row = ctx.store.sandboxes.get(vmid);
      if (!row || (row.state !== "READY" && row.state !== "RUNNING")) return;
      if (row.state === "READY") transitionSandbox(ctx.store, vmid, "RUNNING");
      transitionSandbox(
        ctx.store,
        vmid,
        to,
        to === "COMPLETED" ? {} : { reason: `job ${job.id} ended ${to}` },
      );
    });
    if (job.keepalive) return;
    try {
      await this.sandboxes.destroy(vmid, false, this.#operation(job));
    } catch (error) {
      ctx.log.warn(
        { job_id: job.id, vmid, err: error },
        `could not destroy the sandbox of finished job ${job.id}; the lease reaper will: ${describe(error)}`,
      );
    }
  }
}
