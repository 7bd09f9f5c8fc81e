/**
 * What the daemon tells its metrics, as one small interface: the layers that see an event (the
 * Proxmox call pool, task waiting, the RPC server, the guest listener, the services) call it where
 * the event happens and know nothing of Prometheus. The implementation over prom-client is in
 * prometheus.ts and is loaded only when metrics_listen is set; without it nothing is counted.
 *
 * Every label value passed here must come from a bounded set (a method name from the protocol, an
 * error code, a route, a Proxmox path template, a configured profile): never a VMID, a name or a raw
 * path, which would make one time series per sandbox.
 */
import { AgentlabError } from "../../protocol/errors.js";

export interface DaemonMetrics {
  /** One Proxmox API call (a pvesh run or an HTTPS request), `method` as `GET /nodes/{node}/...`. */
  proxmoxCall(method: string, outcome: string, seconds: number): void;
  /** One worker task, from the call that started it until it was seen stopped; `type` as in its UPID. */
  proxmoxTask(type: string, outcome: string, seconds: number): void;
  /** One JSON-RPC call, over the socket or the control listener. */
  rpcCall(method: string, outcome: string, seconds: number): void;
  /** One request a guest made to the guest listener, by route and the HTTP status it got. */
  guestRequest(route: string, status: number): void;
  /** One `sandbox new` (or a job's or session's sandbox); `seconds` is the time to READY. */
  sandboxCreate(profile: string, outcome: string, seconds: number): void;
  sandboxDestroy(outcome: string): void;
  /** A job reached its end: COMPLETED, FAILED, TIMEOUT or cancelled; `seconds` since it was queued. */
  jobEnded(outcome: string, seconds: number): void;
  workspaceOperation(operation: string, outcome: string, seconds: number): void;
  /** One reconciler pass, with the drift codes it found (one per finding) when it got that far. */
  reconcilePass(outcome: string, findings?: readonly string[]): void;
}

/** The outcome label of a call that ended: `success`, or the error's stable code (a bounded set). */
export function outcomeOf(error?: unknown): string {
  if (error === undefined) return "success";
  return error instanceof AgentlabError ? error.code : "INTERNAL";
}

/** Seconds since `startedMs` (a performance.now() reading). */
export function secondsSince(startedMs: number): number {
  return (performance.now() - startedMs) / 1000;
}

/** Seconds from one recorded time to another (a job's queueing to its end), never negative. */
export function secondsBetween(from: Date, to: Date): number {
  return Math.max(0, to.getTime() - from.getTime()) / 1000;
}

/**
 * Time `work` (from `started`, a performance.now() reading, when it began earlier) and report it with
 * its outcome; the result or the error passes through unchanged.
 */
export async function observed<T>(
  report: (outcome: string, seconds: number) => void,
  work: () => Promise<T>,
  started: number = performance.now(),
): Promise<T> {
  try {
    const result = await work();
    report("success", secondsSince(started));
    return result;
  } catch (error) {
    report(outcomeOf(error), secondsSince(started));
    throw error;
  }
}
