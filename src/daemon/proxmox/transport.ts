/**
 * A transport carries one Proxmox API call: method, path under /api2/json, params. The shell
 * transport runs `pvesh` (which proxies to the right node and speaks JSON), the API transport speaks
 * HTTPS with an API token. Everything above this line is shared, so the two backends cannot drift.
 */

export type HttpMethod = "GET" | "POST" | "PUT" | "DELETE";

export type Params = Record<string, string | number | boolean | undefined>;

/**
 * A Proxmox API path as its raw segments: the path pvesh is given and the path pve-http-server sees
 * after `uri_unescape` (AnyEvent.pm:1452). Nobody above the transport encodes anything: pvesh never
 * unescapes (pvesh.pm:398-443, RESTHandler.pm:401,437 split on '/' and keep each segment as is), so
 * `UPID%3A...` would reach the handler verbatim, while HTTPS needs every segment escaped. Each
 * transport therefore renders the segments for its own face.
 */
export class ApiPath {
  /**
   * @param variable which segments came (wholly or in part) from an interpolated value; apiPath sets
   *   it, so `template()` can name the call without the VMIDs, node and volume names in it.
   */
  constructor(
    readonly segments: readonly string[],
    readonly variable: readonly boolean[] = [],
  ) {}

  /** The path as pvesh takes it and as messages show it: raw segments joined by '/'. */
  toString(): string {
    return `/${this.segments.join("/")}`;
  }

  /**
   * The path with each interpolated segment replaced by a placeholder named after the collection it
   * follows, as Proxmox's API schema names it (`/nodes/{node}/qemu/{vmid}/status/current`): one name
   * per kind of call, whichever VM it was for (metrics label calls by it).
   */
  template(): string {
    const parts = this.segments.map((segment, i) => {
      if (!this.variable[i]) return segment;
      const before = i > 0 && !this.variable[i - 1] ? this.segments[i - 1]! : "";
      return `{${PLACEHOLDERS[before] ?? "param"}}`;
    });
    return `/${parts.join("/")}`;
  }
}

/** The parameter names of Proxmox's API schema after each collection agentlab calls into. */
const PLACEHOLDERS: Record<string, string> = {
  nodes: "node",
  qemu: "vmid",
  lxc: "vmid",
  tasks: "upid",
  storage: "storage",
  content: "volume",
  snapshot: "snapname",
};

/**
 * Builds an ApiPath: `apiPath\`/nodes/${node}/tasks/${upid}/status\``. Each interpolated value stays
 * one segment even when it contains '/' (a dir-storage volid such as `local:100/vm-100-disk-0.qcow2`,
 * which Proxmox's `{volume}` handler takes whole through its empty fragmentDelimiter,
 * RESTHandler.pm:413-424); an interpolated ApiPath is spliced in as its segments.
 */
export function apiPath(strings: TemplateStringsArray, ...values: Array<string | number | ApiPath>): ApiPath {
  const segments: string[] = [];
  const variable: boolean[] = [];
  // `open` is the segment being built: text and values not separated by a literal '/'.
  let open: string | undefined;
  let openVariable = false;
  const close = () => {
    if (open !== undefined && open !== "") {
      segments.push(open);
      variable.push(openVariable);
    }
    open = undefined;
    openVariable = false;
  };
  const addText = (text: string) => {
    const parts = text.split("/");
    parts.forEach((part, i) => {
      if (i > 0) close();
      if (part !== "") open = (open ?? "") + part;
    });
  };
  strings.forEach((text, i) => {
    addText(text);
    if (i >= values.length) return;
    const value = values[i]!;
    if (value instanceof ApiPath) {
      if (open !== undefined) throw new Error(`apiPath: a path cannot continue the segment "${open}"`);
      segments.push(...value.segments);
      variable.push(...value.segments.map((_, at) => value.variable[at] ?? false));
    } else {
      const raw = String(value);
      if (raw === "") throw new Error("apiPath: an empty path segment");
      open = (open ?? "") + raw;
      openVariable = true;
    }
  });
  close();
  return new ApiPath(segments, variable);
}

export interface PveTransport {
  readonly kind: "shell" | "api";
  /**
   * Perform one call and return the `data` value. For worker endpoints that is the UPID string; the
   * shell transport returns it only after the worker ran (pvesh runs workers in the foreground), as a
   * TaskEndedOk when pvesh's output proves the task ended OK.
   * `taskTimeoutMs` is given for worker endpoints: a transport that runs the worker within the call
   * (shell) bounds the call by it instead of the per-call timeout; one that only starts it (api) ignores it.
   */
  request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown>;
  /** Spawns (shell) or HTTP requests (api) made so far. */
  readonly calls: { count: number };
  /**
   * Something changed in Proxmox that no call of this transport shows (a task the API only started has
   * ended): answers kept from before must not be given out again (shared-reads.ts).
   */
  invalidate?(): void;
  /**
   * How many changes (writes sent, tasks ended) the daemon made through this transport so far: a view
   * kept from a smaller count is older than one of the daemon's own changes (probe-cache.ts).
   */
  readonly changes?: number;
}

/**
 * A failure reported by Proxmox itself or on the way to it. `status` is the HTTP status when there
 * was one (pvesh failures carry none); `reason` is Proxmox's text (reason phrase or stderr), which is
 * what the classifier reads; `errors` holds per-parameter texts of a 400.
 */
export class PveRequestError extends Error {
  /** The raw path (segments joined by '/'), as pvesh takes it. */
  readonly path: string;

  constructor(
    readonly method: HttpMethod,
    path: string | ApiPath,
    readonly reason: string,
    readonly status?: number,
    readonly errors?: Record<string, string>,
    readonly code?: string,
    options?: { cause?: unknown },
  ) {
    super(`${method} ${path}: ${status !== undefined ? `${status} ` : ""}${reason}`, options);
    this.name = "PveRequestError";
    this.path = String(path);
  }
}

/**
 * The answer of a worker call whose transport saw its task end, and end with `TASK OK`: pvesh runs the
 * worker in the foreground and says how it ended (transport-shell.ts, `endedOk`). The backend then
 * knows the outcome without reading the task's status. `upid` is the task's id, as pvesh printed it.
 */
export class TaskEndedOk {
  constructor(readonly upid: string) {}
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
