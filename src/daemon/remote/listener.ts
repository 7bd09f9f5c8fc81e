/**
 * The remote control listener (control_listen): HTTPS with two routes. `GET /health` is the only one
 * without a token (upstream left whole route groups unauthenticated: security review F6, F12/F13); the
 * WebSocket at `/rpc` carries the same JSON-RPC messages as the Unix socket and is opened only with
 * `Authorization: Bearer <token>`; `/mcp` serves the MCP tools over Streamable HTTP with the same tokens
 * (mcp-endpoint.ts). Clients outside control_allow_cidrs get a 403 that says so, and every
 * refusal carries {code, message, hint} so the CLI shows the same errors as for a local call.
 */

import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import { BlockList, isIPv4, isIPv6 } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocketServer } from "ws";
import { AgentlabError } from "../../protocol/errors.js";
import { MAX_FRAME_BYTES } from "../../protocol/index.js";
import {
  HEALTH_PATH,
  RPC_PATH,
  WebSocketMessageReader,
  WebSocketMessageWriter,
} from "../../protocol/websocket.js";
import type { Logger } from "../log.js";
import type { CallGate, RpcServer } from "../rpc/server.js";
import type { EventRepo } from "../store/events.js";
import { listenTcp } from "../tcp-listen.js";
import { MCP_PATH, serveMcp } from "./mcp-endpoint.js";
import type { ControlCertificate } from "./tls.js";
import type { TokenService, VerifiedToken } from "./tokens.js";

export interface HealthReport {
  ok: boolean;
  /** Name -> what failed, for the components that did not answer. */
  failed: Record<string, string>;
}

export interface ControlListenerOptions {
  listen: string;
  allowCidrs: readonly string[];
  certificate: ControlCertificate;
  server: RpcServer;
  tokens: TokenService;
  gate(token: VerifiedToken, address: string): CallGate;
  health(): Promise<HealthReport>;
  events: EventRepo;
  log: Logger;
}

const STATUS_TEXT: Record<number, string> = {
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  503: "Service Unavailable",
};

/** The address as the allowlist sees it: IPv4-mapped IPv6 (a dual-stack bind) becomes plain IPv4. */
function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

export function allowList(cidrs: readonly string[]): ((address: string) => boolean) | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net, prefix] = cidr.split("/");
    list.addSubnet(net!, Number(prefix), isIPv6(net!) ? "ipv6" : "ipv4");
  }
  return (address) => {
    const plain = plainAddress(address);
    if (isIPv4(plain)) return list.check(plain, "ipv4");
    return isIPv6(plain) && list.check(plain, "ipv6");
  };
}

function errorBody(error: AgentlabError): string {
  return JSON.stringify({
    code: error.code,
    message: error.message,
    hint: error.hint,
    details: error.details,
  });
}

