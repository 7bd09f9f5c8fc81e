/** A job row as the protocol shows it: nulls left out, the runner's last report parsed. */
import type { Job as JobJson } from "../../../protocol/job.js";
import { redacted } from "../../redact.js";
import type { Job } from "../../store/jobs.js";

/**
 * Redacted (../../redact.ts) with the job's own secret `values` on top: a report stored before the
 * redactor learnt a shape, or a task quoting a token, is still shown without it.
 */
export function jobJson(job: Job, values: readonly string[] = [], branch?: string): JobJson {
  const out: JobJson = {
    id: job.id,
    repo_url: job.repo_url,
    ref: job.ref,
    profile: job.profile,
    keepalive: job.keepalive,
    status: job.status,
    created_at: job.created_at.toISOString(),
    updated_at: job.updated_at.toISOString(),
  };
  if (job.task !== null) out.task = job.task;
  if (job.mode !== null) out.mode = job.mode;
  if (job.ttl_minutes !== null) out.ttl_minutes = job.ttl_minutes;
  if (job.sandbox_vmid !== null) out.sandbox_vmid = job.sandbox_vmid;
  if (job.workspace_id !== null) out.workspace_id = job.workspace_id;
  if (job.session_id !== null) out.session_id = job.session_id;
  if (branch !== undefined) out.branch = branch;
  if (job.failure_reason !== null) out.failure_reason = job.failure_reason;
  if (job.result_json !== null) {
    try {
      out.result = JSON.parse(job.result_json) as JobJson["result"];
    } catch {
      // Written by this daemon only; a row that does not parse is shown without it rather than failing.
    }
  }
  return redacted(out, values);
}
