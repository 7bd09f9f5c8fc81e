/**
 * The jobs table: the job service's rows (queue, bind to a sandbox, runner reports, end), and finalising
 * the jobs of a sandbox that maintenance moved out of service, so that no job stays RUNNING after its
 * sandbox is gone (upstream left them RUNNING forever, spec 4.2). Status changes are compare-and-set on
 * "still active", so the runner and the daemon can never both end one job.
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { JOB_STATUSES } from "../../protocol/job.js";
import { fromDbTime, toDbTime } from "./time.js";

// Spec 4.2. Migration 1 spells the same list out in its CHECK constraint.
export { JOB_STATUSES };
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Statuses of a job that has not ended yet. */
export const ACTIVE_JOB_STATUSES: readonly JobStatus[] = ["QUEUED", "RUNNING"];

export interface Job {
  id: string;
  repo_url: string;
  ref: string;
  profile: string;
  status: JobStatus;
  task: string | null;
  mode: string | null;
  ttl_minutes: number | null;
  keepalive: boolean;
  sandbox_vmid: number | null;
  workspace_id: string | null;
  session_id: string | null;
  /** The runner's last report as JSON: {status, message, result, reported_at}. */
  result_json: string | null;
  failure_reason: string | null;
  /** SHA-256 hex of the runner's report token, once the runner fetched its job. */
  report_token_hash: string | null;
  created_at: Date;
  updated_at: Date;
}

export interface NewJob {
  id: string;
  repo_url: string;
  ref: string;
  profile: string;
  status: JobStatus;
  task?: string | null;
  mode?: string | null;
  ttl_minutes?: number | null;
  keepalive?: boolean;
  sandbox_vmid?: number | null;
  workspace_id?: string | null;
  session_id?: string | null;
  /** Defaults to the store clock; updated_at starts equal to it. */
  created_at?: Date;
}

export interface JobRepo {
  /** Insert a new job. A taken id → CONFLICT; an unknown sandbox → NOT_FOUND. */
  insert(job: NewJob): Job;
  get(id: string): Job | undefined;
  /** Jobs bound to a sandbox, oldest first. */
  listForSandbox(vmid: number): Job[];
  /**
   * End every QUEUED or RUNNING job bound to `vmid` with `status` and `reason`, in one statement (so a
   * job that reached a terminal status meanwhile is left alone). Returns the jobs it ended; none is fine.
   */
  finalizeForSandbox(vmid: number, status: "FAILED" | "TIMEOUT", reason: string): Job[];
  /** Newest first, optionally only one status; at most `limit`. */
  list(options?: { status?: JobStatus; limit?: number }): Job[];
  /** The job a guest of `vmid` runs: the newest bound to it (spec: "job for a VMID"). */
  latestForSandbox(vmid: number): Job | undefined;
  /** Jobs in `status`, oldest first (start-up sweeps). */
  listByStatus(status: JobStatus): Job[];
  /** The oldest QUEUED or RUNNING job of a session (job run --branch: one job per branch at a time). */
  activeForSession(sessionId: string): Job | undefined;
  /** Bind the job to its sandbox. */
  bindSandbox(id: string, vmid: number): Job;
  setReportTokenHash(id: string, hash: string): Job;
  /** QUEUED → RUNNING, only if still QUEUED. Undefined when it was not. */
  markRunning(id: string): Job | undefined;
  /**
   * Record a runner report (`status` and `result_json`), only while the job is QUEUED or RUNNING: one
   * statement, so a report racing the daemon's own end of the job cannot overwrite a terminal status.
   * Undefined when the job had already ended (nothing is written then).
   */
  recordReport(id: string, status: JobStatus, resultJson: string): Job | undefined;
  /** End a QUEUED or RUNNING job with `status` and `reason`. Undefined when it had already ended. */
  end(id: string, status: "FAILED" | "TIMEOUT", reason: string): Job | undefined;
}

