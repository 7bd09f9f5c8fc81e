import { z } from "zod";
import { ARTIFACT_READ_MAX } from "./chunk-sizes.js";
import { gitBranchNameError } from "./git-branch.js";
import { boundedString, LIMITS, numberLimit, preview } from "./limits.js";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";
import { ProfileName, SandboxEvent, TtlMinutes } from "./sandbox.js";
import { JOB_STATUSES } from "./states.js";
import * as wire from "./wire.js";

export { ARTIFACT_READ_MAX } from "./chunk-sizes.js";
export { JOB_STATUSES, TERMINAL_JOB_STATUSES } from "./states.js";

/**
 * Jobs: a repository and a task, run unattended by the guest runner inside a sandbox of their own.
 * QUEUED → RUNNING → COMPLETED | FAILED | TIMEOUT (spec §4.2). `job run` returns at once; the sandbox is
 * provisioned in the background and destroyed when the job ends unless keepalive is set.
 */

/** A job id as params take it (job_<16 hex>; bounded like every reference). */
const jobRef = boundedString(LIMITS.REF).min(1);
/** A byte offset into a job's log or an artifact. */
const offset = z.number().int().nonnegative().max(LIMITS.OFFSET.max, numberLimit(LIMITS.OFFSET));

export const JobResult = z
  .object({
    status: z.string(),
    message: z.string().optional(),
    result: z.unknown().optional().describe("what the runner reported: exit_code, commit, output_tail, ..."),
    reported_at: z.string(),
  })
  .describe("the runner's last report");

export const Job = z.object({
  id: z.string(),
  repo_url: z.string(),
  ref: z.string(),
  profile: z.string(),
  task: z.string().optional(),
  mode: z.string().optional(),
  ttl_minutes: z.number().int().optional(),
  keepalive: z.boolean(),
  status: z.enum(JOB_STATUSES),
  sandbox_vmid: z.number().int().optional(),
  workspace_id: z.string().optional(),
  session_id: z.string().optional().describe("the branch session a --branch job runs in"),
  branch: z.string().optional().describe("the git branch the runner works on (job run --branch)"),
  result: JobResult.optional(),
  failure_reason: z
    .string()
    .optional()
    .describe("why the job FAILED or hit its TIMEOUT, when the daemon ended it"),
  created_at: z.string(),
  updated_at: z.string(),
});
export type Job = z.infer<typeof Job>;

export const JobDetail = Job.extend({
  events: z.array(SandboxEvent).optional().describe("the job's most recent events, oldest first"),
});
export type JobDetail = z.infer<typeof JobDetail>;

/**
 * What a guest can clone: http(s), git, ssh URLs and scp-like `user@host:path`. Local paths and file://
 * would name files on the guest, never what the operator meant.
 */
