/** Figures from repeated measures: percentiles and a monotonic clock in milliseconds. */
import { performance } from "node:perf_hooks";

/** Milliseconds on the monotonic clock (never steps back with the wall clock). */
export const nowMs = (): number => performance.now();

/** The p-th percentile (0-100) by nearest rank; NaN for no samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export const median = (samples: readonly number[]): number => percentile(samples, 50);

/** Runs fn and returns how long it took in ms, with its result. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const start = nowMs();
  const value = await fn();
  return { ms: nowMs() - start, value };
}

/** Total length of the union of [begin, end] intervals (overlaps counted once). */
export function unionLength(intervals: ReadonlyArray<readonly [number, number]>): number {
  const sorted = intervals.filter(([b, e]) => e > b).sort((a, b) => a[0] - b[0]);
  let total = 0;
  let curBegin = Number.NEGATIVE_INFINITY;
  let curEnd = Number.NEGATIVE_INFINITY;
  for (const [b, e] of sorted) {
    if (b > curEnd) {
      if (curEnd > curBegin) total += curEnd - curBegin;
      curBegin = b;
      curEnd = e;
    } else curEnd = Math.max(curEnd, e);
  }
  if (curEnd > curBegin) total += curEnd - curBegin;
  return total;
}
