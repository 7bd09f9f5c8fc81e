/**
 * The agentlab MCP server: the same tools and resources whichever transport carries it (stdio for
 * `agentlab mcp`, Streamable HTTP at the control listener's /mcp) and whichever daemon connection
 * serves its calls.
 */
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { VERSION } from "../version.js";
import type { DaemonCall } from "./caller.js";
import { registerContentTools } from "./content-tools.js";
import { registerResources } from "./resources.js";
import { registerMethodTools } from "./tools.js";

const INSTRUCTIONS =
  "agentlab runs AI coding agents in network-isolated Proxmox VMs (sandboxes). Create one with sandbox_create " +
  "(a profile name is required; ask the user or read sandbox_list for profiles in use), run commands in it with " +
  "sandbox_exec, move files with file_read/file_write, and destroy it with sandbox_destroy when done. For an " +
  "unattended run, job_run provisions its own sandbox; follow it with job_status and job_logs and collect " +
  "job_artifacts. Failures come back as tool errors with the daemon's message and a hint naming what to do next.";

export function createMcpServer(call: DaemonCall, extend?: (server: McpServer) => void): McpServer {
  const server = new McpServer(
    { name: "agentlab", title: "agentlab sandboxes", version: VERSION },
    { instructions: INSTRUCTIONS, capabilities: { tools: {}, resources: {} } },
  );
  registerMethodTools(server, call);
  registerContentTools(server, call);
  registerResources(server, call);
  extend?.(server);
  return server;
}
