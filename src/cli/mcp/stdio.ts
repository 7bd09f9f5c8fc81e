/**
 * `agentlab mcp`: the MCP server on stdin/stdout, one more client of the daemon. Its calls go where any
 * other command's would (local socket, or the connect endpoint with its token, whose scopes apply).
 * Loaded only when the command runs, so the SDK costs other commands nothing at start-up.
 */
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import type { DaemonCall } from "../../mcp/caller.js";
import { createMcpServer } from "../../mcp/server.js";
import { daemonStatus } from "../../protocol/index.js";
import { call } from "../client.js";
import {
  connectionOf,
  DEFAULT_PROGRESS_TIMEOUT_MS,
  DEFAULT_TIMEOUT_MS,
  type GlobalArgs,
  parseTimeout,
} from "../context.js";
import { describeConnection } from "../remote/connection.js";
import { registerLocalFileTools } from "./local-files.js";

export async function serveStdio(args: GlobalArgs): Promise<void> {
  // Resolved once, before serving: a bad --endpoint or a missing token is a usage error now, not a
  // failure of every tool call later.
  const connection = connectionOf(args);
  const fixedTimeout = args.timeout !== undefined ? parseTimeout(args.timeout) : undefined;
  const daemonCall: DaemonCall = (method, params, options = {}) =>
    call(
      {
        socketPath: connection.kind === "socket" ? connection.path : args.socket,
        ...(connection.kind === "remote" ? { remote: connection } : {}),
        timeoutMs: fixedTimeout ?? (method.progress ? DEFAULT_PROGRESS_TIMEOUT_MS : DEFAULT_TIMEOUT_MS),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      },
      method,
      params,
    );
  const server = createMcpServer(daemonCall, (mcp) => registerLocalFileTools(mcp, args, daemonCall));
  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = () => resolve();
    process.stdin.once("end", () => resolve());
  });
  await server.connect(transport);
  // stdout is the protocol's; what people may read goes to stderr (MCP clients log it).
  process.stderr.write(`agentlab mcp: serving over stdio; daemon: ${describeConnection(connection)}\n`);
  void daemonCall(daemonStatus, {}).catch((error: Error) =>
    process.stderr.write(`agentlab mcp: the daemon does not answer yet: ${error.message}\n`),
  );
  await closed;
  await server.close();
}
