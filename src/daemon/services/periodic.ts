import type { Scheduler } from "../context.js";
import type { Logger } from "../log.js";

/** What one pass of a background task gets. */
export interface PassSignals {
  /** Aborted when the daemon starts stopping: finish the item at hand, start no new one. */
  stopping: AbortSignal;
  /** Aborted when the shutdown grace is over: give up the item at hand too (given to Proxmox calls). */
  signal: AbortSignal;
}

export interface PeriodicTaskOptions {
  name: string;
  intervalMs: number;
  scheduler: Scheduler;
  log: Logger;
  run(signals: PassSignals): Promise<void>;
}

/**
 * A background pass run once at start and then `intervalMs` after the previous pass ended (so passes
 * never overlap, and a slow Proxmox stretches the period instead of piling passes up). Time goes
 * through the injected scheduler only. A failed pass is logged and the next one runs as usual.
 */
export class PeriodicTask {
  private cancelTimer: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private readonly stopping = new AbortController();
  private readonly hard = new AbortController();
  private passes = 0;

  constructor(private readonly options: PeriodicTaskOptions) {}

  /** Passes finished so far (tests wait on it). */
  get completedPasses(): number {
    return this.passes;
  }

  /** Whether a pass is running right now. */
  get busy(): boolean {
    return this.running !== undefined;
  }

  /** Run the first pass now; the next ones follow on the scheduler. */
  start(): void {
    if (this.stopping.signal.aborted) return;
    this.tick();
  }

  private tick(): void {
    this.cancelTimer = undefined;
    if (this.stopping.signal.aborted || this.running) return;
    const { log, name } = this.options;
    this.running = this.options
      .run({ stopping: this.stopping.signal, signal: this.hard.signal })
      .catch((error: unknown) => {
        if (this.stopping.signal.aborted) log.info({ task: name, err: error }, `${name} pass interrupted`);
        else log.warn({ task: name, err: error }, `${name} pass failed; the next pass retries`);
      })
      .finally(() => {
        this.running = undefined;
        this.passes++;
        if (!this.stopping.signal.aborted) {
          this.cancelTimer = this.options.scheduler.schedule(() => this.tick(), this.options.intervalMs);
        }
      });
  }

  /** Resolves when the pass running now (if any) has ended. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /**
   * No more passes; let the running one finish its current item for up to `graceMs`, then abort it.
   * Resolves true when the pass ended within the grace (or none was running).
   */
  async stop(graceMs: number): Promise<boolean> {
    this.stopping.abort(new Error(`${this.options.name} is stopping`));
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    const running = this.running;
    if (!running) return true;
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    const finished = await Promise.race([running.then(() => true as const), graceOver]);
    clearTimeout(timer);
    if (!finished) {
      this.hard.abort(new Error(`${this.options.name} was stopped`));
      // The abort reaches Proxmox calls at once; give the pass a moment to unwind and log.
      await Promise.race([running, new Promise((resolve) => setTimeout(resolve, 1000))]);
    }
    return finished;
  }
}
