import { createServer, type Server, type Socket } from "node:net";
import {
  type CancellationToken,
  createMessageConnection,
  type DataCallback,
  type Disposable,
  type Logger as JsonRpcLogger,
  type Message,
  type MessageConnection,
  type MessageReader,
  type MessageWriter,
  type ProgressToken,
  StreamMessageReader,
} from "vscode-jsonrpc/node.js";
import type { z } from "zod";
import type { ParamsOf, ResultOf } from "../../protocol/call-types.js";
import { AgentlabError } from "../../protocol/errors.js";
import { MAX_FRAME_BYTES, preview } from "../../protocol/index.js";
import type { Method } from "../../protocol/method.js";
import type { ProgressValue } from "../../protocol/progress.js";
import { progressType } from "../../protocol/wire.js";
import type { Logger } from "../log.js";
import { type DaemonMetrics, secondsSince } from "../metrics/observer.js";
import {
  BoundedWriter,
  busyError,
  type ConnectionLimits,
  clientBusyError,
  DEFAULT_CONNECTION_LIMITS,
  IdleTimer,
} from "./connection-limits.js";
import { FrameError, FrameGuard } from "./frame-guard.js";
import { FramedMessageWriter } from "./message-writer.js";
import { claimSocketPath, restrictSocket } from "./socket.js";
import { SocketPeers } from "./socket-peers.js";
import { toRpcError } from "./to-rpc-error.js";

/** Who is calling: a local socket client (trusted by its group), or a remote client and its token. */
export type Caller =
  | { transport: "socket" }
  | {
      transport: "remote";
      /** Remote address as the listener saw it. */
      address: string;
      token: { id: string; name: string };
    };

/**
 * Per-connection policy for a transport that is not trusted as a whole (the remote listener): asked
 * before each call, after its params are valid, and told how each call ended.
 */
export interface CallGate {
  /** Throw an AgentlabError to refuse the call; the handler then never runs. */
  authorize(method: Method, params: unknown): void;
  /** Called once per call, refused ones included, with the validated params when there were any. */
  finished(method: string, params: unknown, outcome: { result?: unknown; error?: unknown }): void;
}

/** One client connection over any transport: a message reader and writer, and how to end it. */
export interface RpcTransport {
  reader: MessageReader;
  writer: MessageWriter & { flushed(): Promise<void> };
  /** Close the underlying transport at once (a broken client, or the end of the drain). */
  destroy(): void;
  /** Close after the last written message went out (the drain). */
  end(): void;
  caller: Caller;
  gate?: CallGate;
}

/** What a handler gets besides its params. */
export interface CallContext {
  method: string;
  requestId: string;
  caller: Caller;
  /** Aborted when the client sends $/cancelRequest, disconnects, or the daemon stops draining. */
  signal: AbortSignal;
  log: Logger;
  /** Sends a `$/progress` notification when the client asked for progress; otherwise does nothing. */
  progress(value: ProgressValue): void;
}

export type Handler<M extends Method> = (
  params: ParamsOf<M>,
  ctx: CallContext,
) => Promise<ResultOf<M>> | ResultOf<M>;

interface Registered {
  method: Method;
  handler: (params: unknown, ctx: CallContext) => unknown;
}

interface InFlight {
  abort: AbortController;
  done: Promise<void>;
}

export interface RpcServerOptions {
  log: Logger;
  maxFrameBytes?: number;
  /** Connection count, idle time and unread-answer bounds (config rpc_*); defaults when absent. */
  limits?: Partial<ConnectionLimits>;
  /** Told each call's method, outcome and time (metrics_listen). */
  metrics?: Pick<DaemonMetrics, "rpcCall">;
  /** Finds the user behind a socket connection (rpc_max_connections_per_client); tests replace it. */
  peers?: SocketPeers;
}

/**
 * A call that succeeds in less time is logged (`rpc ok`) at debug, a slower one at info. At info for
 * every call, 200 clients reading sandboxes made the line a fifth of the daemon's time (a synchronous
 * write, the redactor, a child logger per call), and a few hundred calls a second pass journald's
 * default rate limit (10,000 lines per 30 s per service), past which it drops the daemon's warnings too.
 * Failures (`rpc failed`) stay at info or error, and what a call changes is logged by its own steps.
 */
export const SLOW_CALL_MS = 1000;

/** Issues named in one INVALID_PARAMS answer; a request with thousands of bad fields gets the first few. */
const MAX_ISSUES_SHOWN = 5;

