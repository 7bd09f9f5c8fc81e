import { connect, type Socket } from "node:net";

export interface RawAnswer {
  id: number | string | null;
  result?: unknown;
  error?: { code: number; message: string; data?: { code?: string; hint?: string; details?: unknown } };
}

/**
 * A JSON-RPC client on the daemon's Unix socket that writes whatever bytes a test wants (oversized or
 * broken frames, thousands of requests at once) and reads the answers with their sizes, as a hostile
 * or careless client would; the real CLI never sends such things.
 */
export class RawRpcClient {
  private buffer = Buffer.alloc(0);
  private nextId = 0;
  private readonly waiting = new Map<
    number | string | null,
    (answer: RawAnswer & { bytes: number }) => void
  >();
  /** Resolves when the daemon (or the test) closed the connection. */
  readonly closed: Promise<void>;
  isClosed = false;

  private constructor(readonly socket: Socket) {
    socket.on("error", () => {});
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    this.closed = new Promise((resolve) =>
      socket.once("close", () => {
        this.isClosed = true;
        resolve();
      }),
    );
  }

  static open(path: string): Promise<RawRpcClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.once("connect", () => resolve(new RawRpcClient(socket)));
      socket.once("error", reject);
    });
  }

  /** One request framed as vscode-jsonrpc frames it. */
  static frame(method: string, params: unknown, id: number | string): Buffer {
    const body = Buffer.from(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    return Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body]);
  }

  write(bytes: string | Buffer): void {
    this.socket.write(bytes);
  }

  /** Send a request; resolves with its answer and the answer's size in bytes (body only). */
  request(method: string, params: unknown = {}): Promise<RawAnswer & { bytes: number }> {
    const id = ++this.nextId;
    const answer = new Promise<RawAnswer & { bytes: number }>((resolve, reject) => {
      this.waiting.set(id, resolve);
      void this.closed.then(() => reject(new Error(`connection closed before the answer to ${method}`)));
    });
    this.write(RawRpcClient.frame(method, params, id));
    return answer;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private receive(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const end = this.buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      const length = Number(/Content-Length: *(\d+)/i.exec(this.buffer.subarray(0, end).toString())?.[1]);
      if (this.buffer.length < end + 4 + length) return;
      const body = this.buffer.subarray(end + 4, end + 4 + length);
      this.buffer = this.buffer.subarray(end + 4 + length);
      const message = JSON.parse(body.toString()) as RawAnswer & { method?: string };
      if (message.method !== undefined) continue;
      this.waiting.get(message.id)?.({ ...message, bytes: length });
      this.waiting.delete(message.id);
    }
  }
}

/** One request on a connection of its own (closed after the answer): for a test's set-up and checks. */
export async function rpcOnce(socketPath: string, method: string, params: unknown = {}): Promise<RawAnswer> {
  const client = await RawRpcClient.open(socketPath);
  try {
    return await client.request(method, params);
  } finally {
    client.destroy();
  }
}
