/**
 * The guest listener (bootstrap_listen, default 10.77.0.1:8844 on the sandbox bridge): the HTTP endpoint
 * guests reach: the ready report (`POST /v1/guest/ready`), the job runner's fetch and reports
 * (`POST /v1/bootstrap/fetch`, `POST /v1/runner/report`, when jobs are wired in) and `/healthz`.
 *
 * Everything here faces the guests, which run untrusted agents: checks go cheapest first (method, source
 * subnet, rate limit) before the body is read, bodies are capped, and no input can throw out of a
 * handler. A listener that cannot bind is reported, not fatal: the daemon then finds guests through the
 * guest agent only.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { BlockList, isIP } from "node:net";
import { parseHostPort } from "../../config/net.js";
import type { Logger } from "../log.js";
import type { DaemonMetrics } from "../metrics/observer.js";
import { parseHostKeys } from "./host-keys.js";
import { DEFAULT_GUEST_RATE_LIMIT, type RateLimit, RateLimiter } from "./rate-limit.js";
import type { GuestListenerState, GuestReadiness } from "./ready-waiters.js";

export const READY_PATH = "/v1/guest/ready";
export const JOB_FETCH_PATH = "/v1/bootstrap/fetch";
export const RUNNER_REPORT_PATH = "/v1/runner/report";
/** The agent's output as it runs: `?job_id=<id>&offset=<byte offset in the job's log>`, body the bytes. */
export const RUNNER_LOG_PATH = "/v1/runner/log";
/** One artifact: `?job_id=<id>&name=<relative path>`, body the file, streamed (not capped by MAX_BODY_BYTES). */
export const RUNNER_ARTIFACT_PATH = "/v1/runner/artifact";
/** Runner reports carry a per-job bearer token; a runner sends a handful in its first seconds. */
export const RUNNER_REPORT_RATE_LIMIT: RateLimit = { qps: 5, burst: 10 };
/**
 * Log chunks (about one a second while the agent prints) and artifact uploads (one per file, in a burst
 * at the job's end) from one runner: their own bucket, so neither starves the reports.
 */
export const RUNNER_STREAM_RATE_LIMIT: RateLimit = { qps: 20, burst: 50 };
export const MAX_BODY_BYTES = 1024 * 1024;
/** Upstream's ReadHeaderTimeout and IdleTimeout. */
export const HEADERS_TIMEOUT_MS = 5_000;
export const IDLE_TIMEOUT_MS = 120_000;
/** A report is a few hundred bytes; a client still sending after this is not a guest reporting. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** Past this, an oversized body is no longer drained (so the 400 can be read) but cut off. */
const DRAIN_LIMIT_BYTES = 16 * MAX_BODY_BYTES;

export const REFUSED = {
  subnet: "bootstrap access restricted to agent subnet",
  rateLimit: "rate limit exceeded",
  token: "invalid or expired bootstrap token",
} as const;

export interface GuestListenerOptions {
  /** config.bootstrap_listen (host:port; port 0 picks a free one). */
  listen: string;
  /** config.agent_subnet: only sources inside it may report. */
  agentSubnet: string;
  readiness: GuestReadiness;
  log: Logger;
  /** Per source IP; default 1 per second, burst 3, as upstream. */
  rateLimit?: RateLimit;
  /** Time for the rate limiter, in epoch ms; tests step it. */
  now?: () => number;
  /** The job runner's endpoints; without it they answer 404 like any unknown path. */
  jobs?: GuestJobEndpoints;
  /** Told each request's route and status (metrics_listen). */
  metrics?: Pick<DaemonMetrics, "guestRequest">;
}

/** The routes requests are counted by; anything else is `other`, so a scanner cannot add series. */
const ROUTES: ReadonlySet<string> = new Set([
  "/healthz",
  READY_PATH,
  JOB_FETCH_PATH,
  RUNNER_REPORT_PATH,
  RUNNER_LOG_PATH,
  RUNNER_ARTIFACT_PATH,
]);

/** An answer to a guest: HTTP status and JSON body. */
export interface GuestAnswer {
  status: number;
  body: Record<string, unknown>;
}

/**
 * What the job runner talks to (docs/jobs.md): the fetch of its job with the job token, and its status
 * reports with the per-job report token. They get the body as text, already capped and past the subnet
 * and rate-limit checks, and must not throw for bad input.
 */
