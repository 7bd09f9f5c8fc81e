import { execa } from "execa";
import { AgentlabError } from "../../protocol/errors.js";
import { parseUpid, workerUpid } from "./tasks.js";
import {
  type ApiPath,
  type HttpMethod,
  type Params,
  PveRequestError,
  type PveTransport,
  TaskEndedOk,
  TaskInterruptedError,
} from "./transport.js";

const VERBS: Record<HttpMethod, string> = { GET: "get", POST: "create", PUT: "set", DELETE: "delete" };

export interface ShellTransportOptions {
  /** Per-call bound (proxmox_command_timeout) for calls that run no worker. */
  timeoutMs: number;
  /**
   * After pvesh running a worker is sent SIGTERM, how long it may take to stop the worker (which runs
   * its own cleanup, e.g. a clone frees the disks it made) before it is killed. Default 60 s.
   */
  stopGraceMs?: number;
  /** The pvesh executable; found in PATH by default. */
  pvesh?: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * pvesh arguments for one call: `pvesh create /path --key value ... --output-format json`. The path
 * goes in raw: pvesh hands argv to the handler lookup without unescaping anything (pvesh.pm:398-443),
 * so a percent-encoded UPID or volid would reach the handler as `UPID%3A...`.
 */
export function pveshArgs(method: HttpMethod, path: ApiPath | string, params: Params = {}): string[] {
  const args = [VERBS[method], String(path)];
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined) continue;
    args.push(`--${key}`, typeof value === "boolean" ? (value ? "1" : "0") : String(value));
  }
  args.push("--output-format", "json");
  return args;
}

/**
 * What pvesh printed, as the API's `data`. Worker endpoints print the task log first and the UPID
 * last; synchronous `set` prints a summary line and no JSON at all (data is then null).
 */
export function parsePveshOutput(method: HttpMethod, path: string, stdout: string): unknown {
  const lines = stdout.split("\n").filter((line) => line.trim() !== "");
  if (lines.length === 0) return null;
  const last = lines[lines.length - 1]!;
  try {
    return JSON.parse(method === "GET" ? stdout : last);
  } catch {
    if (method === "GET")
      throw new PveRequestError(
        method,
        path,
        `pvesh printed something that is not JSON: ${last.slice(0, 200)}`,
      );
    return null;
  }
}

/**
 * pvesh's failures: the message is on stderr, with `NNN ` in front when it came from an HTTP-style
 * status (400 parameter errors list `key: reason` lines after it).
 */
export function parsePveshError(
  method: HttpMethod,
  path: string,
  stderr: string,
  exitCode?: number,
): PveRequestError {
  const lines = stderr
    .split("\n")
    .map((line) => line.trimEnd())
    .filter((line) => line !== "" && !/^trying to acquire lock/.test(line));
  const first = lines[0] ?? `pvesh exited with status ${exitCode ?? "?"}`;
  const status = /^(\d{3}) (.*)$/.exec(first);
  if (status && status[1] === "400") {
    const errors: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      if (/^usage:/i.test(line)) break;
      const field = /^([\w-]+): (.+)$/.exec(line);
      if (field) errors[field[1]!] = field[2]!;
    }
    return new PveRequestError(method, path, status[2]!, 400, errors);
  }
  if (status) return new PveRequestError(method, path, status[2]!, Number(status[1]));
  return new PveRequestError(method, path, lines.join(" "));
}

/**
 * Whether a worker run of pvesh that exited 0 proves its task ended with `TASK OK`, so that its status
 * need not be read. pvesh runs the worker in the foreground (`$sync` for the 'cli' environment,
 * pve-common RESTEnvironment.pm:529; pvesh sets that environment up, pve-manager PVE/CLI/pvesh.pm:45-47 →
 * RESTEnvironment.pm:169). When the worker ends, `tee_worker` reads its control message
 * (RESTEnvironment.pm:489-501): `TASK OK` is printed nowhere but the task log; `TASK ERROR: <text>`
 * prints the text on stderr, `TASK WARNINGS: N` prints `Task finished with N warning(s)!` there, and
 * anything else (no message: the worker was killed; a broken pipe) dies into an error that is printed
 * on stderr too (:500, 504-513). pvesh then prints the UPID and exits 0 in every case (pvesh.pm:461,
 * CLIHandler.pm:717). So an empty stderr after an exit 0 with a UPID for its last line means `TASK OK`.
 * On a cluster the call may run on another node through `pvesh --noproxy` over SSH; run_command passes
 * that run's stderr on (pve-common Cmd.pm:148-160, 305-306), so the same holds, but its stdout then
 * comes back as one string that is not a bare UPID (pvesh.pm:139-141): that case, and any stderr at all
 * (a warning, a Perl locale complaint), is left to the status read.
 */
