/**
 * Per-client token buckets for the guest listener (upstream: bootstrap_rate_limit_qps 1, burst 3 per
 * source IP). Time is passed in, so tests step it instead of sleeping.
 */

export const DEFAULT_GUEST_RATE_LIMIT = { qps: 1, burst: 3 } as const;

export interface RateLimit {
  /** Tokens added per second. */
  qps: number;
  /** Bucket size: how many requests may come at once after a quiet spell. */
  burst: number;
}

interface Bucket {
  tokens: number;
  /** Epoch ms of the last refill. */
  at: number;
}

/** Above this many tracked clients, full buckets (clients quiet long enough) are forgotten. */
const PRUNE_ABOVE = 1024;

export class RateLimiter {
  readonly #buckets = new Map<string, Bucket>();

  constructor(
    private readonly limit: RateLimit,
    private readonly now: () => number = Date.now,
  ) {
    if (!(limit.qps > 0) || !Number.isFinite(limit.qps)) {
      throw new RangeError(`rate limit qps must be a positive number, got ${limit.qps}`);
    }
    if (!Number.isInteger(limit.burst) || limit.burst < 1) {
      throw new RangeError(`rate limit burst must be a whole number of at least 1, got ${limit.burst}`);
    }
  }

  /** Take one token from `key`'s bucket; false when it is empty. */
  allow(key: string): boolean {
    const now = this.now();
    let bucket = this.#buckets.get(key);
    if (bucket === undefined) {
      if (this.#buckets.size >= PRUNE_ABOVE) this.#prune(now);
      bucket = { tokens: this.limit.burst, at: now };
      this.#buckets.set(key, bucket);
    } else {
      // A clock stepping backwards must not drain or overfill the bucket.
      const elapsed = Math.max(0, now - bucket.at) / 1000;
      bucket.tokens = Math.min(this.limit.burst, bucket.tokens + elapsed * this.limit.qps);
      bucket.at = now;
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** How many clients are tracked (for tests). */
  get size(): number {
    return this.#buckets.size;
  }

  #prune(now: number): void {
    for (const [key, bucket] of this.#buckets) {
      const refilled = bucket.tokens + (Math.max(0, now - bucket.at) / 1000) * this.limit.qps;
      if (refilled >= this.limit.burst) this.#buckets.delete(key);
    }
  }
}