export interface GuestJobEndpoints {
  fetch(body: string): Promise<GuestAnswer> | GuestAnswer;
  report(body: string, bearer: string | undefined): Promise<GuestAnswer> | GuestAnswer;
  /** A chunk of the agent's output (raw bytes, possibly empty: the runner asking whether to go on). */
  log?(query: URLSearchParams, bearer: string | undefined, body: Buffer): Promise<GuestAnswer> | GuestAnswer;
  /**
   * One artifact, its body still unread: the endpoint streams it to disk. What it leaves unread (a
   * refusal) is drained or cut off by the listener.
   */
  upload?(
    query: URLSearchParams,
    bearer: string | undefined,
    declaredLength: number | undefined,
    body: IncomingMessage,
  ): Promise<GuestAnswer>;
}

/** A ready report as the guest sends it. */
export interface ReadyReport {
  vmid: number;
  token: string;
  ip?: string;
  /** The guest's SSH host keys as "type base64" (comments dropped); absent when it sent none. */
  host_keys?: string[];
}

const REPORT_FIELDS = ["vmid", "token", "ip", "host_keys"];
const REPORT_SHAPE =
  '{"vmid": <number>, "token": "<token from /etc/agentlab/bootstrap.json>", "ip": "<optional>", "host_keys": ["<optional: ssh-ed25519 AAAA...>"]}';

/** Parse and check a report body; the error text is what the guest gets back with a 400. */
export function parseReadyReport(body: string): { report: ReadyReport } | { error: string } {
  if (body.trim() === "") return { error: `request body is empty; expected JSON ${REPORT_SHAPE}` };
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (error) {
    return {
      error: `request body is not valid JSON (${(error as Error).message}); expected ${REPORT_SHAPE}`,
    };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { error: `request body must be a JSON object: ${REPORT_SHAPE}` };
  }
  const fields = value as Record<string, unknown>;
  const unknown = Object.keys(fields).find((key) => !REPORT_FIELDS.includes(key));
  if (unknown !== undefined) {
    return { error: `unknown field ${JSON.stringify(unknown)}; allowed fields: ${REPORT_FIELDS.join(", ")}` };
  }
  const { vmid, token, ip } = fields;
  if (token === undefined || token === null || token === "") return { error: "token is required" };
  if (typeof token !== "string") return { error: "token must be a string" };
  if (vmid === undefined || vmid === null) return { error: "vmid is required" };
  if (typeof vmid !== "number" || !Number.isSafeInteger(vmid)) {
    return { error: "vmid must be a whole number (the VMID from /etc/agentlab/bootstrap.json)" };
  }
  if (vmid <= 0) return { error: "vmid must be positive" };
  if (ip !== undefined && ip !== null && (typeof ip !== "string" || isIP(plainAddress(ip)) === 0)) {
    return { error: "ip must be an IPv4 or IPv6 address, or left out" };
  }
  let hostKeys: string[] | undefined;
  if (fields.host_keys !== undefined && fields.host_keys !== null) {
    const parsed = parseHostKeys(fields.host_keys);
    if ("error" in parsed) return parsed;
    hostKeys = parsed.keys;
  }
  return {
    report: {
      vmid,
      token,
      ...(typeof ip === "string" ? { ip: plainAddress(ip) } : {}),
      ...(hostKeys !== undefined && hostKeys.length > 0 ? { host_keys: hostKeys } : {}),
    },
  };
}

/** An IPv4-mapped IPv6 address (`::ffff:10.77.0.5`, how a dual-stack socket shows IPv4) as plain IPv4. */
export function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

/** A membership test for one CIDR (IPv4 or IPv6; host bits allowed). An empty or bad CIDR matches nothing. */
export function subnetMatcher(cidr: string): (address: string) => boolean {
  const match = /^([^/\s]+)\/(\d{1,3})$/.exec(cidr.trim());
  const family = match ? isIP(match[1]!) : 0;
  if (!match || family === 0) return () => false;
  const list = new BlockList();
  try {
    list.addSubnet(match[1]!, Number(match[2]), family === 4 ? "ipv4" : "ipv6");
  } catch {
    return () => false;
  }
  return (address) => {
    const plain = plainAddress(address);
    const kind = isIP(plain);
    return kind !== 0 && list.check(plain, kind === 4 ? "ipv4" : "ipv6");
  };
}

