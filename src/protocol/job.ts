import { z } from "zod";
import { defineMethod } from "./method.js";
import { SandboxEvent } from "./sandbox.js";

/**
 * Jobs: a repository and a task, run unattended by the guest runner inside a sandbox of their own.
 * QUEUED → RUNNING → COMPLETED | FAILED | TIMEOUT (spec §4.2). `job run` returns at once; the sandbox is
 * provisioned in the background and destroyed when the job ends unless keepalive is set.
 */

export const JOB_STATUSES = ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT"] as const;
export const TERMINAL_JOB_STATUSES: readonly string[] = ["COMPLETED", "FAILED", "TIMEOUT"];

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

export const jobRun = defineMethod({
  method: "job.run",
  summary:
    "Queue a job: a sandbox is provisioned from the profile, its runner clones repo_url at ref and runs the agent on task. Returns at once (status QUEUED).",
  params: z
    .object({
      repo_url: z
        .string()
        .regex(
          REPO_URL,
          "repo_url must be a URL the sandbox can clone: https://, http://, git://, ssh:// or user@host:path",
        ),
      task: z.string().min(1, "task must not be empty").max(65536, "task must be at most 64 KiB"),
      profile: z.string().min(1, "profile must not be empty"),
      ref: z
        .string()
        .regex(GIT_REF, "ref must be a branch, tag or commit name (no spaces, no leading -)")
        .optional()
        .describe("default main"),
      mode: z
        .string()
        .regex(/^[a-z][a-z0-9_-]{0,31}$/, "mode is a short lower-case word, e.g. dangerous")
        .optional()
        .describe("agent permission mode passed to the runner; default dangerous"),
      ttl_minutes: z
        .number()
        .int()
        .positive("ttl_minutes must be positive")
        .optional()
        .describe("default: the profile's ttl; also the agent's time limit"),
      keepalive: z
        .boolean()
        .optional()
        .describe("keep the sandbox when the job ends (default: the profile's)"),
      workspace: z
        .string()
        .min(1)
        .optional()
        .describe(
          "existing, detached workspace (name or id) attached as /work before the first boot; detached again when the sandbox is destroyed",
        ),
    })
    .strict(),
  result: Job,
  progress: false,
  errors: [
    "PROFILE_NOT_FOUND",
    "PROVISIONING_FAILED",
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
  ],
});

export const jobShow = defineMethod({
  method: "job.show",
  summary: "One job with its sandbox, the runner's last report and its recent events.",
  params: z
    .object({
      id: z.string().min(1),
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
  progress: false,
  errors: ["JOB_NOT_FOUND"],
});

export const jobList = defineMethod({
  method: "job.list",
  summary: "Jobs, newest first.",
  params: z
    .object({
      status: z.enum(JOB_STATUSES).optional(),
      limit: z.number().int().positive().max(10000).optional().describe("default 100"),
    })
    .strict(),
  result: z.object({ jobs: z.array(Job) }),
  progress: false,
  errors: [],
});
