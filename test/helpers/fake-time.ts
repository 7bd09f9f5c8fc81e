/**
 * Time that only moves when a test says so: a clock and a scheduler whose timers fire on `advance`,
 * in time order, with the clock set to each timer's due time as it fires.
 */
import type { Clock, Scheduler } from "../../src/daemon/context.js";

export class FakeClock implements Clock {
  constructor(public ms: number) {}
  now(): Date {
    return new Date(this.ms);
  }
}

export class FakeScheduler implements Scheduler {
  private readonly timers = new Map<number, { at: number; fn: () => void }>();
  private nextId = 1;
  constructor(private readonly clock: FakeClock) {}

  schedule(fn: () => void, ms: number): () => void {
    const id = this.nextId++;
    this.timers.set(id, { at: this.clock.ms + ms, fn });
    return () => this.timers.delete(id);
  }

  /** Delays of the timers still waiting, from now, shortest first. */
  get pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.clock.ms).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, firing the timers that fall due, in time order. */
  advance(ms: number): void {
    const end = this.clock.ms + ms;
    while (this.fireNextDue(end));
    this.clock.ms = end;
  }

  /** The same, letting what each timer started (a promise) settle before the next one fires. */
  async advanceSettling(ms: number): Promise<void> {
    const end = this.clock.ms + ms;
    while (this.fireNextDue(end)) await new Promise((resolve) => setImmediate(resolve));
    this.clock.ms = end;
  }

  private fireNextDue(end: number): boolean {
    const due = [...this.timers.entries()]
      .filter(([, t]) => t.at <= end)
      .sort((a, b) => a[1].at - b[1].at)[0];
    if (!due) return false;
    this.timers.delete(due[0]);
    this.clock.ms = Math.max(this.clock.ms, due[1].at);
    due[1].fn();
    return true;
  }
}