export class GuestListener {
  readonly #options: GuestListenerOptions;
  readonly #inSubnet: (address: string) => boolean;
  readonly #limiter: RateLimiter;
  readonly #reportLimiter: RateLimiter;
  readonly #streamLimiter: RateLimiter;
  #server: Server | undefined;
  #state: GuestListenerState;

  constructor(options: GuestListenerOptions) {
    this.#options = options;
    this.#inSubnet = subnetMatcher(options.agentSubnet);
    this.#limiter = new RateLimiter(options.rateLimit ?? DEFAULT_GUEST_RATE_LIMIT, options.now);
    this.#reportLimiter = new RateLimiter(RUNNER_REPORT_RATE_LIMIT, options.now);
    this.#streamLimiter = new RateLimiter(RUNNER_STREAM_RATE_LIMIT, options.now);
    this.#state = { address: options.listen, listening: false, error: "not started" };
  }

  state(): GuestListenerState {
    return { ...this.#state };
  }

  /**
   * Bind and serve. Never rejects: a bind failure (the bridge address missing, the port taken) is logged
   * with its fix and returned as the state; the daemon runs on without phone-home.
   */
  async start(): Promise<GuestListenerState> {
    const { listen, log } = this.#options;
    const hostPort = parseHostPort(listen);
    if (hostPort === undefined) {
      return this.#settle({
        address: listen,
        listening: false,
        error: `bootstrap_listen ${listen} is not host:port`,
      });
    }
    const server = createServer({ connectionsCheckingInterval: 1_000 }, (req, res) => this.#handle(req, res));
    server.headersTimeout = HEADERS_TIMEOUT_MS;
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.keepAliveTimeout = IDLE_TIMEOUT_MS;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host: hostPort.host === "" ? undefined : hostPort.host, port: hostPort.port }, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (error) {
      const { reason, hint } = bindFailure(error as NodeJS.ErrnoException, listen, hostPort.port);
      const state = {
        address: listen,
        listening: false,
        error: `cannot listen on ${listen}: ${reason}`,
        hint,
      };
      log.warn(
        { address: listen, code: (error as NodeJS.ErrnoException).code, hint },
        `guest listener not started: ${state.error}; guests are found through the guest agent only. Fix: ${hint}`,
      );
      return this.#settle(state);
    }
    // After a successful bind, a server error (e.g. EMFILE on accept) must not take the daemon down.
    server.on("error", (error) => log.error({ err: error }, "guest listener error"));
    this.#server = server;
    const bound = server.address();
    const port = typeof bound === "object" && bound !== null ? bound.port : hostPort.port;
    const host = hostPort.host === "" ? "0.0.0.0" : hostPort.host;
    const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
    log.info({ address: listen, url, agent_subnet: this.#options.agentSubnet }, "guest listener up");
    return this.#settle({ address: listen, listening: true, url });
  }

  /** Stop accepting; requests in flight get `graceMs` to finish, then their connections are cut. */
  async close(graceMs = 2_000): Promise<void> {
    const server = this.#server;
    if (server === undefined) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const timer = setTimeout(() => server.closeAllConnections(), graceMs);
    try {
      await closed;
    } finally {
      clearTimeout(timer);
    }
    this.#settle({ address: this.#options.listen, listening: false, error: "stopped" });
  }

  #settle(state: GuestListenerState): GuestListenerState {
    this.#state = state;
    this.#options.readiness.setListener(state);
    return this.state();
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    try {
      const [path, search] = (req.url ?? "/").split("?", 2) as [string, string | undefined];
      const metrics = this.#options.metrics;
      if (metrics) {
        const route = ROUTES.has(path) ? path : "other";
        res.once("finish", () => metrics.guestRequest(route, res.statusCode));
      }
      if (path === "/healthz") {
        if (req.method !== "GET" && req.method !== "HEAD") {
          send(res, 405, { error: "method not allowed; use GET" }, { Allow: "GET, HEAD" });
        } else {
          send(res, 200, "ok");
        }
        return;
      }
      if (path === READY_PATH) {
        void this.#post(req, res, this.#limiter, (body, source) => this.#ready(body, source), {
          byVmid: true,
        }).catch((error) => this.#internal(res, error));
        return;
      }
      const jobs = this.#options.jobs;
      if (jobs && path === JOB_FETCH_PATH) {
        void this.#post(req, res, this.#limiter, (body) => jobs.fetch(body), { byVmid: true }).catch(
          (error) => this.#internal(res, error),
        );
        return;
      }
      if (jobs && path === RUNNER_REPORT_PATH) {
        const bearer = bearerToken(req.headers.authorization);
        void this.#post(req, res, this.#reportLimiter, (body) => jobs.report(body, bearer), { bearer }).catch(
          (error) => this.#internal(res, error),
        );
        return;
      }
      if (jobs?.log && path === RUNNER_LOG_PATH) {
        const log = jobs.log.bind(jobs);
        const bearer = bearerToken(req.headers.authorization);
        const query = new URLSearchParams(search ?? "");
        void this.#post(req, res, this.#streamLimiter, (_body, _source, raw) => log(query, bearer, raw), {
          bearer,
        }).catch((error) => this.#internal(res, error));
        return;
      }
      if (jobs?.upload && path === RUNNER_ARTIFACT_PATH) {
        void this.#upload(req, res, jobs.upload.bind(jobs), new URLSearchParams(search ?? "")).catch(
          (error) => this.#internal(res, error),
        );
        return;
      }
      send(res, 404, { error: `no such endpoint: ${req.method} ${path}` });
    } catch (error) {
      this.#internal(res, error);
    }
  }

  /**
   * The checks every guest POST goes through, cheapest first (method, source subnet, rate limit, body
   * size), then `answer` with the body text.
   */
  async #post(
    req: IncomingMessage,
    res: ServerResponse,
    limiter: RateLimiter,
    answer: (body: string, source: string, raw: Buffer) => Promise<GuestAnswer> | GuestAnswer,
    keys: { bearer?: string | undefined; byVmid?: boolean } = {},
  ): Promise<void> {
    const source = this.#admit(req, res, limiter, keys.bearer);
    if (source === undefined) return;
    let body: Buffer | undefined;
    try {
      body = await readBody(req);
    } catch (error) {
      // The client went away mid-body: nobody is left to answer.
      this.#options.log.debug({ source, err: error }, "guest request: body not received");
      return;
    }
    if (body === undefined) {
      sendAndDrain(req, res, 400, { error: `request body too large (limit ${MAX_BODY_BYTES} bytes)` });
      return;
    }
    const text = body.toString("utf8");
    // The VMID a request is about has its own bucket too: guessing one sandbox's token from many
    // addresses is as slow as from one.
    const vmid = keys.byVmid ? vmidOf(text) : undefined;
    if (vmid !== undefined && !limiter.allow(`vmid:${vmid}`)) {
      send(res, 429, { error: REFUSED.rateLimit }, { "Retry-After": "1" });
      return;
    }
    const { status, body: reply } = await answer(text, source, body);
    send(res, status, reply);
  }

  /**
   * Method, source subnet and rate limit (per source address, and per credential when the request
   * carries one); the source address when admitted, else the refusal is sent.
   */
  #admit(
    req: IncomingMessage,
    res: ServerResponse,
    limiter: RateLimiter,
    bearer?: string,
  ): string | undefined {
    if (req.method !== "POST") {
      send(res, 405, { error: "method not allowed; use POST" }, { Allow: "POST" });
      return undefined;
    }
    const source = plainAddress(req.socket.remoteAddress ?? "");
    if (!this.#inSubnet(source)) {
      send(res, 403, { error: REFUSED.subnet });
      return undefined;
    }
    const credential = bearer === undefined ? undefined : `credential:${credentialKey(bearer)}`;
    if (!limiter.allow(source) || (credential !== undefined && !limiter.allow(credential))) {
      send(res, 429, { error: REFUSED.rateLimit }, { "Retry-After": "1" });
      return undefined;
    }
    return source;
  }

  /** An artifact upload: the same checks as every POST, then the body is the endpoint's to stream. */
  async #upload(
    req: IncomingMessage,
    res: ServerResponse,
    upload: NonNullable<GuestJobEndpoints["upload"]>,
    query: URLSearchParams,
  ): Promise<void> {
    const bearer = bearerToken(req.headers.authorization);
    if (this.#admit(req, res, this.#streamLimiter, bearer) === undefined) return;
    const declared = Number(req.headers["content-length"]);
    const answer = await upload(
      query,
      bearer,
      Number.isSafeInteger(declared) && declared >= 0 ? declared : undefined,
      req,
    );
    // A refusal before (or in the middle of) the body: the runner still gets the answer, not a reset.
    if (!req.readableEnded) sendAndDrain(req, res, answer.status, answer.body);
    else send(res, answer.status, answer.body);
  }

  #ready(body: string, source: string): GuestAnswer {
    const parsed = parseReadyReport(body);
    if ("error" in parsed) return { status: 400, body: { error: parsed.error } };
    const { vmid, token, ip: reported, host_keys: hostKeys } = parsed.report;
    // The guest's own word for its address counts only inside the agent subnet; else the socket's.
    const ip = reported !== undefined && this.#inSubnet(reported) ? reported : source;
    if (!this.#options.readiness.report(vmid, token, ip, hostKeys)) {
      this.#options.log.info({ vmid, source }, `guest ready report refused: ${REFUSED.token}`);
      return { status: 403, body: { error: REFUSED.token } };
    }
    return { status: 200, body: { vmid, ip } };
  }

  #internal(res: ServerResponse, error: unknown): void {
    this.#options.log.error({ err: error }, "guest listener: request failed");
    send(res, 500, { error: "internal error; see the agentlabd log" });
  }
}

