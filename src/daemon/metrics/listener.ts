/**
 * The metrics listener (metrics_listen): plain HTTP, `GET /metrics` in Prometheus text format and
 * nothing else. It is read-only and carries no token, so the config keeps it on loopback unless
 * metrics_allow_remote says otherwise; a bind failure stops the start-up with its reason, as
 * control_listen's does, rather than leaving a daemon whose scrapes silently fail.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { parseHostPort } from "../../config/net.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { Logger } from "../log.js";

export const METRICS_PATH = "/metrics";

export interface MetricsListenerOptions {
  listen: string;
  scrape(): Promise<{ contentType: string; body: string }>;
  log: Logger;
}

function plain(
  res: ServerResponse,
  status: number,
  text: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    "content-type": "text/plain; charset=utf-8",
    "cache-control": "no-store",
    ...headers,
  });
  res.end(`${text}\n`);
}

export class MetricsListener {
  private server: Server | undefined;

  constructor(private readonly options: MetricsListenerOptions) {}

  async start(): Promise<{ url: string }> {
    const { host, port } = parseHostPort(this.options.listen)!;
    const server = createServer(
      // A scraper that stalls must not hold a socket for long (upstream: 5 s header timeout).
      { headersTimeout: 5_000, requestTimeout: 30_000, keepAliveTimeout: 5_000 },
      (req, res) => void this.request(req, res),
    );
    await new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => reject(this.listenError(error));
      server.once("error", onError);
      server.listen({ port, ...(host === "" ? {} : { host }) }, () => {
        server.off("error", onError);
        resolve();
      });
    });
    server.on("error", (error) => this.options.log.error({ err: error }, "metrics listener error"));
    this.server = server;
    const bound = server.address();
    const shown = typeof bound === "object" && bound ? bound.port : port;
    const urlHost = host === "" ? "0.0.0.0" : host.includes(":") ? `[${host}]` : host;
    return { url: `http://${urlHost}:${shown}${METRICS_PATH}` };
  }

  private listenError(error: NodeJS.ErrnoException): AgentlabError {
    const listen = this.options.listen;
    const port = parseHostPort(listen)?.port;
    const details = { key: "metrics_listen", listen };
    switch (error.code) {
      case "EADDRINUSE":
        return new AgentlabError(
          "METRICS_LISTEN_FAILED",
          `metrics_listen: address ${listen} is already in use`,
          {
            hint: `stop what holds it (ss -ltnp 'sport = :${port}' names it), or set metrics_listen to another port`,
            details,
            cause: error,
          },
        );
      case "EADDRNOTAVAIL":
        return new AgentlabError(
          "METRICS_LISTEN_FAILED",
          `metrics_listen: ${listen}: no interface of this host has that address`,
          {
            hint: "use 127.0.0.1 (the default bind for metrics) or an address of this host (ip -br addr)",
            details,
            cause: error,
          },
        );
      case "EACCES":
        return new AgentlabError(
          "METRICS_LISTEN_FAILED",
          `metrics_listen: permission denied binding ${listen}`,
          {
            hint: "ports below 1024 need root or CAP_NET_BIND_SERVICE; use the conventional 8847",
            details,
            cause: error,
          },
        );
      default:
        return new AgentlabError(
          "METRICS_LISTEN_FAILED",
          `metrics_listen: cannot listen on ${listen}: ${error.message}`,
          {
            details,
            cause: error,
          },
        );
    }
  }

  private async request(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "").split("?")[0];
    if (path !== METRICS_PATH) {
      plain(res, 404, `no route ${path}: this listener serves GET ${METRICS_PATH}`);
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      plain(res, 405, `method ${req.method} not allowed: use GET ${METRICS_PATH}`, { allow: "GET, HEAD" });
      return;
    }
    try {
      const { contentType, body } = await this.options.scrape();
      res.writeHead(200, { "content-type": contentType, "cache-control": "no-store" });
      res.end(req.method === "HEAD" ? undefined : body);
    } catch (error) {
      // A scrape-time read that failed (the database, say) is the scraper's 500, never the daemon's end.
      this.options.log.error({ err: error }, "metrics scrape failed");
      plain(res, 500, `metrics scrape failed: ${(error as Error)?.message ?? String(error)}`);
    }
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }
}
