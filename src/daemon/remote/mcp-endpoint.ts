/**
 * The control listener's /mcp: the agentlab MCP server over Streamable HTTP, for AI clients with no
 * shell on the host. Stateless, as the SDK recommends when nothing needs to outlive a request: each POST
 * gets its own server and transport. Its tool calls enter the daemon through RpcServer.attach on an
 * in-memory pipe, with the caller's token and the same gate as a WebSocket at /rpc, so params
 * validation, scopes, owner rules, audit events, progress and cancellation are exactly those of /rpc.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { PassThrough } from "node:stream";
import { createMessageConnection, StreamMessageReader, StreamMessageWriter } from "vscode-jsonrpc/node.js";
import { AgentlabError } from "../../protocol/errors.js";
import { sendRequest } from "../../protocol/request.js";
import type { Logger } from "../log.js";
import { FramedMessageWriter } from "../rpc/message-writer.js";
import type { CallGate, RpcServer } from "../rpc/server.js";
import type { VerifiedToken } from "./tokens.js";

export const MCP_PATH = "/mcp";
/** Largest request body: file_write's 8 MiB of content in base64, and the JSON around it. */
export const MCP_BODY_MAX = 12 * 1024 * 1024;

export interface McpRequest {
  req: IncomingMessage;
  res: ServerResponse;
  server: RpcServer;
  token: VerifiedToken;
  address: string;
  gate: CallGate;
  log: Logger;
  /** Writes an error answer the way the listener writes all of its refusals. */
  refuse(status: number, error: AgentlabError): void;
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners("data");
        req.resume();
        reject(
          new AgentlabError("INVALID_PARAMS", `request body is over ${limit} bytes`, {
            hint: "send large files in several file_write calls of at most 8 MiB each",
          }),
        );
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

export async function serveMcp(request: McpRequest): Promise<void> {
  const { req, res } = request;
  if (req.method !== "POST") {
    // Stateless: no session to stream server-initiated messages on (GET) or to end (DELETE).
    res.setHeader("allow", "POST");
    request.refuse(
      405,
      new AgentlabError(
        "USAGE",
        `${req.method} ${MCP_PATH}: this endpoint is stateless and takes POST only`,
        {
          hint: "configure the MCP client for Streamable HTTP at https://<host>:8845/mcp",
        },
      ),
    );
    return;
  }
  let body: unknown;
  try {
    const raw = await readBody(req, MCP_BODY_MAX);
    body = JSON.parse(raw.toString("utf8"));
  } catch (error) {
    request.refuse(
      error instanceof AgentlabError ? 413 : 400,
      error instanceof AgentlabError
        ? error
        : new AgentlabError("INVALID_PARAMS", `request body is not JSON: ${(error as Error).message}`),
    );
    return;
  }
  const busy = request.server.atCapacity;
  if (busy) {
    request.refuse(503, busy);
    return;
  }

  // The daemon's end of an in-memory JSON-RPC connection, attached like a WebSocket client.
  const toDaemon = new PassThrough();
  const fromDaemon = new PassThrough();
  const attached = request.server.attach({
    reader: new StreamMessageReader(toDaemon),
    writer: new FramedMessageWriter(fromDaemon),
    destroy: () => {
      toDaemon.destroy();
      fromDaemon.destroy();
    },
    end: () => fromDaemon.end(),
    caller: {
      transport: "remote",
      address: request.address,
      token: { id: request.token.id, name: request.token.name },
    },
    gate: request.gate,
  });
  const conn = createMessageConnection(
    new StreamMessageReader(fromDaemon),
    new StreamMessageWriter(toDaemon),
  );
  let closed: (error: AgentlabError) => void = () => {};
  const failed = new Promise<never>((_, reject) => (closed = reject));
  failed.catch(() => {});
  conn.onClose(() =>
    closed(new AgentlabError("DAEMON_SHUTTING_DOWN", "agentlabd closed the call (it is stopping)")),
  );
  conn.listen();

  // Lazily: the SDK and its HTTP adapter load on the first /mcp request, not at every daemon start.
  const [{ StreamableHTTPServerTransport }, { createMcpServer }] = await Promise.all([
    import("@modelcontextprotocol/sdk/server/streamableHttp.js"),
    import("../../mcp/server.js"),
  ]);
  const mcp = createMcpServer((method, params, options = {}) =>
    sendRequest(conn, method, params, {
      failed,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    }),
  );
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    void transport.close().catch(() => {});
    void mcp.close().catch(() => {});
    conn.dispose();
    attached.drop("closed");
  };
  res.on("close", finish);
  try {
    await mcp.connect(transport);
    await transport.handleRequest(req, res, body);
  } catch (error) {
    request.log.warn({ err: error }, "control listener: /mcp request failed");
    if (!res.headersSent) request.refuse(500, new AgentlabError("INTERNAL", (error as Error).message));
    finish();
  }
}
