/**
 * Resources an AI client can read or attach as context: a sandbox's events and a job's log, addressed
 * by URI templates. Listing them enumerates what exists now (sandboxes not destroyed, the latest jobs).
 */
import { type McpServer, ResourceTemplate } from "@modelcontextprotocol/sdk/server/mcp.js";
import { AgentlabError } from "../protocol/errors.js";
import { jobList, jobLogs, sandboxList, sandboxLogs } from "../protocol/index.js";
import type { DaemonCall } from "./caller.js";

export const SANDBOX_EVENTS_URI = "agentlab://sandboxes/{vmid}/events";
export const JOB_LOG_URI = "agentlab://jobs/{id}/log";

/** Events a resource read returns: the daemon's own cap for one sandbox.logs call. */
const EVENTS_TAIL = 1000;
/** A job log resource is its first bytes up to this; the job_logs tool pages through the rest. */
const LOG_BYTES = 1024 * 1024;

function one(value: string | string[] | undefined, name: string): string {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text === "") throw new AgentlabError("USAGE", `the URI names no ${name}`);
  return text;
}

export function registerResources(server: McpServer, call: DaemonCall): void {
  server.registerResource(
    "sandbox-events",
    new ResourceTemplate(SANDBOX_EVENTS_URI, {
      list: async () => {
        const { sandboxes } = await call(sandboxList, {});
        return {
          resources: sandboxes.map((sandbox) => ({
            uri: `agentlab://sandboxes/${sandbox.vmid}/events`,
            name: `sandbox ${sandbox.vmid}${sandbox.name ? ` (${sandbox.name})` : ""} events`,
            mimeType: "application/json",
          })),
        };
      },
    }),
    {
      title: "Sandbox events",
      description: `A sandbox's last ${EVENTS_TAIL} events (state changes, lease, errors), oldest first, as JSON.`,
      mimeType: "application/json",
    },
    async (uri, variables) => {
      const text = one(variables.vmid, "vmid");
      const vmid = Number(text);
      if (!/^\d+$/.test(text) || vmid < 100 || vmid > 999_999_999) {
        throw new AgentlabError("USAGE", `${uri.href}: ${text} is not a VMID (100 to 999999999)`);
      }
      const answer = await call(sandboxLogs, { vmid, tail: EVENTS_TAIL });
      return {
        contents: [{ uri: uri.href, mimeType: "application/json", text: JSON.stringify(answer, null, 2) }],
      };
    },
  );

  server.registerResource(
    "job-log",
    new ResourceTemplate(JOB_LOG_URI, {
      list: async () => {
        const { jobs } = await call(jobList, { limit: 50 });
        return {
          resources: jobs.map((job) => ({
            uri: `agentlab://jobs/${job.id}/log`,
            name: `job ${job.id} log (${job.status})`,
            mimeType: "text/plain",
          })),
        };
      },
    }),
    {
      title: "Job log",
      description: `The agent's output of a job, as the runner streamed it (the first ${LOG_BYTES / 1024 / 1024} MiB; job_logs reads on from an offset).`,
      mimeType: "text/plain",
    },
    async (uri, variables) => {
      const id = decodeURIComponent(one(variables.id, "job id"));
      const answer = await call(jobLogs, { id });
      return { contents: [{ uri: uri.href, mimeType: "text/plain", text: answer.text.slice(0, LOG_BYTES) }] };
    },
  );
}