/** A field's path as messages show it: each part shortened, since a key can be as long as a frame. */
function issuePath(issue: z.core.$ZodIssue): string {
  return issue.path.length > 0 ? issue.path.map((part) => preview(String(part))).join(".") : "(params)";
}

/**
 * One issue as `field: problem`, or `field is N characters; the limit is M` for the protocol's limits
 * (their messages start with "is"/"has" to read on from the field's name). Nothing of the value is
 * echoed beyond preview()'s first characters: unknown keys are shortened too.
 */
function issueText(issue: z.core.$ZodIssue): string {
  const path = issuePath(issue);
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.slice(0, MAX_ISSUES_SHOWN).map((key) => JSON.stringify(preview(key)));
    const more =
      issue.keys.length > MAX_ISSUES_SHOWN ? ` and ${issue.keys.length - MAX_ISSUES_SHOWN} more` : "";
    return `${path}: unknown key${issue.keys.length === 1 ? "" : "s"} ${keys.join(", ")}${more}`;
  }
  if (issue.code === "too_big" && /^(is|has) /.test(issue.message)) return `${path} ${issue.message}`;
  return `${path}: ${preview(issue.message, 200)}`;
}

/** Render zod issues as `field.path: problem` lines, so a bad param names its field. */
export function describeIssues(error: z.ZodError): string {
  const shown = error.issues.slice(0, MAX_ISSUES_SHOWN).map(issueText);
  const more = error.issues.length - shown.length;
  return `${shown.join("; ")}${more > 0 ? `; and ${more} more` : ""}`;
}

/** The issues as INVALID_PARAMS details carry them: the same few, each with its path and text. */
function issueDetails(error: z.ZodError): { path: string; message: string }[] {
  return error.issues
    .slice(0, MAX_ISSUES_SHOWN)
    .map((issue) => ({ path: issuePath(issue), message: issueText(issue) }));
}

/** A reader that refuses JSON that is not a JSON-RPC 2.0 message, so the connection closes on it. */
class StrictMessageReader extends StreamMessageReader {
  override listen(callback: DataCallback): Disposable {
    return super.listen((message: Message) => {
      const candidate = message as unknown as Record<string, unknown> | null;
      if (candidate === null || typeof candidate !== "object" || candidate.jsonrpc !== "2.0") {
        this.fireError(new FrameError("message is not a JSON-RPC 2.0 object", "malformed"));
        return;
      }
      callback(message);
    });
  }
}

/**
 * JSON-RPC over a Unix socket: one MessageConnection per client, handlers registered from the
 * protocol's method declarations, params validated before any handler runs, every failure answered
 * with {code, message, hint, details}. A client that sends a broken or oversized frame loses its own
 * connection and nobody else notices.
 */
export class RpcServer {
  private readonly handlers = new Map<string, Registered>();
  private readonly connections = new Set<{ conn: MessageConnection; transport: RpcTransport }>();
  private readonly inFlight = new Set<InFlight>();
  private readonly log: Logger;
  private readonly maxFrameBytes: number;
  private readonly limits: ConnectionLimits;
  private readonly metrics: Pick<DaemonMetrics, "rpcCall"> | undefined;
  /** Connections over the cap that are being told so (answered DAEMON_BUSY, then closed). */
  private refusing = 0;
  /** Unix-socket clients served, and those whose user is being looked up before they are. */
  private readonly socketClients = new Set<Socket>();
  private readonly socketsWaiting = new Set<Socket>();
  /** The user behind each socket client, once a lookup found it (undefined: not known). */
  private readonly socketUids = new WeakMap<Socket, number | undefined>();
  private readonly peers: SocketPeers;
  private peerLookupFailed = false;
  private server: Server | undefined;
  private draining = false;
  private nextConnection = 0;
  private nextRequest = 0;

  constructor(options: RpcServerOptions) {
    this.log = options.log;
    this.maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
    this.limits = { ...DEFAULT_CONNECTION_LIMITS, ...options.limits };
    this.metrics = options.metrics;
    this.peers = options.peers ?? new SocketPeers();
  }

  /** Whether a new client would be refused now: the remote listener asks before its WebSocket upgrade. */
  get atCapacity(): AgentlabError | undefined {
    return this.connections.size >= this.limits.maxConnections
      ? busyError(this.limits.maxConnections)
      : undefined;
  }

  register<M extends Method>(method: M, handler: Handler<M>): void {
    if (this.handlers.has(method.method)) throw new Error(`handler for ${method.method} registered twice`);
    this.handlers.set(method.method, {
      method,
      handler: handler as (params: unknown, ctx: CallContext) => unknown,
    });
  }

