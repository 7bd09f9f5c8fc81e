/**
 * The sandbox, job and workspace tools. Each one is a protocol method: its input schema is the method's
 * own params schema (less the progress token), so what an AI client is told to send is exactly what the
 * daemon validates, and the two cannot drift. Descriptions say what the call does and what comes back.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { ToolAnnotations } from "@modelcontextprotocol/sdk/types.js";
import {
  jobArtifacts,
  jobCancel,
  jobLogs,
  jobRun,
  jobShow,
  profileList,
  sandboxCreate,
  sandboxDestroy,
  sandboxLeaseRenew,
  sandboxList,
  sandboxShow,
  workspaceFork,
  workspaceList,
  workspaceSnapshotCreate,
} from "../protocol/index.js";
import type { Method } from "../protocol/method.js";
import type { DaemonCall } from "./caller.js";
import { progressReporter } from "./progress.js";
import { guarded, toolResult } from "./results.js";

interface MethodTool {
  name: string;
  title: string;
  method: Method;
  /** Params of the method the tool does not offer (progress_token always goes). */
  omit?: readonly string[];
  description: string;
  annotations: ToolAnnotations;
  /** Shapes the answer's text; the structured content is always the daemon's result. */
  text?: (result: Record<string, unknown>) => string;
}

const READ: ToolAnnotations = { readOnlyHint: true, openWorldHint: false };
const CHANGE: ToolAnnotations = { readOnlyHint: false, destructiveHint: false, openWorldHint: false };
const DESTROY: ToolAnnotations = { readOnlyHint: false, destructiveHint: true, openWorldHint: false };

export const METHOD_TOOLS: readonly MethodTool[] = [
  {
    name: "profile_list",
    title: "List profiles",
    method: profileList,
    description:
      "The sandbox profiles this daemon offers (name, template, cores, memory, default ttl): pass one as profile to sandbox_create or job_run.",
    annotations: READ,
  },
  {
    name: "sandbox_create",
    title: "Create a sandbox",
    method: sandboxCreate,
    description:
      "Provision a new network-isolated sandbox VM from a profile (clone, configure, boot, wait for the guest). Blocks until the sandbox is RUNNING (or fails and is rolled back); can take minutes, and reports each step as progress. Returns the sandbox record: use its vmid with sandbox_exec, file_read/file_write, sandbox_show and sandbox_destroy. ttl_minutes sets its lease (it is destroyed when the lease ends unless renewed with sandbox_renew).",
    annotations: { ...CHANGE, openWorldHint: true },
  },
  {
    name: "sandbox_list",
    title: "List sandboxes",
    method: sandboxList,
    description:
      "List sandboxes with their vmid, name, state, profile, IP and lease expiry. DESTROYED ones only with all: true (or state: DESTROYED).",
    annotations: READ,
  },
  {
    name: "sandbox_show",
    title: "Show a sandbox",
    method: sandboxShow,
    description:
      "One sandbox in detail: state, IP, profile, lease remaining, live Proxmox status and its last events (events: how many, default the daemon's).",
    annotations: READ,
  },
  {
    name: "sandbox_destroy",
    title: "Destroy a sandbox",
    method: sandboxDestroy,
    description:
      "Stop and delete a sandbox's VM and everything in it (workspaces attached to it are detached and kept). Irreversible. force: true also clears a sandbox whose VM is already gone or whose Proxmox calls fail.",
    annotations: { ...DESTROY, idempotentHint: true },
  },
  {
    name: "sandbox_renew",
    title: "Renew a sandbox's lease",
    method: sandboxLeaseRenew,
    description:
      "Extend a RUNNING sandbox's lease: it will expire ttl_minutes from now. Returns the new expiry time.",
    annotations: { ...CHANGE, idempotentHint: true },
  },
  {
    name: "job_run",
    title: "Run a job",
    method: jobRun,
    description:
      "Queue an unattended agent job: a fresh sandbox is provisioned from profile, the runner clones repo_url at ref and runs the agent on task. Returns at once with the job (status QUEUED) and its id: follow it with job_status and job_logs, then list what it produced with job_artifacts.",
    annotations: { ...CHANGE, openWorldHint: true },
  },
  {
    name: "job_status",
    title: "Job status",
    method: jobShow,
    description:
      "One job: status (QUEUED, RUNNING, COMPLETED, FAILED, TIMEOUT), its sandbox, result or failure reason, the runner's last report and recent events.",
    annotations: READ,
  },
  {
    name: "job_logs",
    title: "Job logs",
    method: jobLogs,
    omit: ["follow"],
    description:
      "The agent's output so far, from byte offset (default 0), at most 1 MiB per call. The answer's next_offset is where to ask next; next_offset < end means more is stored. Call again while the job is RUNNING to read new output.",
    annotations: READ,
    text: (result) => String(result.text ?? ""),
  },
  {
    name: "job_cancel",
    title: "Cancel a job",
    method: jobCancel,
    description:
      "Cancel a QUEUED or RUNNING job: the agent is stopped and the job ends FAILED (reason cancelled); its sandbox is destroyed unless keepalive.",
    annotations: DESTROY,
  },
  {
    name: "job_artifacts",
    title: "List a job's artifacts",
    method: jobArtifacts,
    description:
      "The files a job's runner uploaded when it finished: name, size and SHA-256. Read one with job_artifact_read.",
    annotations: READ,
  },
  {
    name: "workspace_list",
    title: "List workspaces",
    method: workspaceList,
    description:
      "Persistent workspace disks: name, id, size, storage and the sandbox each is attached to (if any).",
    annotations: READ,
  },
  {
    name: "workspace_snapshot",
    title: "Snapshot a workspace",
    method: workspaceSnapshotCreate,
    description:
      "Take a named snapshot of a detached workspace (detach it or destroy its sandbox first). Fork from it later with workspace_fork from_snapshot.",
    annotations: CHANGE,
  },
  {
    name: "workspace_fork",
    title: "Fork a workspace",
    method: workspaceFork,
    description:
      "Make a new workspace named name holding a copy of a detached workspace (its current state, or from_snapshot). Use it with sandbox_create workspace or job_run workspace.",
    annotations: CHANGE,
  },
];

/** The method's params as the tool's input: the same zod object, less what the tool does not offer. */
function inputOf(tool: MethodTool) {
  const params = tool.method.params as unknown as {
    shape: Record<string, unknown>;
    omit(mask: Record<string, true>): unknown;
  };
  const mask: Record<string, true> = {};
  for (const key of ["progress_token", ...(tool.omit ?? [])]) if (key in params.shape) mask[key] = true;
  return params.omit(mask) as Method["params"];
}

export function registerMethodTools(server: McpServer, call: DaemonCall): void {
  for (const tool of METHOD_TOOLS) {
    server.registerTool(
      tool.name,
      {
        title: tool.title,
        description: tool.description,
        inputSchema: inputOf(tool),
        annotations: { title: tool.title, ...tool.annotations },
      },
      (args, extra) =>
        guarded(async () => {
          const report = progressReporter(extra);
          const result = (await call(tool.method, args as never, {
            signal: extra.signal,
            ...(report && tool.method.progress ? { onProgress: (value) => report(value.message) } : {}),
          })) as Record<string, unknown>;
          return toolResult(result, tool.text?.(result));
        }),
    );
  }
}
