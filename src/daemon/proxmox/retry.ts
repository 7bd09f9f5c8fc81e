import { isLockError } from "./errors.js";

export interface RetryOptions {
  /** Give up after this long in total. */
  budgetMs: number;
  baseDelayMs: number;
  maxDelayMs: number;
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  now: () => number;
  random: () => number;
  signal?: AbortSignal;
  onRetry?: (error: unknown, attempt: number, delayMs: number) => void;
}

/**
 * Run `attempt` again while it fails with a Proxmox lock (`VM is locked (...)`, a lock-file timeout)
 * and the budget lasts. Delays are full-jitter exponential, so parallel creates that collided do not
 * collide again in step. Every other error is final at once.
 */
export async function retryOnLock<T>(attempt: () => Promise<T>, options: RetryOptions): Promise<T> {
  const started = options.now();
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (error) {
      if (!isLockError(error)) throw error;
      const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** (tries - 1));
      const delay = Math.max(1, Math.round(options.random() * ceiling));
      if (options.now() - started + delay > options.budgetMs) throw error;
      options.onRetry?.(error, tries, delay);
      await options.sleep(delay, options.signal);
    }
  }
}
