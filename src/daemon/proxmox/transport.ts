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
   */
  request(method: HttpMethod, path: string, params?: Params, signal?: AbortSignal): Promise<unknown>;
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
