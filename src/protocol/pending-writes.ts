/**
 * The writes a message writer has started and that have not reached their socket yet, so the daemon's
 * drain can wait for the last answers (the Unix-socket and the WebSocket writers both keep one).
 */
export class PendingWrites {
  readonly #pending = new Set<Promise<void>>();

  /** Remembers `written` until it settles; returns it. */
  track(written: Promise<void>): Promise<void> {
    this.#pending.add(written);
    const forget = () => this.#pending.delete(written);
    written.then(forget, forget);
    return written;
  }

  /** Resolves once every write tracked so far has settled, failed ones included. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.#pending]);
  }
}
