/**
 * The HTTPS face: /api2/json with PVE's envelope, reason phrases, 401/403/400/500/501 shapes and
 * API-token auth, over the same routes `pvesh` uses. Faults can make it fail a path or go dark.
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import { createServer as createNetServer, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { countCallFault } from "./call-faults.js";
import { beginCall } from "./call-log.js";
import { type Fault, findFault, readControl } from "./control.js";
import { PveError } from "./errors.js";
import { apiInfoPath, tokenPath } from "./paths.js";
import { AuthFailure, callApi } from "./runner.js";
import type { RawParams } from "./schema.js";
import { readState, withState, writeFileAtomic } from "./store.js";
import { ensureTls, tlsFiles } from "./tls.js";

const API_PREFIX = "/api2/json";
const MAX_BODY = 1024 * 1024;
const JSON_TYPE = "application/json;charset=UTF-8";

export interface RunningServer {
  server: Server;
  port: number;
  url: string;
  caPath: string;
  close(): Promise<void>;
}

export interface ApiInfo {
  url: string;
  port: number;
  ca_path: string;
  token: string;
  token_id: string;
  token_secret: string;
  node: string;
  pid: number;
}

function addParam(params: RawParams, key: string, value: string): void {
  const prev = params[key];
  if (prev === undefined) params[key] = value;
  else params[key] = Array.isArray(prev) ? [...prev, value] : [prev, value];
}

function jsonParamValue(value: unknown): string | string[] {
  if (typeof value === "boolean") return value ? "1" : "0";
  if (Array.isArray(value)) return value.map((v) => (typeof v === "string" ? v : JSON.stringify(v)));
  if (value !== null && typeof value === "object") return JSON.stringify(value);
  return String(value);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new PveError(413, "request entity too large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

async function requestParams(req: IncomingMessage, url: URL): Promise<RawParams> {
  const params: RawParams = {};
  for (const [k, v] of url.searchParams) addParam(params, k, v);
  if (req.method !== "POST" && req.method !== "PUT") return params;
  const body = await readBody(req);
  if (body.trim() === "") return params;
  const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  if (type === "application/json") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      throw new PveError(400, "malformed JSON in request body");
    }
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
      for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
        if (v !== null && v !== undefined) params[k] = jsonParamValue(v);
      }
    }
    return params;
  }
  for (const [k, v] of new URLSearchParams(body)) addParam(params, k, v);
  return params;
}

/** The reason phrase: the first line of the message, as pve-http-server cuts it. */
function reason(message: string): string {
  const first = message
    .split("\n")[0]!
    .replace(/[^\t\x20-\x7e]/g, "?")
    .trim();
  return first === "" ? "Internal Server Error" : first;
}

function sendJson(
  res: ServerResponse,
  status: number,
  statusText: string,
  body: Record<string, unknown>,
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, statusText, {
    "Content-Type": JSON_TYPE,
    "Content-Length": Buffer.byteLength(text),
    Server: "pve-api-daemon/3.0",
    "Cache-Control": "max-age=0",
    Pragma: "no-cache",
    Expires: new Date().toUTCString(),
  });
  res.end(text);
}

function sendError(res: ServerResponse, err: PveError): void {
  const body: Record<string, unknown> = { data: null, message: `${err.message}\n` };
  if (err.errors) body["errors"] = err.errors;
  sendJson(res, err.status, reason(err.message), body);
}

async function handle(
  dir: string,
  localNode: string,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  // Kept-alive connections opened before the fault must go dark too.
  const down = apiDownMode(dir);
  if (down === "close") {
    req.socket.destroy();
    return;
  }
  if (down === "hang") return;
  const url = new URL(req.url ?? "/", "https://localhost");
  const method = req.method ?? "GET";
  // The end is logged once the answer is handed to the socket, before any later request is read.
  const call = await beginCall(dir, "api", method, uriUnescape(url.pathname.slice(API_PREFIX.length)) || "/");
  try {
    const down = call.faults.find((f) => f.name === "api_down");
    if (down) {
      // pveproxy went away while this request was in flight: the connection drops, nothing is answered.
      await countCallFault(dir, down);
      req.socket.destroy();
      return;
    }
    await serve(dir, localNode, req, res, url, method, call.faults);
  } finally {
    await call.end();
  }
}

