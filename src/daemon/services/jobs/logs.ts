/**
 * The agent's output while a job runs (docs/jobs.md, "Logs"): the runner posts it in chunks, each with
 * its byte offset in the job's log, to the guest listener; they are stored (a resend is stored once)
 * and handed at once to whoever follows the job. Followers are told when the job ends, so
 * `job logs --follow` needs no polling.
 */

import { redactString } from "../../redact.js";
import type { JobLogChunk } from "../../store/job-logs.js";
import type { Job } from "../../store/jobs.js";

/** What a follower hears: a chunk, or the end of the job. */
export type LogUpdate = { kind: "chunk"; chunk: JobLogChunk } | { kind: "end"; job: Job };

/** Largest chunk the runner may send (it sends 64 KiB at most); also what one read returns at most. */
export const MAX_LOG_READ = 1024 * 1024;

/**
 * Text of stored chunks as people see it: the redaction doctor bundles use (the runner already replaced
 * its own tokens). Bytes are decoded per read, so a character cut at a chunk edge shows as U+FFFD.
 */
export function logText(chunks: readonly JobLogChunk[], secretValues: readonly string[] = []): string {
  return redactString(Buffer.concat(chunks.map((c) => c.data)).toString("utf8"), secretValues);
}

export class LogFollowers {
  readonly #followers = new Map<string, Set<(update: LogUpdate) => void>>();

  /** Listen to one job; returns the function that stops listening. */
  follow(jobId: string, listener: (update: LogUpdate) => void): () => void {
    let set = this.#followers.get(jobId);
    if (!set) {
      set = new Set();
      this.#followers.set(jobId, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.#followers.get(jobId) === set) this.#followers.delete(jobId);
    };
  }

  publish(jobId: string, update: LogUpdate): void {
    for (const listener of [...(this.#followers.get(jobId) ?? [])]) listener(update);
  }
}
