/**
 * What one client may cost the daemon, whatever transport it came over: a bounded backlog of answers it
 * has not read, and a connection that does nothing is closed after a while. The connection count itself
 * is kept by RpcServer, which owns the set of connections.
 */
import type { Disposable, Message, MessageWriter } from "vscode-jsonrpc";
import { AgentlabError } from "../../protocol/errors.js";
import type { EncodedMessageWriter } from "./message-writer.js";

export interface ConnectionLimits {
  /** Clients served at once (Unix socket and remote listener together). */
  maxConnections: number;
  /**
   * Unix-socket connections one user may hold at once (root and the daemon's own user are not held to
   * it); 0 is no such cap. Keeps one member of the socket's group from taking every slot.
   */
  maxConnectionsPerClient: number;
  /** Close a connection with no call running and nothing received for this long; 0 never does. */
  idleTimeoutMs: number;
  /** Bytes of answers written but not yet taken by the client's socket; past this it is dropped. */
  maxUnsentBytes: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 256,
  maxConnectionsPerClient: 64,
  idleTimeoutMs: 10 * 60_000,
  maxUnsentBytes: 16 * 1024 * 1024,
};

/** The refusal a client gets when every connection slot is taken. */
export function busyError(maxConnections: number): AgentlabError {
  return new AgentlabError(
    "DAEMON_BUSY",
    `agentlabd is serving its maximum of ${maxConnections} clients (rpc_max_connections); this connection was refused`,
    { details: { max_connections: maxConnections } },
  );
}

/** The refusal a socket client gets when its user already holds rpc_max_connections_per_client. */
export function clientBusyError(maxPerClient: number, uid: number): AgentlabError {
  return new AgentlabError(
    "DAEMON_BUSY",
    `user ${uid} already has ${maxPerClient} connections open to agentlabd (rpc_max_connections_per_client); this connection was refused`,
    {
      hint: "close some of this user's agentlab connections (a stuck script, followed logs), or raise rpc_max_connections_per_client in the daemon's config",
      details: { max_connections_per_client: maxPerClient, uid },
    },
  );
}

/**
 * A writer that counts the bytes handed to it and not yet written out. vscode-jsonrpc queues a message
 * until the previous one reached the socket, so a client that never reads makes that queue grow in the
 * daemon's memory, not in the socket: this is where it can be seen. Past `maxUnsentBytes` it calls
 * `overflow` (which drops the connection) instead of letting the queue grow.
 */
export class BoundedWriter<W extends MessageWriter & { flushed(): Promise<void> }> implements MessageWriter {
  private unsent = 0;
  private overflowed = false;
  /** Called after each message went out (used to end refused connections after their one answer). */
  afterWrite: (() => void) | undefined;

  constructor(
    private readonly inner: W,
    private readonly maxUnsentBytes: number,
    private readonly overflow: (unsentBytes: number) => void,
  ) {}

  get unsentBytes(): number {
    return this.unsent;
  }

  write(message: Message): Promise<void> {
    // Measured as the JSON text: the framing adds a few header bytes, the WebSocket a few more. A writer
    // that takes the text is given it, so the message is serialised once.
    const json = JSON.stringify(message);
    const size = json.length;
    this.unsent += size;
    const inner = this.inner as W & Partial<EncodedMessageWriter>;
    const written = inner.writeEncoded ? inner.writeEncoded(message, json) : inner.write(message);
    const settle = () => {
      this.unsent -= size;
      this.afterWrite?.();
    };
    written.then(settle, settle);
    if (this.unsent > this.maxUnsentBytes && !this.overflowed) {
      this.overflowed = true;
      this.overflow(this.unsent);
    }
    return written;
  }

  flushed(): Promise<void> {
    return this.inner.flushed();
  }

  end(): void {
    this.inner.end();
  }

  get onError() {
    return this.inner.onError;
  }

  get onClose() {
    return this.inner.onClose;
  }

  dispose(): void {
    this.inner.dispose();
  }
}

/**
 * Closes a connection that has no call running and received nothing for `timeoutMs`. A call in
 * progress (a followed job log, a long create) keeps its connection open however long it takes.
 */
export class IdleTimer implements Disposable {
  private running = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly timeoutMs: number,
    private readonly onIdle: () => void,
  ) {
    this.arm();
  }

  /** A message arrived: a call starts. */
  begin(): void {
    this.running++;
    this.disarm();
  }

  /** A call ended; the idle clock starts again when none is left. */
  end(): void {
    this.running--;
    if (this.running === 0) this.arm();
  }

  dispose(): void {
    this.disarm();
  }

  private arm(): void {
    this.disarm();
    if (this.timeoutMs <= 0) return;
    this.timer = setTimeout(this.onIdle, this.timeoutMs);
    // An idle client must not keep the daemon's event loop alive on its own.
    this.timer.unref();
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