/** Answer an upgrade request with a plain HTTP error: the client reads it as an AgentlabError. */
function refuseUpgrade(socket: Duplex, status: number, error: AgentlabError): void {
  const body = errorBody(error);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function respond(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(body);
}

function bearer(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  const match = header === undefined ? null : /^Bearer +(\S+)\s*$/i.exec(header);
  return match ? match[1] : undefined;
}

export class ControlListener {
  private server: Server | undefined;
  private readonly allowed: ((address: string) => boolean) | undefined;
  private readonly wss: WebSocketServer;

  constructor(private readonly options: ControlListenerOptions) {
    this.allowed = allowList(options.allowCidrs);
    // Frames above the socket's limit close the connection there too: no legitimate request is that big.
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES });
  }

  /** The address refusal, or undefined when the client may go on. */
  private refusal(address: string): AgentlabError | undefined {
    if (!this.allowed || this.allowed(address)) return undefined;
    return new AgentlabError(
      "ADDRESS_NOT_ALLOWED",
      `connections from ${plainAddress(address)} are not allowed by this agentlabd (control_allow_cidrs: ${this.options.allowCidrs.join(", ")})`,
      { details: { address: plainAddress(address), allowed: [...this.options.allowCidrs] } },
    );
  }

  async start(): Promise<{ url: string }> {
    const server = createServer(
      {
        cert: this.options.certificate.cert,
        key: this.options.certificate.key,
        // Slow or idle clients must not hold sockets open (upstream: 5 s header timeout, 2 min idle).
        headersTimeout: 5_000,
        requestTimeout: 30_000,
        keepAliveTimeout: 5_000,
      },
      (req, res) => void this.request(req, res),
    );
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.upgrade(req, socket, head),
    );
    server.on("tlsClientError", (error) =>
      this.options.log.debug({ err: error }, "control listener: TLS handshake failed"),
    );
    const { host, port } = await listenTcp(server, {
      key: "control_listen",
      listen: this.options.listen,
      code: "CONTROL_LISTEN_FAILED",
      addressHint: "use an address of this host (ip -br addr), e.g. its tailnet address (tailscale ip -4)",
      permissionHint: "ports below 1024 need root or CAP_NET_BIND_SERVICE; use the default 8845",
    });
    server.on("error", (error) => this.options.log.error({ err: error }, "control listener error"));
    this.server = server;
    return { url: `https://${host}:${port}` };
  }

  private async request(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const address = req.socket.remoteAddress ?? "";
    const refused = this.refusal(address);
    if (refused) {
      this.options.log.info({ remote: address }, "control listener: address not allowed");
      respond(res, 403, errorBody(refused));
      return;
    }
    const path = (req.url ?? "").split("?")[0];
    if (path === HEALTH_PATH && (req.method === "GET" || req.method === "HEAD")) {
      const report = await this.options.health();
      respond(
        res,
        report.ok ? 200 : 503,
        JSON.stringify(report.ok ? { status: "ok" } : { status: "failing", failed: report.failed }),
      );
      return;
    }
    if (path === MCP_PATH) {
      const token = this.authenticate(req, address);
      if (token instanceof AgentlabError) {
        // RFC 6750: a bearer-protected resource names its scheme when it refuses.
        res.setHeader("www-authenticate", 'Bearer realm="agentlabd"');
        respond(res, token.code === "INTERNAL" ? 500 : 401, errorBody(token));
        return;
      }
      await serveMcp({
        req,
        res,
        server: this.options.server,
        token,
        address,
        gate: this.options.gate(token, address),
        log: this.options.log,
        refuse: (status, error) => respond(res, status, errorBody(error)),
      });
      return;
    }
    const error = new AgentlabError(
      "NOT_FOUND",
      `no route ${req.method} ${path}: this listener serves GET ${HEALTH_PATH}, JSON-RPC over a WebSocket at ${RPC_PATH} and MCP (Streamable HTTP) at ${MCP_PATH}`,
      { hint: "use the agentlab CLI: agentlab connect --endpoint <url> --token <token>" },
    );
    respond(res, 404, errorBody(error));
  }

  /** The caller's token, or the refusal to answer with (recorded in the events, never with the secret). */
  private authenticate(req: IncomingMessage, address: string): VerifiedToken | AgentlabError {
    const secret = bearer(req);
    try {
      if (secret === undefined) {
        throw new AgentlabError(
          "TOKEN_INVALID",
          "no token: the control listener needs Authorization: Bearer <token>",
        );
      }
      return this.options.tokens.verify(secret);
    } catch (error) {
      const known = error instanceof AgentlabError ? error : new AgentlabError("INTERNAL", String(error));
      this.options.log.info({ remote: address, code: known.code }, "control listener: token refused");
      try {
        this.options.events.append({
          kind: "remote.refused",
          msg: `connection from ${address} refused: ${known.code}`,
          payload: {
            address,
            outcome: known.code,
            ...(known.details.token ? { token: known.details.token } : {}),
          },
        });
      } catch (recordError) {
        this.options.log.error({ err: recordError }, "could not record a refused remote connection");
      }
      return known;
    }
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const address = req.socket.remoteAddress ?? "";
    const refused = this.refusal(address);
    if (refused) {
      this.options.log.info({ remote: address }, "control listener: address not allowed");
      refuseUpgrade(socket, 403, refused);
      return;
    }
    const path = (req.url ?? "").split("?")[0];
    if (path !== RPC_PATH) {
      refuseUpgrade(
        socket,
        404,
        new AgentlabError("NOT_FOUND", `no WebSocket endpoint at ${path}; it is ${RPC_PATH}`),
      );
      return;
    }
    // Before the token check: a full daemon says so to every client alike, and spends nothing on it.
    const busy = this.options.server.atCapacity;
    if (busy) {
      this.options.log.warn(
        { remote: address },
        "control listener: refusing a client, rpc_max_connections reached",
      );
      refuseUpgrade(socket, 503, busy);
      return;
    }
    const token = this.authenticate(req, address);
    if (token instanceof AgentlabError) {
      refuseUpgrade(socket, token.code === "INTERNAL" ? 500 : 401, token);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const caller = { transport: "remote" as const, address, token: { id: token.id, name: token.name } };
      const connection = this.options.server.attach({
        reader: new WebSocketMessageReader(ws),
        writer: new WebSocketMessageWriter(ws),
        destroy: () => ws.terminate(),
        end: () => ws.close(1001, "agentlabd is stopping"),
        caller,
        gate: this.options.gate(token, address),
      });
      ws.on("close", () => connection.drop("closed"));
    });
  }

  /** Stop accepting; the RPC server has already ended the WebSocket connections in its drain. */
  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    this.wss.close();
  }
}
