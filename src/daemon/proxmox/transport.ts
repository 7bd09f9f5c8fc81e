/**
 * A transport carries one Proxmox API call: method, path under /api2/json, params. The shell
 * transport runs `pvesh` (which proxies to the right node and speaks JSON), the API transport speaks
 * HTTPS with an API token. Everything above this line is shared, so the two backends cannot drift.
 */

export type HttpMethod = "GET" | "POST" | "PUT" | "DELETE";

export type Params = Record<string, string | number | boolean | undefined>;

export interface PveTransport {
  readonly kind: "shell" | "api";
  /**
   * Perform one call and return the `data` value. For worker endpoints that is the UPID string; the
   * shell transport returns it only after the worker ran (pvesh runs workers in the foreground).
   * `taskTimeoutMs` is given for worker endpoints: a transport that runs the worker within the call
   * (shell) bounds the call by it instead of the per-call timeout; one that only starts it (api) ignores it.
   */
  request(
    method: HttpMethod,
    path: string,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown>;
  /** Spawns (shell) or HTTP requests (api) made so far. */
  readonly calls: { count: number };
}

/**
 * A failure reported by Proxmox itself or on the way to it. `status` is the HTTP status when there
 * was one (pvesh failures carry none); `reason` is Proxmox's text (reason phrase or stderr), which is
 * what the classifier reads; `errors` holds per-parameter texts of a 400.
 */
export class PveRequestError extends Error {
  constructor(
    readonly method: HttpMethod,
    readonly path: string,
    readonly reason: string,
    readonly status?: number,
    readonly errors?: Record<string, string>,
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(`${method} ${path}: ${status !== undefined ? `${status} ` : ""}${reason}`, options);
    this.name = "PveRequestError";
  }
}

/**
 * A worker call the transport had to interrupt (its task limit passed, or the caller cancelled) while
 * it ran the worker in the foreground (pvesh). `upid` is the task's id when pvesh still printed it, which
 * it does once its worker has ended; `workerEnded` says whether pvesh exited by itself after the
 * interruption (its tee_worker forwards the TERM to the worker and returns only when the worker is
 * gone: pve-common RESTEnvironment.pm:445-466, 735-741) rather than being killed after the grace.
 */
export class TaskInterruptedError extends Error {
  constructor(
    readonly reason: "timeout" | "cancelled",
    readonly method: HttpMethod,
    readonly path: string,
    readonly limitMs: number,
    readonly workerEnded: boolean,
    readonly upid?: string,
    options?: { cause?: unknown },
  ) {
    super(
      `${method} ${path}: ${reason === "timeout" ? `task still running after ${limitMs} ms` : "cancelled"}${workerEnded ? "" : "; its worker may still be running"}`,
      options,
    );
    this.name = "TaskInterruptedError";
  }
}