  /** Number of calls still running; the drain waits for this to reach zero. */
  get activeCalls(): number {
    return this.inFlight.size;
  }

  async listen(path: string): Promise<{ mode: number; group?: string }> {
    await claimSocketPath(path);
    const server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (error) => this.log.error({ err: error }, "socket server error"));
    this.server = server;
    return restrictSocket(path);
  }

  /**
   * Stop accepting connections, give running calls up to `timeoutMs` to finish, then cancel what is
   * left and give the cancelled calls up to `rollbackMs` to undo their work (a cancelled sandbox
   * create removes the VM it cloned) before closing every connection. Resolves with what happened,
   * for the shutdown log line.
   */
  async close(timeoutMs: number, rollbackMs = 30_000): Promise<{ drained: boolean; cancelled: number }> {
    this.draining = true;
    const serverClosed = this.server
      ? new Promise<void>((resolve) => this.server?.close(() => resolve()))
      : Promise.resolve();
    let drained = this.inFlight.size === 0;
    if (!drained) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      });
      const all = Promise.all([...this.inFlight].map((call) => call.done)).then(() => true as const);
      drained = await Promise.race([all, timeout]);
      clearTimeout(timer);
    }
    const cancelled = this.inFlight.size;
    for (const call of this.inFlight)
      call.abort.abort(new AgentlabError("DAEMON_SHUTTING_DOWN", "daemon is stopping"));
    // Cancelled handlers roll back and then answer their clients; wait for that, within a bound.
    if (cancelled > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...this.inFlight].map((call) => call.done)),
        new Promise((resolve) => {
          timer = setTimeout(resolve, rollbackMs);
        }),
      ]);
      clearTimeout(timer);
    }
    // A finished handler's answer is written a few event-loop turns after it returns (vscode-jsonrpc
    // queues writes behind setImmediate); let those go out, then end each socket after its last write.
    for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
    await Promise.all(
      [...this.connections].map(async ({ conn, transport }) => {
        await transport.writer.flushed();
        conn.dispose();
        transport.end();
      }),
    );
    this.connections.clear();
    await serverClosed;
    return { drained, cancelled };
  }

  /**
   * A new socket client. Only when at least rpc_max_connections_per_client socket clients are served can
   * one user be over that cap, and only then is the user behind each connection looked up (an `ss`
   * run, ./socket-peers.ts); the new client's requests wait in its socket meanwhile.
   */
  private accept(socket: Socket): void {
    const perClient = this.limits.maxConnectionsPerClient;
    if (perClient <= 0 || this.socketClients.size + this.socketsWaiting.size < perClient) {
      this.serveSocket(socket);
      return;
    }
    socket.pause();
    this.socketsWaiting.add(socket);
    const decide = (uids: Map<Socket, number | undefined>) => {
      this.socketsWaiting.delete(socket);
      for (const [known, uid] of uids) this.socketUids.set(known, uid);
      if (socket.destroyed) return;
      const uid = uids.get(socket);
      const exempt = uid === undefined || uid === 0 || uid === process.getuid?.();
      const held = exempt
        ? 0
        : [...this.socketClients].filter((client) => this.socketUids.get(client) === uid).length;
      if (!exempt && held >= perClient) {
        this.log.warn(
          { uid, max_connections_per_client: perClient },
          "refusing a client: rpc_max_connections_per_client reached for its user",
        );
        this.serveSocket(socket, clientBusyError(perClient, uid));
      } else {
        this.serveSocket(socket);
      }
    };
    this.peers.uids([socket, ...this.socketClients, ...this.socketsWaiting]).then(decide, (error) => {
      // Without `ss` (or its permission to read other processes) no user is capped; say so once.
      if (!this.peerLookupFailed) {
        this.peerLookupFailed = true;
        this.log.warn(
          { err: error },
          "cannot tell which user holds a socket connection; rpc_max_connections_per_client is not applied",
        );
      }
      decide(new Map());
    });
  }

  /** Serve a socket client, or only tell it `refusal` and close: frame guard, reader, writer, events. */
  private serveSocket(socket: Socket, refusal?: AgentlabError): void {
    const guard = new FrameGuard(this.maxFrameBytes);
    socket.pipe(guard);
    // Before the reader's own listener, so a bad frame is logged with the guard's reason.
    let connection: { drop(reason: string, error?: unknown): void } | undefined;
    guard.on("error", (error) => connection?.drop((error as Error).message, error));
    const transport: RpcTransport = {
      reader: new StrictMessageReader(guard),
      writer: new FramedMessageWriter(socket),
      destroy: () => socket.destroy(),
      end: () => {
        socket.end();
        socket.destroySoon();
      },
      caller: { transport: "socket" },
    };
    if (refusal) {
      connection = this.refuseBusy(transport, refusal);
    } else {
      connection = this.attach(transport);
      this.socketClients.add(socket);
      socket.once("close", () => this.socketClients.delete(socket));
    }
    const attached = connection;
    socket.on("error", (error) => attached.drop("socket error", error));
    socket.on("close", () => attached.drop("closed"));
  }

  /**
   * Serve one client over any transport: the Unix socket above, or a WebSocket of the remote listener.
   * Every transport gets the same handlers, validation, progress and cancellation. Returns `drop`, for the
   * transport's own error and close events.
   */
  attach(transport: RpcTransport): { drop(reason: string, error?: unknown): void } {
    if (this.draining) {
      transport.destroy();
      return { drop: () => {} };
    }
    if (this.connections.size >= this.limits.maxConnections) {
      this.log.warn(
        { max_connections: this.limits.maxConnections },
        "refusing a client: rpc_max_connections reached",
      );
      return this.refuseBusy(transport, busyError(this.limits.maxConnections));
    }
    const connectionId = ++this.nextConnection;
    const log = this.log.child({
      conn: connectionId,
      ...(transport.caller.transport === "remote"
        ? { remote: transport.caller.address, token: transport.caller.token.name }
        : {}),
    });
    let drop = (_reason: string, _error?: unknown) => {};
    const writer = new BoundedWriter(transport.writer, this.limits.maxUnsentBytes, (unsent) =>
      drop(
        `client is not reading its answers: ${unsent} bytes unsent, over the ${this.limits.maxUnsentBytes}-byte limit (rpc_max_unsent_bytes)`,
        new Error("unread answers over rpc_max_unsent_bytes"),
      ),
    );
    const conn = createMessageConnection(transport.reader, writer, jsonRpcLogger(log));
    const entry = { conn, transport };
    this.connections.add(entry);
    log.debug("client connected");
    const idle = new IdleTimer(this.limits.idleTimeoutMs, () => {
      log.info(
        `closing connection: idle for ${this.limits.idleTimeoutMs} ms with no call running (rpc_idle_timeout)`,
      );
      drop("idle");
    });

    let closed = false;
    drop = (reason: string, error?: unknown) => {
      if (closed) return;
      closed = true;
      if (error) log.warn({ err: error }, `closing connection: ${reason}`);
      else log.debug(`client disconnected`);
      idle.dispose();
      this.connections.delete(entry);
      conn.dispose();
      transport.destroy();
    };
    transport.reader.onError((error) => drop(`unreadable message: ${error.message}`, error));
    transport.reader.onClose(() => drop("closed"));
    // The reader's decode errors arrive here: say which, so the log explains the closed connection.
    conn.onError(([error]) =>
      drop(
        error instanceof SyntaxError
          ? `message is not JSON (${error.message})`
          : `connection error: ${error.message}`,
        error,
      ),
    );

    for (const { method, handler } of this.handlers.values()) {
      conn.onRequest(method.type, async (params: unknown, token: CancellationToken) => {
        idle.begin();
        try {
          return await this.dispatch(conn, log, transport, method, handler, params, token);
        } finally {
          idle.end();
        }
      });
    }
    conn.onRequest((rawMethod: string) => {
      // The name is the client's: quote only its start, or a 1 MB name would come back twice.
      const method = preview(rawMethod);
      transport.gate?.finished(method, undefined, {
        error: new AgentlabError("METHOD_NOT_FOUND", `unknown method "${method}"`),
      });
      throw toRpcError(
        new AgentlabError("METHOD_NOT_FOUND", `unknown method "${method}"`, { details: { method } }),
        method,
        "-",
      );
    });
    conn.listen();
    return { drop: (reason, error) => drop(reason, error) };
  }

  /**
   * A client over a connection cap: each request it sends is answered `refusal` (DAEMON_BUSY), and the
   * connection ends after that first answer (or after a few seconds of silence). Refusals in progress
   * are capped too, so a flood of connections is dropped outright rather than answered one by one.
   */
  private refuseBusy(
    transport: RpcTransport,
    refusal: AgentlabError,
  ): { drop(reason: string, error?: unknown): void } {
    if (this.refusing >= this.limits.maxConnections) {
      transport.destroy();
      return { drop: () => {} };
    }
    this.refusing++;
    const writer = new BoundedWriter(transport.writer, 64 * 1024, () => transport.destroy());
    const conn = createMessageConnection(transport.reader, writer, jsonRpcLogger(this.log));
    let closed = false;
    const drop = () => {
      if (closed) return;
      closed = true;
      this.refusing--;
      clearTimeout(silence);
      conn.dispose();
      transport.destroy();
    };
    const silence = setTimeout(drop, 5_000);
    silence.unref();
    writer.afterWrite = () => {
      if (closed) return;
      closed = true;
      this.refusing--;
      clearTimeout(silence);
      conn.dispose();
      transport.end();
    };
    conn.onRequest(() => {
      throw toRpcError(refusal, "-", "-");
    });
    transport.reader.onError(drop);
    transport.reader.onClose(drop);
    conn.onError(drop);
    conn.listen();
    return { drop };
  }

  private async dispatch(
    conn: MessageConnection,
    connectionLog: Logger,
    transport: RpcTransport,
    method: Method,
    handler: Registered["handler"],
    rawParams: unknown,
    token: CancellationToken,
  ): Promise<unknown> {
    const requestId = `r${++this.nextRequest}`;
    // Made on first use: a quick read that succeeds writes no line at info, and a child logger per call
    // was a measurable share of such a call's time.
    let callLog: Logger | undefined;
    const log = () => (callLog ??= connectionLog.child({ req: requestId, method: method.method }));
    const started = performance.now();
    const abort = new AbortController();
    const cancelListener = token.onCancellationRequested(() =>
      abort.abort(new AgentlabError("CANCELLED", `${method.method} cancelled by the client`)),
    );
    let finish = () => {};
    const call: InFlight = { abort, done: new Promise<void>((resolve) => (finish = resolve)) };
    this.inFlight.add(call);
    let validParams: unknown;
    try {
      if (this.draining) throw new AgentlabError("DAEMON_SHUTTING_DOWN", "daemon is stopping");
      const parsed = method.params.safeParse(rawParams ?? {});
      if (!parsed.success) {
        throw new AgentlabError(
          "INVALID_PARAMS",
          `invalid params for ${method.method}: ${describeIssues(parsed.error)}`,
          {
            details: {
              method: method.method,
              issues: issueDetails(parsed.error),
            },
          },
        );
      }
      validParams = parsed.data;
      transport.gate?.authorize(method, parsed.data);
      const progressToken = (parsed.data as { progress_token?: ProgressToken }).progress_token;
      const ctx: CallContext = {
        method: method.method,
        requestId,
        caller: transport.caller,
        // Node makes a controller's signal on first use, and making one costs more than a quick read:
        // only handlers that look at it pay (abort() still reaches a signal read afterwards).
        get signal() {
          return abort.signal;
        },
        get log() {
          return log();
        },
        progress: (value) => {
          if (progressToken === undefined || abort.signal.aborted) return;
          void conn.sendProgress(progressType, progressToken, value).catch(() => {});
        },
      };
      const result = await handler(parsed.data, ctx);
      const ms = Math.round(performance.now() - started);
      if (ms >= SLOW_CALL_MS) log().info({ ms }, "rpc ok");
      else if (connectionLog.isLevelEnabled("debug")) log().debug({ ms }, "rpc ok");
      this.metrics?.rpcCall(method.method, "success", secondsSince(started));
      transport.gate?.finished(method.method, parsed.data, { result });
      return result;
    } catch (error) {
      transport.gate?.finished(method.method, validParams, { error });
      const rpcError = toRpcError(error, method.method, requestId);
      this.metrics?.rpcCall(method.method, String(rpcError.data?.code ?? "INTERNAL"), secondsSince(started));
      const level = rpcError.data?.code === "INTERNAL" ? "error" : "info";
      log()[level](
        { ms: Math.round(performance.now() - started), code: rpcError.data?.code, err: error },
        "rpc failed",
      );
      return rpcError;
    } finally {
      cancelListener.dispose();
      this.inFlight.delete(call);
      finish();
    }
  }

  /** Methods with a handler, so a test can hold them against the protocol's list. */
  get registeredMethods(): string[] {
    return [...this.handlers.keys()];
  }
}

function jsonRpcLogger(log: Logger): JsonRpcLogger {
  return {
    error: (message) => log.warn({ source: "jsonrpc" }, message),
    warn: (message) => log.warn({ source: "jsonrpc" }, message),
    info: (message) => log.debug({ source: "jsonrpc" }, message),
    log: (message) => log.debug({ source: "jsonrpc" }, message),
  };
}
