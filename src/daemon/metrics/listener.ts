/**
 * The metrics listener (metrics_listen): plain HTTP, `GET /metrics` in Prometheus text format and
 * nothing else. It is read-only and carries no token, so the config keeps it on loopback unless
 * metrics_allow_remote says otherwise; a bind failure stops the start-up with its reason, as
 * control_listen's does, rather than leaving a daemon whose scrapes silently fail.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "../log.js";
import { listenTcp } from "../tcp-listen.js";

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
    const server = createServer(
      // A scraper that stalls must not hold a socket for long (upstream: 5 s header timeout).
      { headersTimeout: 5_000, requestTimeout: 30_000, keepAliveTimeout: 5_000 },
      (req, res) => void this.request(req, res),
    );
    const { host, port } = await listenTcp(server, {
      key: "metrics_listen",
      listen: this.options.listen,
      code: "METRICS_LISTEN_FAILED",
      addressHint: "use 127.0.0.1 (the default bind for metrics) or an address of this host (ip -br addr)",
      permissionHint: "ports below 1024 need root or CAP_NET_BIND_SERVICE; use the conventional 8847",
    });
    server.on("error", (error) => this.options.log.error({ err: error }, "metrics listener error"));
    this.server = server;
    return { url: `http://${host}:${port}${METRICS_PATH}` };
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
