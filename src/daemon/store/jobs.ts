/**
 * The jobs table. Only what the daemon needs so far: insert and read (for the job service to come and
 * for tests), and finalising the jobs of a sandbox that maintenance moved out of service, so that no
 * job stays RUNNING after its sandbox is gone (upstream left them RUNNING forever, spec 4.2).
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { fromDbTime, toDbTime } from "./time.js";

/** Spec 4.2. Migration 1 spells the same list out in its CHECK constraint. */
export const JOB_STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT"] as const;
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
  failure_reason: string | null;
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
  failure_reason: string | null;
  created_at: string;
  updated_at: string;
}

const COLUMNS =
  "id, repo_url, ref, profile, status, task, mode, ttl_minutes, keepalive, sandbox_vmid, workspace_id, " +
  "session_id, failure_reason, created_at, updated_at";

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
    failure_reason: row.failure_reason,
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
      "@ttl_minutes, @keepalive, @sandbox_vmid, @workspace_id, @session_id, NULL, @created_at, @created_at) " +
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
  };
}
