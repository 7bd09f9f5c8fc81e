/**
 * The bound on Proxmox calls in flight. Every status or show used to open its own `pvesh` process (or
 * HTTPS request) at once, so 200 clients made 127 processes on a 2-core host and starved everything,
 * database-only requests included. Calls now wait for a slot, first come first served, with separate
 * limits per kind: reads never wait behind long worker calls (on the shell backend a worker call holds
 * its slot for the whole task), and a burst of reads cannot hold up a create's clone. A call whose
 * caller gives up while it waits leaves the queue without ever running.
 */
import { AgentlabError } from "../../protocol/errors.js";
import { type DaemonMetrics, outcomeOf, secondsSince } from "../metrics/observer.js";
import { classifyProxmoxError } from "./errors.js";
import type { ApiPath, HttpMethod, Params, PveTransport } from "./transport.js";

/** `read`: GET; `write`: everything that changes something (and, on pvesh, runs its task). */
export type CallKind = "read" | "write";

export type CallLimits = Record<CallKind, number>;

export const DEFAULT_CALL_LIMITS: CallLimits = { read: 8, write: 16 };

interface Waiter {
  start: () => void;
}

class Lane {
  active = 0;
  readonly queue: Waiter[] = [];

  constructor(readonly limit: number) {}

  release(): void {
    const next = this.queue.shift();
    if (next) next.start();
    else this.active--;
  }
}

export interface LaneState {
  limit: number;
  active: number;
  queued: number;
}

/**
 * A FIFO slot pool per call kind. The Proxmox calls use `read` and `write`; the host tools (nft, e2fsck,
 * blkid, ...) use the same pool class with one kind of their own (host/tool-pool.ts).
 */
export class CallPool<K extends string = CallKind> {
  private readonly lanes: Record<K, Lane>;
  /** What a slot is, for the cancellation message: "Proxmox call" or "host tool". */
  private readonly slot: string;

  constructor(limits: Record<K, number> = DEFAULT_CALL_LIMITS as Record<K, number>, slot = "Proxmox call") {
    const lanes = {} as Record<K, Lane>;
    for (const [kind, limit] of Object.entries(limits) as [K, number][]) {
      if (!Number.isInteger(limit) || limit < 1)
        throw new Error(`CallPool: the ${kind} limit must be a positive integer, got ${limit}`);
      lanes[kind] = new Lane(limit);
    }
    this.lanes = lanes;
    this.slot = slot;
  }

  /** Run `work` once a slot of `kind` is free; `signal` aborting while it waits takes it out of the queue. */
  async run<T>(kind: K, work: () => Promise<T>, signal?: AbortSignal, what: string = kind): Promise<T> {
    const lane = this.lanes[kind];
    await this.acquire(lane, signal, what);
    try {
      return await work();
    } finally {
      lane.release();
    }
  }

  state(): Record<K, LaneState> {
    const out = {} as Record<K, LaneState>;
    for (const [kind, lane] of Object.entries(this.lanes) as [K, Lane][])
      out[kind] = { limit: lane.limit, active: lane.active, queued: lane.queue.length };
    return out;
  }

  private acquire(lane: Lane, signal: AbortSignal | undefined, what: string): Promise<void> {
    if (signal?.aborted) return Promise.reject(cancelled(what, this.slot, signal));
    if (lane.active < lane.limit && lane.queue.length === 0) {
      lane.active++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = lane.queue.indexOf(waiter);
        if (at >= 0) lane.queue.splice(at, 1);
        reject(cancelled(what, this.slot, signal!));
      };
      // A released slot passes straight to the next waiter: `active` stays as it is.
      const waiter: Waiter = {
        start: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      lane.queue.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

function cancelled(what: string, slot: string, signal: AbortSignal): AgentlabError {
  return new AgentlabError("CANCELLED", `${what}: cancelled while waiting for a free ${slot} slot`, {
    cause: signal.reason,
  });
}

/**
 * A transport whose calls go through a CallPool: GETs as reads, every other method as a write. Each
 * call that ran is reported to `metrics` with its time in the slot (the wait for a slot is not
 * Proxmox's latency) and its outcome as the daemon classifies it.
 */
export class PooledTransport implements PveTransport {
  readonly kind: "shell" | "api";

  constructor(
    private readonly inner: PveTransport,
    readonly pool: CallPool,
    private readonly metrics?: Pick<DaemonMetrics, "proxmoxCall">,
  ) {
    this.kind = inner.kind;
  }

  get calls(): { count: number } {
    return this.inner.calls;
  }

  request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown> {
    const call = () => this.inner.request(method, path, params, signal, taskTimeoutMs);
    return this.pool.run(
      method === "GET" ? "read" : "write",
      this.metrics ? () => this.timed(method, path, call) : call,
      signal,
      `${method} ${path}`,
    );
  }

  /** Run `call` and report it; the error (raw, as callers expect it) passes through unchanged. */
  private async timed(method: HttpMethod, path: ApiPath, call: () => Promise<unknown>): Promise<unknown> {
    const started = performance.now();
    const report = (outcome: string) =>
      this.metrics?.proxmoxCall(`${method} ${path.template()}`, outcome, secondsSince(started));
    try {
      const data = await call();
      report("success");
      return data;
    } catch (error) {
      report(outcomeOf(classifyProxmoxError(error, { action: `${method} ${path}` })));
      throw error;
    }
  }
}
