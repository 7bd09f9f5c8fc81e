/**
 * The artifacts table (migration 1, upstream's shape): one row per file a job's runner uploaded; the
 * bytes are at artifact_dir/<job_id>/<path>, written by the job service. `name` and `path` both hold
 * the relative path the runner gave (upstream kept the base name in `name`; a base name is not unique
 * within a job). An upload of the same path replaces the row, as the file on disk is replaced.
 */

import type Database from "better-sqlite3";
import { fromDbTime, toDbTime } from "./time.js";

export interface JobArtifact {
  job_id: string;
  /** The relative path the runner gave, already checked (no `..`, not absolute). */
  name: string;
  size_bytes: number;
  sha256: string;
  created_at: Date;
}

export interface JobArtifactRepo {
  /** Record (or replace) an uploaded file. */
  put(artifact: Omit<JobArtifact, "created_at"> & { vmid: number | null }): JobArtifact;
  /** A job's artifacts, by name. */
  list(jobId: string): JobArtifact[];
  get(jobId: string, name: string): JobArtifact | undefined;
  /** Count and total size of a job's artifacts, for the upload limits. */
  totals(jobId: string): { count: number; bytes: number };
  /** Forget a job's artifacts (their files were deleted by `maintenance run`); returns how many rows. */
  deleteForJob(jobId: string): number;
}

interface Row {
  job_id: string;
  name: string;
  size_bytes: number;
  sha256: string;
  created_at: string;
}

const fromRow = (row: Row): JobArtifact => ({ ...row, created_at: fromDbTime(row.created_at) });
const COLUMNS = "job_id, path AS name, size_bytes, sha256, created_at";

export function createJobArtifactRepo(db: Database.Database, now: () => Date): JobArtifactRepo {
  const deleteStmt = db.prepare<[string, string]>("DELETE FROM artifacts WHERE job_id = ? AND path = ?");
  const insertStmt = db.prepare<Record<string, unknown>, Row>(
    `INSERT INTO artifacts (job_id, vmid, name, path, size_bytes, sha256, mime, created_at)
     VALUES (@job_id, @vmid, @name, @name, @size_bytes, @sha256, NULL, @created_at) RETURNING ${COLUMNS}`,
  );
  const listStmt = db.prepare<[string], Row>(
    `SELECT ${COLUMNS} FROM artifacts WHERE job_id = ? ORDER BY path`,
  );
  const getStmt = db.prepare<[string, string], Row>(
    `SELECT ${COLUMNS} FROM artifacts WHERE job_id = ? AND path = ? ORDER BY id DESC LIMIT 1`,
  );
  const totalsStmt = db.prepare<[string], { count: number; bytes: number }>(
    "SELECT count(*) AS count, coalesce(sum(size_bytes), 0) AS bytes FROM artifacts WHERE job_id = ?",
  );
  const deleteJobStmt = db.prepare<[string]>("DELETE FROM artifacts WHERE job_id = ?");
  const put = db.transaction((artifact: Omit<JobArtifact, "created_at"> & { vmid: number | null }) => {
    deleteStmt.run(artifact.job_id, artifact.name);
    return insertStmt.get({ ...artifact, created_at: toDbTime(now()) })!;
  });
  return {
    put(artifact) {
      return fromRow(put(artifact));
    },
    list(jobId) {
      return listStmt.all(jobId).map(fromRow);
    },
    get(jobId, name) {
      const row = getStmt.get(jobId, name);
      return row ? fromRow(row) : undefined;
    },
    totals(jobId) {
      return totalsStmt.get(jobId) ?? { count: 0, bytes: 0 };
    },
    deleteForJob(jobId) {
      return deleteJobStmt.run(jobId).changes;
    },
  };
}
