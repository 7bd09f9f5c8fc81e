/**
 * Answers of views that ask Proxmox on every call (`agentlab status`'s probe, `sandbox show`'s live
 * VM state), shared between callers. At most one probe per key runs at a time (single flight); a probe
 * that succeeded answers every caller for `ttlMs`; after that the next caller starts a new probe and
 * waits for it, and while it runs the other callers get the last answer as long as it is younger than
 * `staleMs` (so a crowd does not wait behind a refresh), or else wait for it too. 200 clients asking
 * `daemon.status` at once cause one probe, not 200 chains of calls queueing for the pool's read slots.
 * Each answer says when its probe began (`checkedAt`), so the view can say how old it is.
 *
 * A probe that failed is never kept, and it drops the last success too (what it said is no longer
 * known to hold): the callers that shared it get its error, the next caller probes again. With
 * `generation` (the shared reads' count of changes, shared-reads.ts), an answer or a probe from before a
 * change the daemon made (a write sent, a task ended) is not given out after it, so a `sandbox show`
 * after a `sandbox stop` never shows the VM still running.
 *
 * This sits above the transport's shared reads: those share one GET at a time; a probe is several calls
 * (status and config, or version, nodes, the cluster list, configs and permissions), and only the whole
 * probe can be answered from memory with one age.
 */

export interface Probed<T> {
  value: T;
  /** When the probe that produced `value` began (ms since the epoch). */
  checkedAt: number;
}

export interface ProbeCacheOptions {
  /** How long a successful probe answers without a new one; 0: every call starts one unless one runs. */
  ttlMs: number;
  /** While a new probe runs, the last answer is given out if it is younger than this (at least ttlMs). */
  staleMs?: number;
  /** Counts changes made since start; a different count than at the probe's start makes it stale. */
  generation?: () => number;
  now?: () => number;
  /** Keys kept at most (the least recently probed dropped first), so probes of many VMs stay bounded. */
  maxKeys?: number;
}

interface Flight<T> {
  generation: number;
  promise: Promise<Probed<T>>;
}

interface Entry<T> {
  last?: { probed: Probed<T>; generation: number };
  flight?: Flight<T>;
}

export class ProbeCache<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly now: () => number;
  private readonly generation: () => number;
  private readonly staleMs: number;
  private readonly maxKeys: number;
  /** Callers answered without a probe of their own: joined one in flight, recent, or last during a refresh. */
  readonly saved = { joined: 0, cached: 0, stale: 0 };
  /** Probes started. */
  probes = 0;

  constructor(private readonly options: ProbeCacheOptions) {
    this.now = options.now ?? Date.now;
    this.generation = options.generation ?? (() => 0);
    this.staleMs = Math.max(options.ttlMs, options.staleMs ?? options.ttlMs);
    this.maxKeys = options.maxKeys ?? 1024;
  }

  /** The answer for `key`: a recent one, the probe in flight, or a new run of `probe`. */
  get(key: string, probe: () => Promise<T>): Promise<Probed<T>> {
    const generation = this.generation();
    let entry = this.entries.get(key);
    if (!entry) {
      entry = {};
      this.remember(key, entry);
    }
    const last = entry.last?.generation === generation ? entry.last.probed : undefined;
    const age = last ? this.now() - last.checkedAt : Number.POSITIVE_INFINITY;
    if (last && age < this.options.ttlMs) {
      this.saved.cached++;
      return Promise.resolve(last);
    }
    const flight = entry.flight?.generation === generation ? entry.flight : undefined;
    if (!flight) return this.start(key, entry, generation, probe).promise;
    if (last && age < this.staleMs) {
      this.saved.stale++;
      return Promise.resolve(last);
    }
    this.saved.joined++;
    return flight.promise;
  }

  /** Forget everything kept: the next caller of every key probes again. */
  clear(): void {
    this.entries.clear();
  }

  private start(key: string, entry: Entry<T>, generation: number, probe: () => Promise<T>): Flight<T> {
    this.probes++;
    const checkedAt = this.now();
    const flight: Flight<T> = { generation, promise: Promise.resolve(undefined as never) };
    flight.promise = (async () => {
      try {
        // Never synchronously: the flight must be in place before its end can clear it.
        const done = { value: await Promise.resolve().then(probe), checkedAt };
        const last = entry.last;
        const newer =
          !last ||
          generation > last.generation ||
          (generation === last.generation && checkedAt >= last.probed.checkedAt);
        if (newer) entry.last = { probed: done, generation };
        return done;
      } catch (error) {
        // What the last success said is no longer known to hold.
        const last = entry.last;
        if (last && last.generation <= generation && last.probed.checkedAt <= checkedAt) delete entry.last;
        throw error;
      } finally {
        if (entry.flight === flight) delete entry.flight;
      }
    })();
    // The callers answered from the last success do not wait for it: its failure is nobody's error.
    flight.promise.catch(() => {});
    entry.flight = flight;
    this.remember(key, entry);
    return flight;
  }

  private remember(key: string, entry: Entry<T>): void {
    this.entries.delete(key);
    this.entries.set(key, entry);
    if (this.entries.size > this.maxKeys) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
  }
}
