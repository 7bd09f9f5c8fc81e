/**
 * JSON-RPC over a WebSocket: one text message per JSON-RPC message (no Content-Length framing; the
 * WebSocket already delimits messages). Both ends use this pair, so progress notifications and
 * `$/cancelRequest` travel exactly as on the Unix socket. Typed against the few members of a `ws`
 * WebSocket it uses, so this module needs no import of `ws` itself.
 */
import {
  AbstractMessageReader,
  type DataCallback,
  type Disposable,
  type Message,
  type MessageReader,
} from "vscode-jsonrpc";
import { TrackedMessageWriter } from "./tracked-writer.js";

/** Where the control listener serves the JSON-RPC WebSocket, and its one unauthenticated route. */
export const RPC_PATH = "/rpc";
export const HEALTH_PATH = "/health";

/** The members of a `ws` WebSocket the transport needs. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string, callback?: (error?: Error) => void): void;
  on(event: "message", listener: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void): this;
  on(event: "close", listener: (code: number, reason: Buffer) => void): this;
  on(event: "error", listener: (error: Error) => void): this;
}

/** WebSocket.OPEN in the `ws` library and in browsers. */
const OPEN = 1;

function text(data: Buffer | ArrayBuffer | Buffer[]): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}

export class WebSocketMessageReader extends AbstractMessageReader implements MessageReader {
  private callback: DataCallback | undefined;
  /** Messages that arrived before listen(): the peer may speak first. */
  private readonly early: Message[] = [];

  constructor(socket: WebSocketLike) {
    super();
    socket.on("message", (data, isBinary) => {
      let message: unknown;
      try {
        if (isBinary) throw new Error("binary WebSocket message; JSON-RPC messages are sent as text");
        message = JSON.parse(text(data));
      } catch (error) {
        this.fireError(error);
        return;
      }
      const candidate = message as Record<string, unknown> | null;
      if (candidate === null || typeof candidate !== "object" || candidate.jsonrpc !== "2.0") {
        this.fireError(new Error("message is not a JSON-RPC 2.0 object"));
        return;
      }
      if (this.callback) this.callback(candidate as unknown as Message);
      else this.early.push(candidate as unknown as Message);
    });
    socket.on("error", (error) => this.fireError(error));
    socket.on("close", () => this.fireClose());
  }

  listen(callback: DataCallback): Disposable {
    this.callback = callback;
    for (const message of this.early.splice(0)) callback(message);
    return { dispose: () => (this.callback = undefined) };
  }
}

export class WebSocketMessageWriter extends TrackedMessageWriter {
  constructor(private readonly socket: WebSocketLike) {
    super();
    socket.on("close", () => this.fireClose());
  }

  /** Writes `message`, of which `json` is the JSON text (the daemon's bounded writer measured it). */
  writeEncoded(message: Message, json: string): Promise<void> {
    // Not a transport failure to count: the socket is gone, and its close event said so.
    if (this.socket.readyState !== OPEN) return Promise.reject(new Error("the WebSocket is closed"));
    return this.tracked(message, (done) => this.socket.send(json, done));
  }

  end(): void {}
}
