/**
 * What the daemon's two JSON-RPC writers (the Unix socket's framed one, the WebSocket's) share: each
 * message serialised once, failures counted as vscode-jsonrpc's own writers count them (the count of
 * failures in a row goes with each error event; a success resets it), and the writes still in progress
 * remembered, so the daemon's drain can let the last answers reach their clients before sockets close.
 */
import { AbstractMessageWriter, type Message, type MessageWriter } from "vscode-jsonrpc";

/** A writer that takes a message already serialised, so a caller that measured the JSON sends it as is. */
export interface EncodedMessageWriter extends MessageWriter {
  /** Writes `message`, of which `json` is the JSON text. */
  writeEncoded(message: Message, json: string): Promise<void>;
  /** Resolves once every write so far has reached its transport (or failed). */
  flushed(): Promise<void>;
}

export abstract class TrackedMessageWriter extends AbstractMessageWriter implements EncodedMessageWriter {
  readonly #pending = new Set<Promise<void>>();
  #errorsInARow = 0;

  write(message: Message): Promise<void> {
    return this.writeEncoded(message, JSON.stringify(message));
  }

  abstract writeEncoded(message: Message, json: string): Promise<void>;

  abstract end(): void;

  /**
   * Runs `send`, which hands `json` to the transport and calls `done` when it took it or failed, and
   * tracks the write until then.
   */
  protected tracked(message: Message, send: (done: (error?: Error | null) => void) => void): Promise<void> {
    const written = new Promise<void>((resolve, reject) => {
      send((error) => {
        if (error) {
          this.#errorsInARow++;
          this.fireError(error, message, this.#errorsInARow);
          reject(error);
        } else {
          this.#errorsInARow = 0;
          resolve();
        }
      });
    });
    this.#pending.add(written);
    const forget = () => this.#pending.delete(written);
    written.then(forget, forget);
    return written;
  }

  async flushed(): Promise<void> {
    await Promise.allSettled([...this.#pending]);
  }
}
