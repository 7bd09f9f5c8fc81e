import type { Writable } from "node:stream";
import { AbstractMessageWriter, type Message, type MessageWriter } from "vscode-jsonrpc/node.js";
import { PendingWrites } from "../../protocol/pending-writes.js";

/** A writer that takes a message already serialised, so a caller that measured the JSON sends it as is. */
export interface EncodedMessageWriter extends MessageWriter {
  /** Writes `message`, of which `json` is the JSON text. */
  writeEncoded(message: Message, json: string): Promise<void>;
}

/**
 * The daemon's JSON-RPC writer for a byte stream (the Unix socket, the MCP endpoint's in-memory pipe):
 * frames each message as vscode-jsonrpc's StreamMessageWriter does (`Content-Length` header, JSON body)
 * but in one write of one string, serialised once. StreamMessageWriter queues each message behind a
 * semaphore and an asynchronous encoder, then writes the header and the body separately, each awaited:
 * with hundreds of clients that churn was a tenth of the daemon's time. Order is kept by the stream
 * itself. It also remembers the writes still in progress, so shutdown can let the last answers reach
 * their clients before the sockets close.
 */
export class FramedMessageWriter extends AbstractMessageWriter implements EncodedMessageWriter {
  private readonly pending = new PendingWrites();
  private errorCount = 0;

  constructor(private readonly stream: Writable) {
    super();
    stream.on("error", (error) => this.fireError(error));
    stream.on("close", () => this.fireClose());
  }

  write(message: Message): Promise<void> {
    return this.writeEncoded(message, JSON.stringify(message));
  }

  writeEncoded(message: Message, json: string): Promise<void> {
    const written = new Promise<void>((resolve, reject) => {
      this.stream.write(`Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`, "utf8", (error) => {
        if (error) {
          this.errorCount++;
          this.fireError(error, message, this.errorCount);
          reject(error);
        } else {
          this.errorCount = 0;
          resolve();
        }
      });
    });
    return this.pending.track(written);
  }

  async flushed(): Promise<void> {
    await this.pending.settled();
  }

  end(): void {
    this.stream.end();
  }
}
