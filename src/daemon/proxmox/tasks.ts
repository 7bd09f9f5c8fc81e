/**
 * Proxmox worker tasks: UPID parsing and waiting for a task to end. Waiting polls soon (a task the API
 * just started is asked about after 50 ms) and backs off, doubling from 100 ms to a cap of 500 ms, so
 * a 2 s clone of a kind never seen is noticed at most half a second after it ended with 7 polls (it used
 * to be 0.5 s doubling to 5 s: 4 polls, the same clone noticed 1.5 s late) and a long task costs two
 * polls a second; a task of a known kind is first asked about near its expected end (TaskDurations).
 */

export interface Upid {
  upid: string;
  node: string;
  type: string;
  id: string;
  user: string;
  startTime: number;
}

const UPID_PATTERN = /^UPID:([^:]+):([0-9A-F]{8}):([0-9A-F]{8,9}):([0-9A-F]{8}):([^:]+):([^:]*):([^:]+):$/;

export function parseUpid(text: string): Upid | undefined {
  const match = UPID_PATTERN.exec(text.trim());
  if (!match) return undefined;
  return {
    upid: text.trim(),
    node: match[1]!,
    startTime: Number.parseInt(match[4]!, 16),
    type: match[5]!,
    id: match[6]!,
    user: match[7]!,
  };
}

/**
 * The task id in a worker call's answer, or undefined when there is none. Normally the answer is the
 * UPID itself. When pvesh proxies the call to another node over SSH, it collects the remote pvesh's
 * stdout lines without their newlines (pve-manager PVE/CLI/pvesh.pm:132-137, pve-common Cmd.pm:230-235):
 * the worker's log and then its JSON-quoted UPID. That fails decode_json, so pvesh returns the raw
 * concatenation as one string (pvesh.pm:139-141), and the UPID is what ends it.
 */
export function workerUpid(data: unknown): string | undefined {
  if (typeof data !== "string") return undefined;
  if (parseUpid(data)) return data.trim();
  const tail = /"(UPID:[^"\\]+)"\s*$/.exec(data);
  return tail && parseUpid(tail[1]!) ? tail[1] : undefined;
}

export interface TaskStatus {
  status: "running" | "stopped";
  exitstatus?: string;
}

/** "OK" and "WARNINGS: n" are success; anything else is the error text. */
export function taskSucceeded(status: TaskStatus): boolean {
  return status.exitstatus === "OK" || /^WARNINGS: \d+$/.test(status.exitstatus ?? "");
}

export interface WaitOptions {
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  now: () => number;
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * How long to wait before the first poll. 0 (the default) polls at once: right for a task that is
   * known to be over or nearly so (pvesh ran it in the foreground, a task that was told to stop).
   */
  firstPollAfterMs?: number;
  /** The wait after the first poll; it doubles up to maxDelayMs. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Told, once the task is seen stopped, when the polls were sent (for TaskDurations). */
  onStopped?: (trace: PollTrace) => void;
}

/** When (ms after waiting began) the last poll that found the task running was sent, and the one that found it stopped. */
export interface PollTrace {
  lastRunningMs?: number;
  stoppedMs: number;
  polls: number;
}

/**
 * How long tasks of a kind took, so that the first poll of the next one lands near its end: Proxmox's
 * API has no call that waits for a task, and polling a 2 s clone from 50 ms on costs 7 calls. A task
 * of a known kind is asked about first when the last one of its kind ended (at most maxFirstPollMs, so
 * a misjudged task is noticed at most that late; at once when the last one had ended by the time its
 * call was answered), then 50 ms later, then doubling to 500 ms: it is expected to end about then, so
 * one more short look notices it soon. The estimate lies between the last "running" and the "stopped"
 * answer (see learn); a task already over at the first poll moves the estimate 50 ms earlier, so it
 * cannot only grow. A task that keeps its duration then costs one or two polls and is noticed within
 * 100 ms of its end; one that is over before its call is answered costs one poll and no wait.
 */
export class TaskDurations {
  private readonly expected = new Map<string, number>();

  /**
   * maxFirstPollMs: 3 s, above a linked clone's usual 1-2 s (full clones are a kind of their own), so the
   * cap does not cut into a clone's estimate; a kind whose tasks suddenly got much shorter is noticed at
   * most that late.
   */
  constructor(private readonly maxFirstPollMs = 3000) {}

  /** When to send the first poll of a task of this kind, and the wait after it when it is still running. */
  schedule(kind: string): { firstPollAfterMs: number; initialDelayMs: number } {
    const estimate = this.expected.get(kind);
    if (estimate === undefined)
      return { firstPollAfterMs: TASK_POLL.firstPollAfterMs, initialDelayMs: TASK_POLL.initialDelayMs };
    return {
      firstPollAfterMs: Math.round(Math.min(Math.max(estimate, 0), this.maxFirstPollMs)),
      initialDelayMs: TASK_POLL.knownDelayMs,
    };
  }

  learn(kind: string, trace: PollTrace): void {
    // Already over at the first poll: it may end sooner, so ask one step (50 ms) earlier next time.
    // Else it ended between the last "running" answer and the "stopped" one: aim two thirds of the way,
    // so that a task as long as this one is mostly seen over at the first poll (a poll that finds it
    // running costs a call), yet noticed within a third of that stretch of its end.
    const end =
      trace.lastRunningMs === undefined
        ? trace.stoppedMs - TASK_POLL.knownDelayMs
        : trace.lastRunningMs + ((trace.stoppedMs - trace.lastRunningMs) * 2) / 3;
    this.expected.set(kind, end);
  }
}

/**
 * Defaults of WaitOptions for a task that has just been started through the API; `knownDelayMs` is the
 * wait after a first poll that found a task of a known kind still running (TaskDurations).
 */
export const TASK_POLL = {
  firstPollAfterMs: 50,
  initialDelayMs: 100,
  maxDelayMs: 500,
  knownDelayMs: 50,
} as const;

export class TaskTimeoutError extends Error {
  constructor(
    readonly upid: string,
    readonly waitedMs: number,
  ) {
    super(`task ${upid} still running after ${Math.round(waitedMs / 1000)}s`);
    this.name = "TaskTimeoutError";
  }
}

export async function waitForTask(
  poll: () => Promise<TaskStatus>,
  upid: string,
  options: WaitOptions,
): Promise<TaskStatus> {
  const started = options.now();
  let delay = options.initialDelayMs ?? TASK_POLL.initialDelayMs;
  const maxDelay = options.maxDelayMs ?? TASK_POLL.maxDelayMs;
  const first = Math.min(options.firstPollAfterMs ?? 0, options.timeoutMs);
  if (first > 0) await options.sleep(first, options.signal);
  let lastRunningMs: number | undefined;
  for (let polls = 1; ; polls++) {
    const sentMs = options.now() - started;
    const status = await poll();
    if (status.status === "stopped") {
      options.onStopped?.({
        stoppedMs: sentMs,
        polls,
        ...(lastRunningMs !== undefined ? { lastRunningMs } : {}),
      });
      return status;
    }
    lastRunningMs = sentMs;
    const waited = options.now() - started;
    if (waited >= options.timeoutMs) throw new TaskTimeoutError(upid, waited);
    await options.sleep(Math.min(delay, options.timeoutMs - waited), options.signal);
    delay = Math.min(delay * 2, maxDelay);
  }
}

/** A sleep that an AbortSignal interrupts. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
