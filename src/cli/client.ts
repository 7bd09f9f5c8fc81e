import { statSync } from "node:fs";
import { connect, type Socket } from "node:net";
import {
  createMessageConnection,
  type MessageConnection,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-jsonrpc/node.js";
import type { ParamsOf, ResultOf } from "../protocol/call-types.js";
import { AgentlabError } from "../protocol/errors.js";
import type { Wire } from "../protocol/method.js";
import type { ProgressValue } from "../protocol/progress.js";
import { fromResponseError, sendRequest } from "../protocol/request.js";
import { formatDuration } from "../protocol/units.js";
import type { Connection } from "./remote/connection.js";

type RemoteConnection = Extract<Connection, { kind: "remote" }>;

interface OpenTransport {
  conn: MessageConnection;
  close(): void;
  /** For messages: the socket path or the endpoint. */
  where: Record<string, string>;
  closedHint: string;
}

async function openTransport(options: CallOptions): Promise<OpenTransport> {
  if (options.remote) {
    const remote = options.remote;
    // Only a remote daemon needs TLS and the WebSocket adapters: loading node:tls and node:https is a
    // noticeable part of a local command's start-up, so they come in here, not at import.
    const [{ openRemote }, { WebSocketMessageReader, WebSocketMessageWriter }] = await Promise.all([
      import("./remote/transport.js"),
      import("../protocol/websocket.js"),
    ]);
    const ws = await openRemote(remote, options.timeoutMs);
    return {
      conn: createMessageConnection(new WebSocketMessageReader(ws), new WebSocketMessageWriter(ws)),
      close: () => ws.terminate(),
      where: { endpoint: remote.endpoint },
      closedHint: `the daemon may have stopped or restarted, or a proxy in front of ${remote.endpoint} closed the WebSocket (check its read timeout)`,
    };
  }
  const socket = await openSocket(options.socketPath);
  return {
    conn: createMessageConnection(new StreamMessageReader(socket), new StreamMessageWriter(socket)),
    close: () => socket.destroy(),
    where: { socket: options.socketPath },
    closedHint:
      "the daemon may have stopped or restarted: systemctl status agentlabd; journalctl -u agentlabd -n 50",
  };
}

export interface CallOptions {
  socketPath: string;
  /** A remote daemon (agentlab connect, --endpoint): used instead of socketPath when set. */
  remote?: RemoteConnection;
  /** Longest silence from the daemon before giving up; progress notifications count as an answer. */
  timeoutMs: number;
  onProgress?: (value: ProgressValue) => void;
  /** Aborting cancels the call on the daemon ($/cancelRequest) and waits for its answer. */
  signal?: AbortSignal;
}

function isSocketFile(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

function unreachable(path: string, reason: string, cause: unknown): AgentlabError {
  return new AgentlabError("DAEMON_UNREACHABLE", `invalid socket path ${path}: ${reason}`, {
    hint: [
      "1. check the daemon: systemctl status agentlabd",
      `2. check the socket file: ls -l ${path}`,
      "3. start the daemon if stopped: systemctl start agentlabd",
      "(a socket elsewhere: pass --socket PATH or set AGENTLAB_SOCKET)",
    ].join("\n"),
    details: { socket: path },
    cause,
  });
}

/** Explain a failed connect by its errno: nobody listening, wrong path, or no permission. */
export function connectError(path: string, error: NodeJS.ErrnoException): AgentlabError {
  switch (error.code) {
    case "ENOENT":
      return unreachable(path, "no such socket file (is agentlabd running?)", error);
    case "ECONNREFUSED":
      // Linux answers ECONNREFUSED for a regular file too; say which of the two it is.
      if (!isSocketFile(path)) return unreachable(path, "it is not a socket", error);
      return unreachable(path, "nothing is listening on it (agentlabd stopped or crashed)", error);
    case "ENOTSOCK":
    case "ENOTDIR":
      return unreachable(path, "it is not a socket", error);
    case "EACCES":
    case "EPERM": {
      const user = process.env.USER ?? process.env.LOGNAME ?? "$USER";
      return new AgentlabError("SOCKET_PERMISSION", `permission denied on socket ${path}`, {
        hint: `join the agentlab group: sudo usermod -aG agentlab ${user}, then log in again (or run as root)`,
        details: { socket: path, user },
        cause: error,
      });
    }
    default:
      return unreachable(path, `${error.code ?? "error"}: ${error.message}`, error);
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once("connect", () => {
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (error) => reject(connectError(path, error)));
  });
}

export { fromResponseError };

/**
 * One request to the daemon over a fresh connection: connect, send, wait for the answer with an
 * inactivity timeout, check it against the result schema when the method carries one, close. Failures
 * come back as AgentlabErrors with the troubleshooting guide's wording.
 */
export async function call<M extends Wire>(
  options: CallOptions,
  method: M,
  params: Omit<ParamsOf<M>, "progress_token">,
): Promise<ResultOf<M>> {
  const transport = await openTransport(options);
  const conn = transport.conn;
  // The timeout cancels the call on the daemon as Ctrl-C does, and answers at once.
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let rejectCall: (error: AgentlabError) => void = () => {};
  const failed = new Promise<never>((_, reject) => (rejectCall = reject));
  const armTimer = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      abort.abort();
      rejectCall(
        new AgentlabError("DAEMON_TIMEOUT", "timeout waiting for daemon response", {
          details: {
            method: method.method,
            timeout: formatDuration(options.timeoutMs),
            ...transport.where,
          },
        }),
      );
    }, options.timeoutMs);
  };
  conn.onClose(() =>
    rejectCall(
      new AgentlabError(
        "DAEMON_UNREACHABLE",
        `agentlabd closed the connection before answering ${method.method}`,
        { hint: transport.closedHint, details: { method: method.method, ...transport.where } },
      ),
    ),
  );
  const onAbort = () => abort.abort();
  if (options.signal?.aborted) abort.abort();
  options.signal?.addEventListener("abort", onAbort);
  const onProgress = options.onProgress;
  conn.listen();
  armTimer();
  try {
    return await sendRequest(conn, method, params, {
      signal: abort.signal,
      failed,
      ...(onProgress
        ? {
            onProgress: (value: ProgressValue) => {
              armTimer();
              onProgress(value);
            },
          }
        : {}),
    });
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
    conn.dispose();
    transport.close();
  }
}
