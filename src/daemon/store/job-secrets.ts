/**
 * The job_secrets table (migration 9; 7 was never used: 8 had shipped first): the credentials `job run` split off a repository URL. The jobs
 * row and everything shown from it keep the URL without them; the runner receives them in its job fetch,
 * and they are deleted once the job has ended. Built over an open Store like the token tables.
 */

import type Database from "better-sqlite3";
import type { Store } from "./db.js";
import { translateSqliteError } from "./errors.js";

export interface RepoCredentials {
  /** Decoded (not percent-encoded); for a token-only URL (https://TOKEN@host) the token. */
  username: string;
  /** Empty for a token-only URL. */
  password: string;
}

export interface JobSecretRepo {
  set(jobId: string, credentials: RepoCredentials): void;
  get(jobId: string): RepoCredentials | undefined;
  delete(jobId: string): boolean;
  /** Delete the credentials of every job that has ended. Returns how many. */
  deleteForEndedJobs(): number;
  /** How many deleteForEndedJobs would remove (maintenance's dry run). */
  countForEndedJobs(): number;
}

interface Row {
  repo_username: string;
  repo_password: string;
}

/** Statements are prepared on first use, so a service may hold one before the database is open. */
export function lazyJobSecretRepo(store: () => Store): JobSecretRepo {
  let repo: JobSecretRepo | undefined;
  const get = () => {
    repo ??= createJobSecretRepo(store());
    return repo;
  };
  return {
    set: (jobId, credentials) => get().set(jobId, credentials),
    get: (jobId) => get().get(jobId),
    delete: (jobId) => get().delete(jobId),
    deleteForEndedJobs: () => get().deleteForEndedJobs(),
    countForEndedJobs: () => get().countForEndedJobs(),
  };
}

export function createJobSecretRepo(store: Store): JobSecretRepo {
  const db: Database.Database = store.db;
  const setStmt = db.prepare<[string, string, string]>(
    "INSERT OR REPLACE INTO job_secrets (job_id, repo_username, repo_password) VALUES (?, ?, ?)",
  );
  const getStmt = db.prepare<[string], Row>(
    "SELECT repo_username, repo_password FROM job_secrets WHERE job_id = ?",
  );
  const deleteStmt = db.prepare<[string]>("DELETE FROM job_secrets WHERE job_id = ?");
  const ENDED = "job_id IN (SELECT id FROM jobs WHERE status NOT IN ('QUEUED', 'RUNNING'))";
  const deleteEndedStmt = db.prepare(`DELETE FROM job_secrets WHERE ${ENDED}`);
  const countEndedStmt = db.prepare<[], { n: number }>(
    `SELECT count(*) AS n FROM job_secrets WHERE ${ENDED}`,
  );
  const run = <T>(fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw translateSqliteError(err, store.path) ?? err;
    }
  };
  return {
    set(jobId, credentials) {
      run(() => setStmt.run(jobId, credentials.username, credentials.password));
    },
    get(jobId) {
      const row = run(() => getStmt.get(jobId));
      return row === undefined ? undefined : { username: row.repo_username, password: row.repo_password };
    },
    delete(jobId) {
      return run(() => deleteStmt.run(jobId)).changes > 0;
    },
    deleteForEndedJobs() {
      return run(() => deleteEndedStmt.run()).changes;
    },
    countForEndedJobs() {
      return run(() => countEndedStmt.get()?.n ?? 0);
    },
  };
}

/** The exact values to redact for these credentials: the password, and a lone token (no password). */
export function secretValues(credentials: RepoCredentials | undefined): string[] {
  if (credentials === undefined) return [];
  return credentials.password !== "" ? [credentials.password] : [credentials.username];
}
