/**
 * The job runner's side of the guest listener (docs/jobs.md): the fetch of its job with the single-use
 * job token from bootstrap.json, and its status reports with the per-job report token the fetch handed
 * out. Answers are the HTTP status and body the runner sees; bad input never throws and changes nothing.
 *
 * Upstream accepted reports from any address in the agent subnet without a token (its backlog T39);
 * here only the runner that fetched the job can report for it.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { JOB_STATUSES } from "../../../protocol/job.js";
import type { DaemonContext } from "../../context.js";
import {
  type GuestAnswer,
  REFUSED,
  RUNNER_ARTIFACT_PATH,
  RUNNER_LOG_PATH,
  RUNNER_REPORT_PATH,
} from "../../guest/listener.js";
import { redacted, redactString } from "../../redact.js";
import { type JobSecretRepo, lazyJobSecretRepo, secretValues } from "../../store/job-secrets.js";
import type { Job, JobStatus } from "../../store/jobs.js";

export const RUNNER_REFUSED = {
  jobNotFound: "job not found",
  missingBearer: "missing bearer token",
  badReportToken: "invalid report token",
  mismatch: "job sandbox mismatch",
  finalized: "job already finalized",
  badStatus: "invalid job status",
} as const;

/** Longest message a report may carry (the runner sends a line; output goes in result.output_tail). */
export const MAX_REPORT_MESSAGE = 8192;

function bad(error: string, status = 400): GuestAnswer {
  return { status, body: { error } };
}

/** What a parser gives: the value, or the answer that refuses the request. */
export type Parsed<T> = { ok: true; value: T } | { ok: false; answer: GuestAnswer };

const refuse = (error: string): { ok: false; answer: GuestAnswer } => ({ ok: false, answer: bad(error) });

