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
  StreamMessageWriter,
} from "vscode-jsonrpc/node.js";
import type { z } from "zod";
import { AgentlabError } from "../../protocol/errors.js";
import { MAX_FRAME_BYTES } from "../../protocol/index.js";
import type { Method, ParamsOf, ResultOf } from "../../protocol/method.js";
import { type ProgressValue, progressType } from "../../protocol/progress.js";
import type { Logger } from "../log.js";
import { FrameError, FrameGuard } from "./frame-guard.js";
import { claimSocketPath, restrictSocket } from "./socket.js";
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
}

/** Render zod issues as `field.path: problem` lines, so a bad param names its field. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "(params)"}: ${issue.message}`)
    .join("; ");
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
 * A writer that remembers the writes still in progress, so shutdown can let the last answers reach
 * their clients before the sockets close.
 */
class TrackingMessageWriter extends StreamMessageWriter {
  private readonly pending = new Set<Promise<void>>();

  override write(message: Message): Promise<void> {
    const written = super.write(message);
    this.pending.add(written);
    const forget = () => this.pending.delete(written);
    written.then(forget, forget);
    return written;
  }

  async flushed(): Promise<void> {
    await Promise.allSettled([...this.pending]);
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
  private server: Server | undefined;
  private draining = false;
  private nextConnection = 0;
  private nextRequest = 0;

  constructor(options: RpcServerOptions) {
    this.log = options.log;
    this.maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
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

  private accept(socket: Socket): void {
    const guard = new FrameGuard(this.maxFrameBytes);
    socket.pipe(guard);
    // Before the reader's own listener, so a bad frame is logged with the guard's reason.
    let connection: { drop(reason: string, error?: unknown): void } | undefined;
    guard.on("error", (error) => connection?.drop((error as Error).message, error));
    const reader = new StrictMessageReader(guard);
    connection = this.attach({
      reader,
      writer: new TrackingMessageWriter(socket),
      destroy: () => socket.destroy(),
      end: () => {
        socket.end();
        socket.destroySoon();
      },
      caller: { transport: "socket" },
    });
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
    const connectionId = ++this.nextConnection;
    const log = this.log.child({
      conn: connectionId,
      ...(transport.caller.transport === "remote"
        ? { remote: transport.caller.address, token: transport.caller.token.name }
        : {}),
    });
    const conn = createMessageConnection(transport.reader, transport.writer, jsonRpcLogger(log));
    const entry = { conn, transport };
    this.connections.add(entry);
    log.debug("client connected");

    let closed = false;
    const drop = (reason: string, error?: unknown) => {
      if (closed) return;
      closed = true;
      if (error) log.warn({ err: error }, `closing connection: ${reason}`);
      else log.debug(`client disconnected`);
      this.connections.delete(entry);
      conn.dispose();
      transport.destroy();
    };
    transport.reader.onError((error) => drop(`unreadable message: ${error.message}`, error));
    transport.reader.onClose(() => drop("closed"));
    conn.onError(([error]) => drop("connection error", error));

    for (const { method, handler } of this.handlers.values()) {
      conn.onRequest(method.type, (params: unknown, token: CancellationToken) =>
        this.dispatch(conn, log, transport, method, handler, params, token),
      );
    }
    conn.onRequest((method: string) => {
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
    const log = connectionLog.child({ req: requestId, method: method.method });
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
              issues: parsed.error.issues.map((i) => ({ path: i.path.join("."), message: i.message })),
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
        signal: abort.signal,
        log,
        progress: (value) => {
          if (progressToken === undefined || abort.signal.aborted) return;
          void conn.sendProgress(progressType, progressToken, value).catch(() => {});
        },
      };
      const result = await handler(parsed.data, ctx);
      log.info({ ms: Math.round(performance.now() - started) }, "rpc ok");
      transport.gate?.finished(method.method, parsed.data, { result });
      return result;
    } catch (error) {
      transport.gate?.finished(method.method, validParams, { error });
      const rpcError = toRpcError(error, method.method, requestId);
      const level = rpcError.data?.code === "INTERNAL" ? "error" : "info";
      log[level](
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
