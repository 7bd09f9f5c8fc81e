/**
 * Tools only the stdio server offers: copies between the machine `agentlab mcp` runs on and a sandbox,
 * by sandbox cp's own copier (cp(1)'s rules, chunked, the partial file removed on failure). The HTTP
 * server at /mcp has no such tools: a remote client has no business naming paths on the daemon's host.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import type { DaemonCall } from "../../mcp/caller.js";
import { guarded, toolResult } from "../../mcp/results.js";
import { sandboxFileRead } from "../../protocol/index.js";
import type { CommandContext, GlobalArgs } from "../context.js";
import { SandboxCopier } from "../sandbox-copy.js";

const silent = { stdout: () => {}, stderr: () => {} };

function copier(args: GlobalArgs, call: DaemonCall, signal: AbortSignal, recursive: boolean, user?: string) {
  const ctx: CommandContext = {
    args,
    out: silent,
    call: (method, params, options) => call(method, params, { signal: options?.signal ?? signal }),
  };
  return new SandboxCopier(ctx, {
    recursive,
    signal,
    cancelMessage: "",
    ...(user !== undefined ? { user } : {}),
  });
}

const guestFields = sandboxFileRead.params.pick({ vmid: true, user: true });
const localPath = z.string().min(1).max(4096);
const guestPath = sandboxFileRead.params.shape.path;

export function registerLocalFileTools(server: McpServer, args: GlobalArgs, call: DaemonCall): void {
  server.registerTool(
    "file_upload",
    {
      title: "Upload a local file to a sandbox",
      description:
        "Copy a file (or with recursive: true a directory) from the machine this MCP server runs on into a RUNNING sandbox, like cp: when destination is an existing guest directory the source goes inside it. Each file is written beside its target and renamed into place. Returns the files copied and their SHA-256.",
      inputSchema: guestFields.extend({
        source: localPath.describe("local path (relative to the directory agentlab mcp was started in)"),
        destination: guestPath,
        recursive: z.boolean().optional(),
      }),
      annotations: { title: "Upload a local file to a sandbox", readOnlyHint: false, destructiveHint: true },
    },
    (input, extra) =>
      guarded(async () => {
        const summary = await copier(args, call, extra.signal, input.recursive ?? false, input.user).upload(
          input.source,
          input.vmid,
          input.destination,
        );
        return toolResult({ ...summary });
      }),
  );
  server.registerTool(
    "file_download",
    {
      title: "Download a file from a sandbox",
      description:
        "Copy a file (or with recursive: true a directory) from a RUNNING sandbox to the machine this MCP server runs on, like cp: when destination is an existing local directory the source goes inside it. A partial file never replaces the destination. Returns the files copied and their SHA-256.",
      inputSchema: guestFields.extend({
        source: guestPath,
        destination: localPath.describe("local path (relative to the directory agentlab mcp was started in)"),
        recursive: z.boolean().optional(),
      }),
      annotations: { title: "Download a file from a sandbox", readOnlyHint: false, destructiveHint: true },
    },
    (input, extra) =>
      guarded(async () => {
        const summary = await copier(args, call, extra.signal, input.recursive ?? false, input.user).download(
          input.vmid,
          input.source,
          input.destination,
        );
        return toolResult({ ...summary });
      }),
  );
}
