import type { Writable } from "node:stream";
import type { Message } from "vscode-jsonrpc/node.js";
import { TrackedMessageWriter } from "../../protocol/tracked-writer.js";

export type { EncodedMessageWriter } from "../../protocol/tracked-writer.js";

/**
 * The daemon's JSON-RPC writer for a byte stream (the Unix socket, the MCP endpoint's in-memory pipe):
 * frames each message as vscode-jsonrpc's StreamMessageWriter does (`Content-Length` header, JSON body)
 * but in one write of one string, serialised once. StreamMessageWriter queues each message behind a
 * semaphore and an asynchronous encoder, then writes the header and the body separately, each awaited:
 * with hundreds of clients that churn was a tenth of the daemon's time. Order is kept by the stream
 * itself.
 */
export class FramedMessageWriter extends TrackedMessageWriter {
  constructor(private readonly stream: Writable) {
    super();
    stream.on("error", (error) => this.fireError(error));
    stream.on("close", () => this.fireClose());
  }

  writeEncoded(message: Message, json: string): Promise<void> {
    return this.tracked(message, (done) =>
      this.stream.write(`Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`, "utf8", done),
    );
  }

  end(): void {
    this.stream.end();
  }
}