export function endedOk(
  method: HttpMethod,
  path: string,
  stdout: string,
  stderr: string,
): TaskEndedOk | undefined {
  if (stderr !== "") return undefined;
  const printed = parsePveshOutput(method, path, stdout);
  if (typeof printed !== "string") return undefined;
  const upid = parseUpid(printed);
  return upid && upid.upid === printed ? new TaskEndedOk(upid.upid) : undefined;
}

/** The shell backend's transport: one `pvesh` process per call, JSON out, never a shell string. */
export class ShellTransport implements PveTransport {
  readonly kind = "shell" as const;
  readonly calls = { count: 0 };

  constructor(private readonly options: ShellTransportOptions) {}

  async request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown> {
    this.calls.count++;
    const args = pveshArgs(method, path, params);
    const raw = String(path);
    // pvesh runs a worker in the foreground, so a worker call lasts as long as its task: it is bounded by
    // the task limit. Killing it with SIGTERM stops the task (tee_worker forwards the TERM to the worker),
    // and pvesh exits once the worker is gone; SIGKILL only after the grace, since it would orphan the worker.
    const worker = taskTimeoutMs !== undefined;
    const timeoutMs = taskTimeoutMs ?? this.options.timeoutMs;
    const result = await execa(this.options.pvesh ?? "pvesh", args, {
      reject: false,
      timeout: timeoutMs,
      ...(worker ? { forceKillAfterDelay: this.options.stopGraceMs ?? 60_000 } : {}),
      ...(signal ? { cancelSignal: signal } : {}),
      ...(this.options.env ? { env: this.options.env } : {}),
      stdin: "ignore",
      stripFinalNewline: false,
    });
    if (worker && (result.isCanceled || result.timedOut)) {
      // pvesh prints the UPID last, after its worker ended (also when the worker was interrupted).
      const printed = result.exitCode === 0 ? parsePveshOutput(method, raw, String(result.stdout)) : null;
      const upid = workerUpid(printed);
      throw new TaskInterruptedError(
        result.timedOut ? "timeout" : "cancelled",
        method,
        raw,
        timeoutMs,
        // Only SIGKILL (after the grace) can end pvesh before its worker: from fork_worker on it ignores
        // TERM or forwards it (RESTEnvironment.pm:531, 450-459); one that died of TERM forked no worker.
        result.signal !== "SIGKILL",
        upid,
        { cause: result.isCanceled ? signal?.reason : undefined },
      );
    }
    if (result.isCanceled) {
      throw new AgentlabError("CANCELLED", `${method} ${raw}: cancelled`, { cause: signal?.reason });
    }
    if (result.timedOut) {
      throw new AgentlabError(
        "PROXMOX_TIMEOUT",
        `pvesh ${args[0]} ${raw} did not finish within ${timeoutMs} ms`,
        {
          details: { path: raw },
        },
      );
    }
    if (result.failed && result.exitCode === undefined) {
      const code = (result.cause as NodeJS.ErrnoException | undefined)?.code;
      throw new AgentlabError(
        "PROXMOX_UNREACHABLE",
        code === "ENOENT"
          ? "pvesh not found: the shell backend must run on a Proxmox VE node"
          : `cannot run pvesh: ${result.message}`,
        {
          hint:
            code === "ENOENT"
              ? "run agentlabd on the Proxmox host, or set proxmox_backend: api with proxmox_api_url and proxmox_api_token"
              : "check that pvesh runs as root on this host",
          cause: result.cause,
        },
      );
    }
    if (result.exitCode !== 0) throw parsePveshError(method, raw, String(result.stderr), result.exitCode);
    if (worker) {
      const ok = endedOk(method, raw, String(result.stdout), String(result.stderr));
      if (ok) return ok;
    }
    return parsePveshOutput(method, raw, String(result.stdout));
  }
}
