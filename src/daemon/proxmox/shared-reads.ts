/**
 * Reads shared between concurrent callers. Identical GETs (same path, same parameters) in flight at the
 * same time are sent once and every caller gets the answer (single flight): a burst of status/show
 * requests for one sandbox, or of cluster-list reads, costs one call. The cluster list
 * (`/cluster/resources`) is also kept for a short time (proxmox_cluster_list_ttl), since every
 * status/show pass and each create reads it whole.
 *
 * A caller must never get an answer older than its own write: every non-GET call and every task end
 * (`invalidate`, from the backend) starts a new generation; a read joins or is cached only within the
 * generation it began in. The cache adds at most its TTL to the list's own staleness: pvestatd refreshes
 * /cluster/resources only every ~10 s (pvestatd.pm:341), so code that must see a VM's present state
 * already asks the VM itself (status/current, config), and those are never cached.
 */
import { AgentlabError } from "../../protocol/errors.js";
import type { ApiPath, HttpMethod, Params, PveTransport } from "./transport.js";

/** Paths whose answers may be cached for the TTL; every other GET is only shared while in flight. */
const CACHED = new Set(["/cluster/resources"]);

interface Flight {
  generation: number;
  promise: Promise<unknown>;
  /** Callers still waiting; when the last one gives up the call itself is cancelled. */
  waiting: number;
  controller: AbortController;
}

export interface SharedReadsOptions {
  /** How long a cluster-list answer is reused; 0 turns the cache off (reads are still shared). */
  listTtlMs: number;
  now?: () => number;
}

export class SharedReadsTransport implements PveTransport {
  readonly kind: "shell" | "api";
  private generation = 0;
  private readonly flights = new Map<string, Flight>();
  private readonly cache = new Map<string, { generation: number; at: number; data: unknown }>();
  private readonly now: () => number;
  /** Calls answered without a call of their own (joined or cached), for logs and tests. */
  readonly saved = { joined: 0, cached: 0 };

  constructor(
    private readonly inner: PveTransport,
    private readonly options: SharedReadsOptions,
  ) {
    this.kind = inner.kind;
    this.now = options.now ?? Date.now;
  }

  get calls(): { count: number } {
    return this.inner.calls;
  }

  get changes(): number {
    return this.generation;
  }

  /** Something changed in Proxmox (a write was sent, a task ended): no later read may use an older answer. */
  invalidate(): void {
    this.generation++;
    this.cache.clear();
  }

  async request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown> {
    if (method !== "GET") {
      this.invalidate();
      try {
        return await this.inner.request(method, path, params, signal, taskTimeoutMs);
      } finally {
        this.invalidate();
      }
    }
    const raw = String(path);
    const key = `${raw}?${JSON.stringify(Object.entries(params ?? {}).filter(([, v]) => v !== undefined))}`;
    const ttl = CACHED.has(raw) ? this.options.listTtlMs : 0;
    const hit = ttl > 0 ? this.cache.get(key) : undefined;
    if (hit && hit.generation === this.generation && this.now() - hit.at < ttl) {
      this.saved.cached++;
      return hit.data;
    }
    let flight = this.flights.get(key);
    if (flight && flight.generation === this.generation) this.saved.joined++;
    else flight = this.start(key, path, params, ttl);
    return this.wait(key, flight, raw, signal);
  }

  private start(key: string, path: ApiPath, params: Params | undefined, ttl: number): Flight {
    const generation = this.generation;
    const controller = new AbortController();
    const flight: Flight = { generation, waiting: 0, controller, promise: Promise.resolve() };
    flight.promise = this.inner.request("GET", path, params, controller.signal).then((data) => {
      if (ttl > 0 && generation === this.generation)
        this.cache.set(key, { generation, at: this.now(), data });
      return data;
    });
    flight.promise
      .finally(() => {
        if (this.flights.get(key) === flight) this.flights.delete(key);
      })
      .catch(() => {});
    this.flights.set(key, flight);
    return flight;
  }

  private wait(key: string, flight: Flight, raw: string, signal: AbortSignal | undefined): Promise<unknown> {
    flight.waiting++;
    if (!signal)
      return flight.promise.finally(() => {
        flight.waiting--;
      });
    return new Promise((resolve, reject) => {
      let done = false;
      const leave = () => {
        if (done) return false;
        done = true;
        flight.waiting--;
        signal.removeEventListener("abort", onAbort);
        return true;
      };
      const onAbort = () => {
        if (!leave()) return;
        // The others still want the answer; the last one to leave cancels the call.
        if (flight.waiting === 0) {
          if (this.flights.get(key) === flight) this.flights.delete(key);
          flight.controller.abort(signal.reason);
        }
        reject(new AgentlabError("CANCELLED", `GET ${raw}: cancelled`, { cause: signal.reason }));
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener("abort", onAbort, { once: true });
      flight.promise.then(
        (data) => {
          if (leave()) resolve(data);
        },
        (error: unknown) => {
          if (leave()) reject(error);
        },
      );
    });
  }
}