interface JobDbRow {
  id: string;
  repo_url: string;
  ref: string;
  profile: string;
  status: string;
  task: string | null;
  mode: string | null;
  ttl_minutes: number | null;
  keepalive: number;
  sandbox_vmid: number | null;
  workspace_id: string | null;
  session_id: string | null;
  result_json: string | null;
  failure_reason: string | null;
  report_token_hash: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS =
  "id, repo_url, ref, profile, status, task, mode, ttl_minutes, keepalive, sandbox_vmid, workspace_id, " +
  "session_id, result_json, failure_reason, report_token_hash, created_at, updated_at";

function fromRow(row: JobDbRow): Job {
  if (!(JOB_STATUSES as readonly string[]).includes(row.status)) {
    throw new AgentlabError(
      "INTERNAL",
      `job ${row.id} has an unknown status "${row.status}" in the database`,
    );
  }
  return {
    id: row.id,
    repo_url: row.repo_url,
    ref: row.ref,
    profile: row.profile,
    status: row.status as JobStatus,
    task: row.task,
    mode: row.mode,
    ttl_minutes: row.ttl_minutes,
    keepalive: row.keepalive !== 0,
    sandbox_vmid: row.sandbox_vmid,
    workspace_id: row.workspace_id,
    session_id: row.session_id,
    result_json: row.result_json,
    failure_reason: row.failure_reason,
    report_token_hash: row.report_token_hash,
    created_at: fromDbTime(row.created_at),
    updated_at: fromDbTime(row.updated_at),
  };
}

function sqliteCode(err: unknown): string | undefined {
  const code = typeof err === "object" && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === "string" ? code : undefined;
}

export function createJobRepo(db: Database.Database, now: () => Date): JobRepo {
  const insertStmt = db.prepare<Record<string, unknown>, JobDbRow>(
    `INSERT INTO jobs (${COLUMNS}) VALUES (@id, @repo_url, @ref, @profile, @status, @task, @mode, ` +
      "@ttl_minutes, @keepalive, @sandbox_vmid, @workspace_id, @session_id, NULL, NULL, NULL, @created_at, " +
      "@created_at) " +
      `RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[string], JobDbRow>(`SELECT ${COLUMNS} FROM jobs WHERE id = ?`);
  const forSandboxStmt = db.prepare<[number], JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs WHERE sandbox_vmid = ? ORDER BY created_at, id`,
  );
  const finalizeStmt = db.prepare<
    { vmid: number; status: string; reason: string; updated_at: string },
    JobDbRow
  >(
    `UPDATE jobs SET status = @status, failure_reason = @reason, updated_at = @updated_at
     WHERE sandbox_vmid = @vmid AND status IN ('QUEUED', 'RUNNING')
     RETURNING ${COLUMNS}`,
  );
  const listStmt = db.prepare<{ limit: number }, JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT @limit`,
  );
  const listStatusStmt = db.prepare<{ status: string; limit: number }, JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs WHERE status = @status ORDER BY created_at DESC, id DESC LIMIT @limit`,
  );
  const byStatusStmt = db.prepare<[string], JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs WHERE status = ? ORDER BY created_at, id`,
  );
  const activeSessionStmt = db.prepare<[string], JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs WHERE session_id = ? AND status IN ('QUEUED', 'RUNNING')
     ORDER BY created_at, id LIMIT 1`,
  );
  const latestStmt = db.prepare<[number], JobDbRow>(
    `SELECT ${COLUMNS} FROM jobs WHERE sandbox_vmid = ? ORDER BY created_at DESC, id DESC LIMIT 1`,
  );
  const setStmt = (column: "sandbox_vmid" | "report_token_hash") =>
    db.prepare<{ id: string; value: unknown; updated_at: string }, JobDbRow>(
      `UPDATE jobs SET ${column} = @value, updated_at = @updated_at WHERE id = @id RETURNING ${COLUMNS}`,
    );
  const bindStmt = setStmt("sandbox_vmid");
  const reportHashStmt = setStmt("report_token_hash");
  const runningStmt = db.prepare<{ id: string; updated_at: string }, JobDbRow>(
    `UPDATE jobs SET status = 'RUNNING', updated_at = @updated_at WHERE id = @id AND status = 'QUEUED'
     RETURNING ${COLUMNS}`,
  );
  const reportStmt = db.prepare<
    { id: string; status: string; result_json: string; updated_at: string },
    JobDbRow
  >(
    `UPDATE jobs SET status = @status, result_json = @result_json, updated_at = @updated_at
     WHERE id = @id AND status IN ('QUEUED', 'RUNNING') RETURNING ${COLUMNS}`,
  );
  const endStmt = db.prepare<{ id: string; status: string; reason: string; updated_at: string }, JobDbRow>(
    `UPDATE jobs SET status = @status, failure_reason = @reason, updated_at = @updated_at
     WHERE id = @id AND status IN ('QUEUED', 'RUNNING') RETURNING ${COLUMNS}`,
  );
  const one = (row: JobDbRow | undefined, id: string): Job => {
    if (row === undefined)
      throw new AgentlabError("JOB_NOT_FOUND", "job not found", { details: { job_id: id } });
    return fromRow(row);
  };
  const maybe = (row: JobDbRow | undefined): Job | undefined =>
    row === undefined ? undefined : fromRow(row);
  const stamp = () => toDbTime(now());

  return {
    insert(job) {
      const params = {
        id: job.id,
        repo_url: job.repo_url,
        ref: job.ref,
        profile: job.profile,
        status: job.status,
        task: job.task ?? null,
        mode: job.mode ?? null,
        ttl_minutes: job.ttl_minutes ?? null,
        keepalive: job.keepalive ? 1 : 0,
        sandbox_vmid: job.sandbox_vmid ?? null,
        workspace_id: job.workspace_id ?? null,
        session_id: job.session_id ?? null,
        created_at: toDbTime(job.created_at ?? now()),
      };
      let row: JobDbRow | undefined;
      try {
        row = insertStmt.get(params);
      } catch (err) {
        const code = sqliteCode(err);
        if (code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
          throw new AgentlabError("CONFLICT", `job ${job.id} already exists`, {
            details: { job_id: job.id },
            cause: err,
          });
        }
        if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
          throw new AgentlabError("NOT_FOUND", `sandbox ${String(job.sandbox_vmid)} does not exist`, {
            details: { job_id: job.id, sandbox_vmid: job.sandbox_vmid ?? null },
            cause: err,
          });
        }
        throw err;
      }
      if (row === undefined) throw new AgentlabError("INTERNAL", `inserting job ${job.id} returned no row`);
      return fromRow(row);
    },

    get(id) {
      const row = getStmt.get(id);
      return row === undefined ? undefined : fromRow(row);
    },

    listForSandbox(vmid) {
      return forSandboxStmt.all(vmid).map(fromRow);
    },

    finalizeForSandbox(vmid, status, reason) {
      return finalizeStmt.all({ vmid, status, reason, updated_at: toDbTime(now()) }).map(fromRow);
    },

    list(options = {}) {
      const limit = options.limit ?? 100;
      const rows =
        options.status === undefined
          ? listStmt.all({ limit })
          : listStatusStmt.all({ status: options.status, limit });
      return rows.map(fromRow);
    },

    latestForSandbox(vmid) {
      return maybe(latestStmt.get(vmid));
    },

    listByStatus(status) {
      return byStatusStmt.all(status).map(fromRow);
    },

    activeForSession(sessionId) {
      return maybe(activeSessionStmt.get(sessionId));
    },

    bindSandbox(id, vmid) {
      try {
        return one(bindStmt.get({ id, value: vmid, updated_at: stamp() }), id);
      } catch (err) {
        if (sqliteCode(err) !== "SQLITE_CONSTRAINT_FOREIGNKEY") throw err;
        throw new AgentlabError("NOT_FOUND", `sandbox ${vmid} does not exist`, {
          details: { job_id: id, sandbox_vmid: vmid },
          cause: err,
        });
      }
    },

    setReportTokenHash(id, hash) {
      return one(reportHashStmt.get({ id, value: hash, updated_at: stamp() }), id);
    },

    markRunning(id) {
      return maybe(runningStmt.get({ id, updated_at: stamp() }));
    },

    recordReport(id, status, resultJson) {
      return maybe(reportStmt.get({ id, status, result_json: resultJson, updated_at: stamp() }));
    },

    end(id, status, reason) {
      return maybe(endStmt.get({ id, status, reason, updated_at: stamp() }));
    },
  };
}
