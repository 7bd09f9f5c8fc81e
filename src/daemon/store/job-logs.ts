/**
 * The job_log_chunks table: the agent's output as the runner streams it, one row per chunk keyed by its
 * byte offset in the job's log. A chunk sent again (its answer was lost) is stored once; the log is the
 * chunks in offset order.
 */

import type Database from "better-sqlite3";
import { toDbTime } from "./time.js";

export interface JobLogChunk {
  pos: number;
  data: Buffer;
}

export interface JobLogRepo {
  /** Store a chunk at `pos`; false when one is already there (a resend). */
  append(jobId: string, pos: number, data: Buffer): boolean;
  /** Chunks starting at or after `from`, in order, at most `limit` bytes (at least one chunk). */
  read(jobId: string, from: number, limitBytes: number): JobLogChunk[];
  /** Where the next chunk goes: the end of the stored log. */
  end(jobId: string): number;
}

export function createJobLogRepo(db: Database.Database, now: () => Date): JobLogRepo {
  const insertStmt = db.prepare<[string, number, Buffer, string]>(
    "INSERT INTO job_log_chunks (job_id, pos, data, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
  );
  const readStmt = db.prepare<[string, number], JobLogChunk>(
    "SELECT pos, data FROM job_log_chunks WHERE job_id = ? AND pos + length(data) > ? ORDER BY pos",
  );
  const endStmt = db.prepare<[string], { end: number }>(
    "SELECT coalesce(max(pos + length(data)), 0) AS end FROM job_log_chunks WHERE job_id = ?",
  );
  return {
    append(jobId, pos, data) {
      return insertStmt.run(jobId, pos, data, toDbTime(now())).changes === 1;
    },
    read(jobId, from, limitBytes) {
      const out: JobLogChunk[] = [];
      let bytes = 0;
      for (const chunk of readStmt.iterate(jobId, from)) {
        // A chunk that starts before `from` (the reader asked from inside it) is cut to start there.
        const data = chunk.pos < from ? chunk.data.subarray(from - chunk.pos) : chunk.data;
        if (out.length > 0 && bytes + data.length > limitBytes) break;
        out.push({ pos: Math.max(chunk.pos, from), data });
        bytes += data.length;
      }
      return out;
    },
    end(jobId) {
      return endStmt.get(jobId)?.end ?? 0;
    },
  };
}