/** A JSON object body, or the 400 that says what is wrong with it. */
function objectBody(text: string, shape: string): Parsed<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return refuse(`request body is not valid JSON (${(error as Error).message}); expected ${shape}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return refuse(`request body must be a JSON object: ${shape}`);
  }
  return { ok: true, value: value as Record<string, unknown> };
}

function positiveVmid(value: unknown): number | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : undefined;
}

export function hashReportToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

const FETCH_SHAPE = '{"token": "<job_token from /etc/agentlab/bootstrap.json>", "vmid": <number>}';
const REPORT_SHAPE =
  '{"job_id": "<id>", "vmid": <number>, "status": "RUNNING|COMPLETED|FAILED|TIMEOUT", "message": "<text>", "result": <any>}';

/** A parsed runner report. */
export interface RunnerReport {
  job_id: string;
  vmid: number;
  status: JobStatus;
  message?: string;
  result?: unknown;
}

export function parseRunnerReport(text: string): Parsed<RunnerReport> {
  const body = objectBody(text, REPORT_SHAPE);
  if (!body.ok) return body;
  const { job_id, vmid, status, message, result } = body.value;
  if (typeof job_id !== "string" || job_id === "") return refuse("job_id is required");
  if (positiveVmid(vmid) === undefined) return refuse("vmid must be positive");
  const upper = typeof status === "string" ? status.toUpperCase() : "";
  if (!(JOB_STATUSES as readonly string[]).includes(upper) || upper === "QUEUED") {
    return refuse(RUNNER_REFUSED.badStatus);
  }
  if (message !== undefined && message !== null && typeof message !== "string") {
    return refuse("message must be a string");
  }
  const report: RunnerReport = { job_id, vmid: vmid as number, status: upper as JobStatus };
  if (typeof message === "string") report.message = message.slice(0, MAX_REPORT_MESSAGE);
  if (result !== undefined) report.result = result;
  return { ok: true, value: report };
}

/** What the job service does when a report moves a job (events, the sandbox's end). */
export interface ReportEffects {
  /** The job left QUEUED because its runner reported it running. */
  started(job: Job): void;
  /** The runner reported the end; the sandbox follows in the background. */
  ended(job: Job): void;
}

export class RunnerApi {
  private readonly secrets: JobSecretRepo;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly effects: ReportEffects,
    secrets?: JobSecretRepo,
  ) {
    this.secrets = secrets ?? lazyJobSecretRepo(() => ctx.store);
  }

  fetch(text: string): GuestAnswer {
    const body = objectBody(text, FETCH_SHAPE);
    if (!body.ok) return body.answer;
    const { token, vmid } = body.value;
    if (typeof token !== "string" || token === "") return bad("token is required");
    const id = positiveVmid(vmid);
    if (id === undefined) return bad("vmid must be positive");
    const { ctx } = this;
    const readiness = ctx.guestReady;
    // The token first: without it nobody learns whether a sandbox has a job or whether it ended.
    if (!readiness?.jobTokenValid(id, token)) {
      ctx.log.info({ vmid: id }, `job fetch refused: ${REFUSED.token}`);
      return bad(REFUSED.token, 403);
    }
    const job = ctx.store.jobs.latestForSandbox(id);
    if (!job) return bad(RUNNER_REFUSED.jobNotFound, 404);
    // An ended job (failed while its VM was still up) must not start an agent; the token stays unspent.
    if (job.status !== "QUEUED" && job.status !== "RUNNING") return bad(RUNNER_REFUSED.finalized, 409);
    const reportToken = randomBytes(32).toString("hex");
    // One transaction: a write that fails after the token was used would leave the runner with a
    // spent token and nothing to show for it.
    const fetched = ctx.store.tx(() => {
      if (!readiness.consumeJobToken(id, token)) return false;
      ctx.store.jobs.setReportTokenHash(job.id, hashReportToken(reportToken));
      ctx.store.events.append({
        kind: "job.fetched",
        sandbox_vmid: id,
        job_id: job.id,
        msg: "the runner fetched the job",
      });
      return true;
    });
    if (!fetched) {
      ctx.log.info({ vmid: id, job_id: job.id }, `job fetch refused: ${REFUSED.token}`);
      return bad(REFUSED.token, 403);
    }
    // The credentials split off the repository URL at `job run`: handed to the runner here only, which
    // gives them to git through a 0600 credential file, never on a command line or in the clone's config.
    const credentials = this.secrets.get(job.id);
    // A --branch job's branch is its session's label (job run makes them agree).
    const branch = job.session_id !== null ? ctx.store.sessions.get(job.session_id)?.branch : undefined;
    return {
      status: 200,
      body: {
        job: {
          id: job.id,
          repo_url: job.repo_url,
          ref: job.ref,
          task: job.task ?? "",
          mode: job.mode ?? "dangerous",
          profile: job.profile,
          keepalive: job.keepalive,
          ttl_minutes: job.ttl_minutes,
          ...(credentials ? { repo_credentials: credentials } : {}),
          ...(branch ? { branch } : {}),
        },
        report: { url: `${readiness.controllerUrl()}${RUNNER_REPORT_PATH}`, token: reportToken },
        // Both take the report token too.
        log: { url: `${readiness.controllerUrl()}${RUNNER_LOG_PATH}` },
        artifact: { url: `${readiness.controllerUrl()}${RUNNER_ARTIFACT_PATH}` },
      },
    };
  }

  /**
   * The job whose report token `bearer` is (reports, log chunks and artifact uploads all carry it), or
   * the answer that refuses the request.
   */
  authenticate(
    jobId: string | null,
    bearer: string | undefined,
    what: string,
  ): { job: Job } | { answer: GuestAnswer } {
    if (bearer === undefined) return { answer: bad(RUNNER_REFUSED.missingBearer, 401) };
    if (jobId === null || jobId === "") return { answer: bad("job_id is required") };
    const job = this.ctx.store.jobs.get(jobId);
    if (!job) return { answer: bad(RUNNER_REFUSED.jobNotFound, 404) };
    if (job.report_token_hash === null || !sameHash(job.report_token_hash, hashReportToken(bearer))) {
      this.ctx.log.info({ job_id: job.id }, `runner ${what} refused: ${RUNNER_REFUSED.badReportToken}`);
      return { answer: bad(RUNNER_REFUSED.badReportToken, 403) };
    }
    return { job };
  }

  /**
   * The same, for requests only a job that is still running may make (log chunks, uploads): an ended
   * job, cancelled ones included, answers 409, which tells the runner to stop.
   */
  authenticateActive(
    jobId: string | null,
    bearer: string | undefined,
    what: string,
  ): { job: Job } | { answer: GuestAnswer } {
    const authed = this.authenticate(jobId, bearer, what);
    if ("answer" in authed) return authed;
    if (authed.job.status !== "QUEUED" && authed.job.status !== "RUNNING") {
      return { answer: bad(RUNNER_REFUSED.finalized, 409) };
    }
    return authed;
  }

  report(text: string, bearer: string | undefined): GuestAnswer {
    if (bearer === undefined) return bad(RUNNER_REFUSED.missingBearer, 401);
    const checked = parseRunnerReport(text);
    if (!checked.ok) return checked.answer;
    const parsed = checked.value;
    const { ctx } = this;
    const authed = this.authenticate(parsed.job_id, bearer, "report");
    if ("answer" in authed) return authed.answer;
    const { job } = authed;
    if (job.sandbox_vmid !== parsed.vmid) return bad(RUNNER_REFUSED.mismatch, 409);
    const reportedAt = ctx.clock.now();
    // Agent output is stored redacted, by the redactor the doctor bundles use, with this job's own
    // credentials as exact values: nothing read back from the row (job show, events, bundles) has them.
    const values = secretValues(this.secrets.get(job.id));
    if (parsed.message !== undefined) parsed.message = redactString(parsed.message, values);
    if (parsed.result !== undefined) parsed.result = redacted(parsed.result, values);
    const resultJson = JSON.stringify({
      status: parsed.status,
      ...(parsed.message !== undefined ? { message: parsed.message } : {}),
      ...(parsed.result !== undefined ? { result: parsed.result } : {}),
      reported_at: reportedAt.toISOString(),
    });
    const updated = ctx.store.tx(() => {
      const moved = ctx.store.jobs.recordReport(job.id, parsed.status, resultJson);
      if (moved) {
        ctx.store.events.append({
          kind: "job.report",
          sandbox_vmid: parsed.vmid,
          job_id: job.id,
          msg: `${parsed.status}${parsed.message ? `: ${parsed.message}` : ""}`,
          payload: {
            status: parsed.status,
            ...(parsed.message !== undefined ? { message: parsed.message } : {}),
          },
        });
      }
      return moved;
    });
    if (!updated) return bad(RUNNER_REFUSED.finalized, 409);
    if (updated.status !== "RUNNING") this.secrets.delete(job.id);
    if (job.status === "QUEUED" && updated.status === "RUNNING") this.effects.started(updated);
    if (updated.status !== "RUNNING") this.effects.ended(updated);
    const sandbox = ctx.store.sandboxes.get(parsed.vmid);
    return { status: 200, body: { job_status: updated.status, sandbox_status: sandbox?.state ?? "UNKNOWN" } };
  }
}
