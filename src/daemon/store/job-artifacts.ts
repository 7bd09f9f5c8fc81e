/**
 * The job_artifacts table: one row per file a job's runner uploaded (the bytes are under
 * artifact_dir/<job>/<name>, written by the job service); an upload of the same name replaces the row.
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
  put(artifact: Omit<JobArtifact, "created_at">): JobArtifact;
  /** A job's artifacts, by name. */
  list(jobId: string): JobArtifact[];
  get(jobId: string, name: string): JobArtifact | undefined;
  /** Count and total size of a job's artifacts, for the upload limits. */
  totals(jobId: string): { count: number; bytes: number };
}

interface Row {
  job_id: string;
  name: string;
  size_bytes: number;
  sha256: string;
  created_at: string;
}

const fromRow = (row: Row): JobArtifact => ({ ...row, created_at: fromDbTime(row.created_at) });

export function createJobArtifactRepo(db: Database.Database, now: () => Date): JobArtifactRepo {
  const putStmt = db.prepare<Row, Row>(
    `INSERT INTO job_artifacts (job_id, name, size_bytes, sha256, created_at)
     VALUES (@job_id, @name, @size_bytes, @sha256, @created_at)
     ON CONFLICT (job_id, name) DO UPDATE SET size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
       created_at = excluded.created_at
     RETURNING job_id, name, size_bytes, sha256, created_at`,
  );
  const listStmt = db.prepare<[string], Row>(
    "SELECT job_id, name, size_bytes, sha256, created_at FROM job_artifacts WHERE job_id = ? ORDER BY name",
  );
  const getStmt = db.prepare<[string, string], Row>(
    "SELECT job_id, name, size_bytes, sha256, created_at FROM job_artifacts WHERE job_id = ? AND name = ?",
  );
  const totalsStmt = db.prepare<[string], { count: number; bytes: number }>(
    "SELECT count(*) AS count, coalesce(sum(size_bytes), 0) AS bytes FROM job_artifacts WHERE job_id = ?",
  );
  return {
    put(artifact) {
      return fromRow(putStmt.get({ ...artifact, created_at: toDbTime(now()) })!);
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
  };
}