const REPO_URL = /^(?:(?:https?|git|ssh):\/\/[^\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+)$/;
/** A git ref the runner passes to `git fetch`: no whitespace, no leading dash, no control characters. */
const GIT_REF = /^(?!-)[^\s\x00-\x1f\x7f~^:?*[\\]{1,200}$/;

/** What job.run and job.validate take. */
export const JobRequest = z
  .object({
    repo_url: boundedString(LIMITS.URL).regex(
      REPO_URL,
      "repo_url must be a URL the sandbox can clone: https://, http://, git://, ssh:// or user@host:path",
    ),
    task: boundedString(LIMITS.TASK).min(1, "task must not be empty"),
    profile: ProfileName,
    ref: boundedString(LIMITS.GIT_REF)
      .regex(GIT_REF, "ref must be a branch, tag or commit name (no spaces, no leading -)")
      .optional()
      .describe("default main"),
    mode: boundedString(LIMITS.WORD)
      .regex(/^[a-z][a-z0-9_-]{0,31}$/, "mode is a short lower-case word, e.g. dangerous")
      .optional()
      .describe("agent permission mode passed to the runner; default dangerous"),
    ttl_minutes: TtlMinutes.optional().describe("default: the profile's ttl; also the agent's time limit"),
    keepalive: z.boolean().optional().describe("keep the sandbox when the job ends (default: the profile's)"),
    workspace: boundedString(LIMITS.REF)
      .min(1)
      .optional()
      .describe(
        "existing, detached workspace (name or id) attached as /work before the first boot; detached again when the sandbox is destroyed",
      ),
    branch: boundedString(LIMITS.GIT_REF)
      .superRefine((name, ctx) => {
        const why = gitBranchNameError(name);
        if (why)
          ctx.addIssue({
            code: "custom",
            message: `branch "${preview(name)}" is not a valid git branch name: ${why}`,
          });
      })
      .optional()
      .describe(
        "git branch the runner works on, in the workspace of the branch session branch-<slug> (created with its 80 GiB workspace when missing); not with workspace",
      ),
  })
  .strict();

export const jobRun = defineMethod(wire.jobRun, {
  summary:
    "Queue a job: a sandbox is provisioned from the profile, its runner clones repo_url at ref and runs the agent on task. Returns once the job is recorded (status QUEUED); with branch, after the branch session (and its workspace) exists, reporting that as progress.",
  params: JobRequest.extend({ progress_token: progressToken }),
  result: Job,
});

export const jobValidate = defineMethod(wire.jobValidate, {
  summary:
    "Check a job request as job.run would (params, profile, guest listener, workspace, template node) without recording or starting anything.",
  params: JobRequest,
  result: z.object({
    valid: z.literal(true),
    profile: z.string(),
    ref: z.string(),
    mode: z.string(),
    ttl_minutes: z.number().int().optional(),
    keepalive: z.boolean(),
    workspace_id: z.string().optional(),
    branch: z.string().optional(),
    session: z
      .object({
        name: z.string(),
        exists: z.boolean().describe("false: job run creates it, with a new workspace of the same name"),
        id: z.string().optional(),
      })
      .optional()
      .describe("with branch: the branch session the job runs in"),
  }),
});

export const jobShow = defineMethod(wire.jobShow, {
  summary: "One job with its sandbox, the runner's last report and its recent events.",
  params: z
    .object({
      id: jobRef,
      events_tail: z
        .number()
        .int()
        .min(0)
        .max(1000)
        .optional()
        .describe("how many events; default 50, 0 none"),
    })
    .strict(),
  result: JobDetail,
});

export const jobList = defineMethod(wire.jobList, {
  summary: "Jobs, newest first.",
  params: z
    .object({
      status: z.enum(JOB_STATUSES).optional(),
      limit: z.number().int().positive().max(10000).optional().describe("default 100"),
    })
    .strict(),
  result: z.object({ jobs: z.array(Job) }),
});

export const jobCancel = defineMethod(wire.jobCancel, {
  summary:
    'Cancel a QUEUED or RUNNING job: it ends FAILED with failure_reason "cancelled", the runner stops the agent, and the sandbox follows its keepalive rule (destroyed unless keepalive).',
  params: z.object({ id: jobRef }).strict(),
  result: Job,
});

export const JobLogChunk = z.object({ offset: z.number().int().nonnegative(), text: z.string() });

export const jobLogs = defineMethod(wire.jobLogs, {
  summary:
    'The agent\'s output as the runner streamed it, from byte `offset` (default 0). With follow, each new chunk is sent as a $/progress notification (step "log", message the text) until the job ends; the answer then says where the log ends.',
  params: z
    .object({
      id: jobRef,
      offset: offset.optional(),
      follow: z.boolean().optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({
    job_id: z.string(),
    status: z.enum(JOB_STATUSES),
    /** Without follow: the text from offset (at most 1 MiB; call again from next_offset for more). */
    text: z.string(),
    next_offset: z.number().int().nonnegative(),
    /** Bytes stored in all; next_offset < end means there is more to read. */
    end: z.number().int().nonnegative(),
  }),
});

export const JobArtifact = z.object({
  name: z.string().describe("path relative to the job's artifact directory"),
  size_bytes: z.number().int().nonnegative(),
  sha256: z.string(),
  created_at: z.string(),
});
export type JobArtifact = z.infer<typeof JobArtifact>;

export const jobArtifacts = defineMethod(wire.jobArtifacts, {
  summary: "The files a job's runner uploaded: name, size and SHA-256.",
  params: z.object({ id: jobRef }).strict(),
  result: z.object({ job_id: z.string(), artifacts: z.array(JobArtifact) }),
});

export const jobArtifactRead = defineMethod(wire.jobArtifactRead, {
  summary:
    "Up to `length` bytes (at most 1 MiB, the default) of one artifact from `offset`, base64: downloads go in bounded chunks over the socket or a remote endpoint alike.",
  params: z
    .object({
      id: jobRef,
      name: boundedString(LIMITS.PATH).min(1),
      offset,
      length: z.number().int().positive().max(ARTIFACT_READ_MAX).optional(),
    })
    .strict(),
  result: z.object({
    artifact: JobArtifact,
    offset: z.number().int().nonnegative(),
    data_base64: z.string(),
    eof: z.boolean(),
  }),
});