async function serve(
  dir: string,
  localNode: string,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  method: string,
  armed: Fault[],
): Promise<void> {
  const control = readControl(dir);
  if (control.api_latency_ms > 0) await sleep(control.api_latency_ms);
  if (!url.pathname.startsWith(API_PREFIX)) {
    res.writeHead(404, "Not Found", { Server: "pve-api-daemon/3.0" });
    res.end();
    return;
  }
  // pve-http-server unescapes the whole path before routing (AnyEvent.pm:1452); pvesh never does.
  const path = uriUnescape(url.pathname.slice(API_PREFIX.length)) || "/";
  try {
    const aimed = armed.find((f) => f.name === "http500");
    if (aimed) await countCallFault(dir, aimed);
    const injected = aimed
      ? aimed
      : !control.faults.some((f) => f.name === "http500" && f.args["call"] === undefined)
        ? undefined
        : await withState(dir, (state) =>
            findFault(
              state,
              control,
              "http500",
              (a) => {
                if (a["call"] !== undefined) return false;
                if (a["method"] && a["method"].toUpperCase() !== method) return false;
                const pattern = a["path"] ?? "";
                if (
                  pattern.startsWith("/") &&
                  pattern.endsWith("/") &&
                  pattern.length > 1 &&
                  pattern !== "/"
                ) {
                  return new RegExp(pattern.slice(1, -1)).test(path);
                }
                return path.includes(pattern);
              },
              { consume: true },
            ),
          );
    if (injected) throw new PveError(500, injected.args["message"] || "simulated internal error");
    const params = await requestParams(req, url);
    const result = await callApi(dir, {
      method,
      path,
      params,
      auth: { header: req.headers.authorization },
      localNode,
    });
    sendJson(res, 200, "OK", { data: result.data ?? null, ...(result.extra ?? {}) });
  } catch (err) {
    if (err instanceof AuthFailure) {
      if (control.auth_fail_delay_ms > 0) await sleep(control.auth_fail_delay_ms);
      res.writeHead(401, reason(err.reason), { Server: "pve-api-daemon/3.0", "Content-Length": 0 });
      res.end();
      return;
    }
    if (err instanceof PveError) {
      sendError(res, err);
      return;
    }
    sendError(res, new PveError(500, err instanceof Error ? err.message : String(err)));
  }
}

/**
 * URI::Escape's uri_unescape: each `%XX` becomes that byte, anything else (a stray '%') stays; the
 * bytes are then read as UTF-8.
 */
export function uriUnescape(text: string): string {
  const src = Buffer.from(text, "utf8");
  const out: number[] = [];
  for (let i = 0; i < src.length; i++) {
    const hex = src[i] === 0x25 ? src.subarray(i + 1, i + 3).toString("latin1") : "";
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      out.push(Number.parseInt(hex, 16));
      i += 2;
    } else {
      out.push(src[i]!);
    }
  }
  return Buffer.from(out).toString("utf8");
}

function apiDownMode(dir: string): "close" | "hang" | undefined {
  try {
    const now = Date.now();
    const fault = readControl(dir).faults.find(
      (f) =>
        f.name === "api_down" &&
        f.args["call"] === undefined &&
        (f.args["ms"] === undefined || now < f.since + Number(f.args["ms"])),
    );
    if (!fault) return undefined;
    return fault.args["mode"] === "hang" ? "hang" : "close";
  } catch {
    return undefined;
  }
}

/** Starts the HTTPS server on 127.0.0.1 (port 0 = any free port) and writes DIR/api.json. */
export async function startServer(
  dir: string,
  opts: { port?: number; host?: string } = {},
): Promise<RunningServer> {
  const files = await ensureTls(dir);
  const localNode = process.env["PVESIM_NODE"] ?? readState(dir).nodes[0]!.name;
  const sockets = new Set<Socket>();
  const server = createServer(
    { key: readFileSync(files.keyPath), cert: readFileSync(files.certPath), keepAlive: true },
    (req, res) => {
      handle(dir, localNode, req, res).catch((err: unknown) => {
        if (!res.headersSent) sendError(res, new PveError(500, String(err)));
        else res.destroy();
      });
    },
  );
  server.on("tlsClientError", () => {});
  // A plain TCP front decides per connection, before any TLS, whether the "API" is reachable at all.
  const front = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    const mode = apiDownMode(dir);
    if (mode === "close") {
      socket.destroy();
      return;
    }
    // "hang": accepted and never answered, like a node whose pveproxy is wedged.
    if (mode === "hang") return;
    server.emit("connection", socket);
  });
  const host = opts.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(opts.port ?? 0, host, () => resolve());
  });
  const address = front.address();
  const port = typeof address === "object" && address ? address.port : 0;
  const url = `https://${host}:${port}/api2/json`;
  const token = readFileSync(tokenPath(dir), "utf8").trim();
  const eq = token.indexOf("=");
  const info: ApiInfo = {
    url,
    port,
    ca_path: files.caPath,
    token,
    token_id: token.slice(0, eq),
    token_secret: token.slice(eq + 1),
    node: localNode,
    pid: process.pid,
  };
  writeFileAtomic(apiInfoPath(dir), `${JSON.stringify(info, null, 2)}\n`);
  return {
    server,
    port,
    url,
    caPath: tlsFiles(dir).caPath,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.closeAllConnections();
        front.close(() => resolve());
      }),
  };
}