/** A bucket key for a credential: its hash, so the limiter's map holds no secrets. */
function credentialKey(bearer: string): string {
  return createHash("sha256").update(bearer).digest("hex").slice(0, 32);
}

/** The `vmid` of a JSON body when it is a positive whole number; else undefined (the endpoint says why). */
function vmidOf(text: string): number | undefined {
  try {
    const vmid = (JSON.parse(text) as { vmid?: unknown } | null)?.vmid;
    return typeof vmid === "number" && Number.isSafeInteger(vmid) && vmid > 0 ? vmid : undefined;
  } catch {
    return undefined;
  }
}

/** The token of an `Authorization: Bearer <token>` header, if there is one. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "");
  return match?.[1];
}

/** The body, or undefined when it is longer than MAX_BODY_BYTES (then it is left unread). */
function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        cleanup();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onError = (error: Error) => {
      cleanup();
      reject(error);
    };
    const cleanup = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
  });
}

function send(
  res: ServerResponse,
  status: number,
  body: string | Record<string, unknown>,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = typeof body === "string" ? body : `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    "Content-Type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
    "Content-Length": Buffer.byteLength(text),
    "Cache-Control": "no-store",
    ...headers,
  });
  res.end(text);
}

/**
 * Answer before the body was read, then read and discard what the client still sends (up to a cap),
 * so it sees the answer instead of a reset connection; the connection is not reused.
 */
function sendAndDrain(
  req: IncomingMessage,
  res: ServerResponse,
  status: number,
  body: Record<string, unknown>,
): void {
  send(res, status, body, { Connection: "close" });
  let drained = 0;
  req.on("data", (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > DRAIN_LIMIT_BYTES) req.socket.destroy();
  });
  req.on("error", () => {});
  req.resume();
}

function bindFailure(
  error: NodeJS.ErrnoException,
  address: string,
  port: number,
): { reason: string; hint: string } {
  switch (error.code) {
    case "EADDRNOTAVAIL":
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return {
        reason: "no interface of this host has that address",
        hint: `create the sandbox bridge with it (sudo scripts/net/setup_vmbr1.sh --apply, or sudo agentlab init --apply) or set bootstrap_listen to an address this host has, then restart agentlabd`,
      };
    case "EADDRINUSE":
      return {
        reason: "the port is already in use",
        hint: `stop what listens there (ss -ltnp 'sport = :${port}') or pick another port in bootstrap_listen, then restart agentlabd`,
      };
    case "EACCES":
      return {
        reason: "permission denied",
        hint: `ports below 1024 need root; run agentlabd as root or use a higher port in bootstrap_listen (now ${address})`,
      };
    default:
      return {
        reason: error.message,
        hint: "check bootstrap_listen in config.yaml, then restart agentlabd",
      };
  }
}
