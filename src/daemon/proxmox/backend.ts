import { AgentlabError } from "../../protocol/errors.js";
import { formatDuration } from "../../protocol/units.js";
import type { Logger } from "../log.js";
import { type DaemonMetrics, observed } from "../metrics/observer.js";
import { classifyProxmoxError } from "./errors.js";
import { retryOnLock } from "./retry.js";
import {
  abortableSleep,
  type PollTrace,
  parseUpid,
  TaskDurations,
  type TaskStatus,
  TaskTimeoutError,
  taskSucceeded,
  type Upid,
  waitForTask,
  workerUpid,
} from "./tasks.js";
import {
  type ApiPath,
  apiPath,
  type HttpMethod,
  type Params,
  PveRequestError,
  type PveTransport,
  TaskEndedOk,
  TaskInterruptedError,
} from "./transport.js";
import type {
  CallOptions,
  CloneOptions,
  ClusterVm,
  CreateVmParams,
  GuestInterface,
  ListTasksOptions,
  NodeInfo,
  PendingEntry,
  PowerState,
  ProxmoxBackend,
  SnapshotInfo,
  StorageConfig,
  StorageContentEntry,
  StorageInfo,
  TaskInfo,
  VmConfig,
  VmRef,
  VmStatus,
  VolumeInfo,
} from "./types.js";

export interface PveBackendOptions {
  transport: PveTransport;
  log: Logger;
  /** Bound for one call that runs no task (proxmox_command_timeout). */
  timeoutMs: number;
  /** Bound for one task, from its start to its end (proxmox_task_timeout); default: timeoutMs. */
  taskTimeoutMs?: number;
  /**
   * How long a task the daemon gave up on (over its limit, or cancelled) may take to end after it was
   * told to stop, before the daemon reports it as still running. Default 60 s.
   */
  taskStopGraceMs?: number;
  /** How long lock contention is retried before the lock error is reported. */
  lockRetryBudgetMs?: number;
  /** The API token id (USER@REALM!TOKEN), named in permission hints. */
  tokenId?: string;
  /** Told how long each worker task took, by its type (metrics_listen). */
  metrics?: Pick<DaemonMetrics, "proxmoxTask">;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  now?: () => number;
  random?: () => number;
}

type Json = Record<string, unknown>;

const asNumber = (value: unknown): number | undefined => {
  if (typeof value === "number" && Number.isFinite(value)) return value;
  if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value)))
    return Number(value);
  return undefined;
};
const asString = (value: unknown): string | undefined =>
  typeof value === "string" && value !== "" ? value : undefined;
const splitTags = (value: unknown): string[] =>
  typeof value === "string" && value !== "" ? value.split(/[;, ]+/).filter((tag) => tag !== "") : [];

/**
 * A power state from Proxmox's run-state text: `qmpstatus || status` as pvestatd reports it
 * (pvestatd.pm:341), which is what /cluster/resources carries in `status`. QEMU's other states
 * (prelaunch, inmigrate, io-error, ...) and pvestatd's "unknown" (API2Tools.pm:84-116: not reported
 * yet) are "unknown": never taken for stopped or gone.
 */
function powerState(runState: unknown): PowerState {
  if (runState === "running") return "running";
  if (runState === "stopped") return "stopped";
  if (runState === "paused" || runState === "suspended") return "paused";
  return "unknown";
}

function vmPath(vm: VmRef): ApiPath {
  return apiPath`/nodes/${vm.node}/qemu/${vm.vmid}`;
}

function storagePath(node: string, storage: string): ApiPath {
  return apiPath`/nodes/${node}/storage/${storage}`;
}

/** A config map as Proxmox returns it: numbers and strings, without the digest. */
function configOf(data: Json): VmConfig {
  const config: VmConfig = {};
  for (const [key, value] of Object.entries(data)) {
    if (key === "digest") continue;
    if (typeof value === "number" || typeof value === "string") config[key] = value;
  }
  return config;
}

/** The parameters of a config change (`delete=` joins the removed keys). */
function configParams(changes: Record<string, string | number | boolean>, remove: string[]): Params {
  const params: Params = { ...changes };
  if (remove.length > 0) params.delete = remove.join(",");
  return params;
}

/** A task's own path; `/status`, `/log` below it, and DELETE on it stops the task. */
function taskPath(upid: Upid): ApiPath {
  return apiPath`/nodes/${upid.node}/tasks/${upid.upid}`;
}

/** How long a task may run, what sets that limit, and what to do when a task exceeds it. */
interface TaskLimit {
  ms: number;
  name: string;
  fix: string;
}

/**
 * The error for a task the daemon gave up on: PROXMOX_TIMEOUT over its limit, CANCELLED when the
 * operation was cancelled. It says what became of the task, so that nobody undoes work a worker is
 * still doing.
 */
function givenUp(
  reason: "timeout" | "cancelled",
  action: string,
  limit: TaskLimit,
  task: { upid?: Upid; exitstatus?: string; workerEnded: boolean; stillRunning?: boolean },
  cause?: unknown,
): AgentlabError {
  const { upid } = task;
  const name = upid ? `the ${upid.type} task` : "the task";
  const fate = task.exitstatus
    ? `it was stopped: ${task.exitstatus}`
    : task.stillRunning
      ? "it is still running after it was told to stop"
      : task.workerEnded
        ? "it was stopped"
        : "it may still be running (pvesh had to be killed, or its status could not be read)";
  const look = upid
    ? `pvesh get /nodes/${upid.node}/tasks/${upid.upid}/status, and stop it with pvesh delete /nodes/${upid.node}/tasks/${upid.upid}`
    : "pvesh get /cluster/tasks";
  const confirmed = task.exitstatus !== undefined || task.workerEnded;
  const details = {
    ...(upid ? { upid: upid.upid } : {}),
    ...(task.exitstatus ? { exitstatus: task.exitstatus } : {}),
    limit_ms: limit.ms,
  };
  const options = { details, ...(cause !== undefined ? { cause } : {}) };
  if (reason === "cancelled") {
    return new AgentlabError("CANCELLED", `${action}: cancelled, and ${name} with it; ${fate}`, {
      ...options,
      ...(confirmed ? {} : { hint: `check it on the Proxmox host: ${look}` }),
    });
  }
  return new AgentlabError(
    "PROXMOX_TIMEOUT",
    `${action}: ${name} ran longer than ${formatDuration(limit.ms)} (${limit.name}); ${fate}`,
    {
      ...options,
      hint: confirmed ? limit.fix : `check it on the Proxmox host before retrying: ${look}`,
    },
  );
}

/**
 * A shutdown's own limit: its guest timeout (Proxmox's default 60 s, qemu-server API2/Qemu.pm:3934),
 * then with forceStop a SIGTERM, 10 s, a SIGKILL and the cleanup (QemuServer.pm:6282-6326); 60 s
 * covers the force-stop and the cleanup.
 */
export function shutdownLimit(timeoutSeconds?: number): TaskLimit {
  const seconds = timeoutSeconds ?? 60;
  return {
    ms: seconds * 1000 + 60_000,
    name: `the shutdown timeout of ${seconds}s plus 60s to force the stop`,
    fix: "the VM did not stop even when forced: check it on the Proxmox host (qm status, the task log)",
  };
}

function storageOf(volid: string): string {
  const colon = volid.indexOf(":");
  if (colon <= 0)
    throw new AgentlabError("INVALID_PARAMS", `not a Proxmox volume id: "${volid}" (expected STORAGE:NAME)`);
  return volid.slice(0, colon);
}

/**
 * The Proxmox backend, written once over a transport: every method is one API call (plus waiting
 * for its task), classified errors, lock contention retried with jitter, each call logged at debug
 * with its duration. `pvesh` and HTTPS carry the same calls, so the shell and API backends behave
 * the same by construction.
 */
export class PveBackend implements ProxmoxBackend {
  readonly kind: "shell" | "api";
  private readonly transport: PveTransport;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly taskTimeoutMs: number;
  private readonly taskStopGraceMs: number;
  private readonly lockRetryBudgetMs: number;
  private readonly tokenId: string | undefined;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly taskDurations = new TaskDurations();
  private readonly metrics: Pick<DaemonMetrics, "proxmoxTask"> | undefined;

  constructor(options: PveBackendOptions) {
    this.metrics = options.metrics;
    this.transport = options.transport;
    this.kind = options.transport.kind;
    this.log = options.log;
    this.timeoutMs = options.timeoutMs;
    this.taskTimeoutMs = options.taskTimeoutMs ?? options.timeoutMs;
    this.taskStopGraceMs = options.taskStopGraceMs ?? 60_000;
    this.lockRetryBudgetMs = options.lockRetryBudgetMs ?? 30_000;
    this.tokenId = options.tokenId;
    this.sleep = options.sleep ?? abortableSleep;
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
  }

  get calls(): { count: number } {
    return this.transport.calls;
  }

  get changes(): number {
    return this.transport.changes ?? 0;
  }

  /** One logged, classified call; `vmid` names the VM in errors. */
  private async call<T>(action: string, vmid: number | undefined, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      const result = await work();
      this.log.debug(
        { action, vmid, ms: Math.round(performance.now() - started), backend: this.kind },
        "proxmox call",
      );
      return result;
    } catch (error) {
      const classified = classifyProxmoxError(error, {
        action,
        ...(vmid !== undefined ? { vmid } : {}),
        ...(this.tokenId ? { tokenId: this.tokenId } : {}),
      });
      this.log.debug(
        {
          action,
          vmid,
          ms: Math.round(performance.now() - started),
          backend: this.kind,
          code: classified.code,
        },
        `proxmox call failed: ${classified.message}`,
      );
      throw classified;
    }
  }

  private request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown> {
    return this.transport.request(method, path, params, signal, taskTimeoutMs);
  }

  /**
   * A call that starts a worker: send it, wait for the task, and report a failed task by its exit
   * status. Lock contention (before or inside the task) is retried as a whole. The task may run for
   * `limit` (null: the endpoint is synchronous, bounded by the per-call timeout); a task the daemon
   * gives up on is stopped in Proxmox before this returns (see giveUp). A worker endpoint (every call
   * here but the synchronous `PUT config`) must answer with a task id: an answer without one is a
   * failure, never taken as success, since the task may have failed unseen.
   */
  private async mutate(
    action: string,
    vm: { vmid?: number },
    method: HttpMethod,
    path: ApiPath,
    params: Params,
    call: CallOptions = {},
    limit: TaskLimit | null = {
      ms: this.taskTimeoutMs,
      name: "proxmox_task_timeout",
      fix: "raise proxmox_task_timeout in config.yaml if tasks this long are expected (a full clone of a large disk takes minutes)",
    },
  ): Promise<void> {
    await this.call(action, vm.vmid, () =>
      retryOnLock(
        async () => {
          try {
            let data: unknown;
            // A task's time runs from the call that starts it: pvesh runs the worker within the call.
            const sent = performance.now();
            try {
              data = await this.request(method, path, params, call.signal, limit?.ms);
            } catch (error) {
              // pvesh ran the worker and was interrupted: make sure the task is over, then report it.
              if (!(error instanceof TaskInterruptedError) || !limit) throw error;
              if (error.upid === undefined)
                throw givenUp(error.reason, action, limit, { workerEnded: error.workerEnded }, error);
              await this.giveUp(error.upid, error.reason, limit, action);
              return;
            }
            if (data instanceof TaskEndedOk) {
              // pvesh ran the task and its output proved it ended OK: there is nothing left to ask.
              await this.timedTask(data.upid, sent, async () => {});
              return;
            }
            const upid = workerUpid(data);
            if (upid)
              await this.timedTask(upid, sent, () =>
                this.awaitTask(method, path, upid, call.signal, limit ?? this.commandLimit(), action, params),
              );
            else if (limit !== null)
              throw new PveRequestError(
                method,
                path,
                `the worker call answered without a task id (UPID), so its outcome is unknown: ${JSON.stringify(data)?.slice(0, 300)}`,
              );
          } catch (error) {
            throw classifyProxmoxError(error, {
              action,
              ...(vm.vmid !== undefined ? { vmid: vm.vmid } : {}),
              ...(this.tokenId ? { tokenId: this.tokenId } : {}),
            });
          } finally {
            // The task has ended (or was given up on): reads kept from while it ran are stale now.
            this.transport.invalidate?.();
          }
        },
        {
          budgetMs: this.lockRetryBudgetMs,
          baseDelayMs: 250,
          maxDelayMs: 4000,
          sleep: this.sleep,
          now: this.now,
          random: this.random,
          ...(call.signal ? { signal: call.signal } : {}),
          onRetry: (error, attempt, delayMs) =>
            this.log.info(
              { action, vmid: vm.vmid, attempt, delay_ms: delayMs },
              `retrying after lock: ${(error as Error).message}`,
            ),
        },
      ),
    );
  }

  /** Report a task's time and outcome by its UPID's type (qmclone, qmstart, ...), a bounded set. */
  private async timedTask(upid: string, sentMs: number, wait: () => Promise<void>): Promise<void> {
    const metrics = this.metrics;
    const type = parseUpid(upid)?.type;
    if (!metrics || type === undefined) return wait();
    return observed((outcome, seconds) => metrics.proxmoxTask(type, outcome, seconds), wait, sentMs);
  }

  /** For an endpoint documented as synchronous that answers with a task all the same. */
  private commandLimit(): TaskLimit {
    return {
      ms: this.timeoutMs,
      name: "proxmox_command_timeout",
      fix: "raise proxmox_command_timeout in config.yaml if the Proxmox host is this slow",
    };
  }

  /** `GET /nodes/{node}/tasks/{upid}/status`: running or stopped, with the exit status once stopped. */
  private async taskStatus(statusPath: ApiPath, signal?: AbortSignal): Promise<TaskStatus> {
    const raw = (await this.request("GET", statusPath, undefined, signal)) as Json | null;
    if (raw === null || typeof raw !== "object") {
      throw new PveRequestError(
        "GET",
        statusPath,
        `task status answer is not an object: ${JSON.stringify(raw)}`,
      );
    }
    const exitstatus = asString(raw.exitstatus);
    return {
      status: raw.status === "stopped" ? "stopped" : "running",
      ...(exitstatus ? { exitstatus } : {}),
    };
  }

  private async awaitTask(
    method: HttpMethod,
    path: ApiPath,
    upidText: string,
    signal: AbortSignal | undefined,
    limit: TaskLimit,
    action: string,
    params?: Params,
  ): Promise<void> {
    const upid = parseUpid(upidText);
    if (!upid) throw new PveRequestError(method, path, `unexpected task id ${JSON.stringify(upidText)}`);
    const statusPath = apiPath`${taskPath(upid)}/status`;
    // Clones of one template (linked or full) take alike; other tasks are alike per type.
    const kind = `${upid.type}:${upid.type === "qmclone" ? `${upid.id}:${String(params?.full ?? "")}` : ""}`;
    let status: TaskStatus;
    try {
      status = await waitForTask(() => this.taskStatus(statusPath, signal), upid.upid, {
        sleep: this.sleep,
        now: this.now,
        timeoutMs: limit.ms,
        // pvesh returned only after running the task, so it is over: ask at once (its output did not
        // prove it ended OK). The API only started it: ask about when the last task of its kind ended.
        ...(this.kind === "api"
          ? {
              ...this.taskDurations.schedule(kind),
              onStopped: (trace: PollTrace) => this.taskDurations.learn(kind, trace),
            }
          : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (error) {
      const reason =
        error instanceof TaskTimeoutError ? "timeout" : signal?.aborted ? "cancelled" : undefined;
      if (!reason) throw error;
      // The task runs on in Proxmox (the API only started it): stop it before anyone undoes its work.
      await this.giveUp(upid.upid, reason, limit, action);
      return;
    }
    if (!taskSucceeded(status)) {
      const failure = classifyProxmoxError(
        new PveRequestError(method, path, status.exitstatus ?? "unexpected status"),
        {
          action: `${upid.type} task`,
          ...(this.tokenId ? { tokenId: this.tokenId } : {}),
        },
      );
      if (failure.code !== "PROXMOX_ERROR") throw failure;
      throw new AgentlabError("PROXMOX_TASK_FAILED", `${upid.type} task failed: ${status.exitstatus}`, {
        hint: `read the task log: pvesh get /nodes/${upid.node}/tasks/${upid.upid}/log`,
        details: { upid: upid.upid, exitstatus: status.exitstatus },
      });
    }
  }

  /**
   * A task the daemon gave up on (over its limit, or the operation was cancelled) is stopped, and this
   * waits, bounded by taskStopGraceMs, until Proxmox reports it ended: an undo must not race a worker
   * that still holds the VM's lock or is still writing its disks. `DELETE /nodes/{node}/tasks/{upid}`
   * sends TERM to the worker's process group and KILL after 5 s (pve-manager PVE/API2/Tasks.pm:328,
   * pve-common RESTEnvironment.pm:406-438); the worker's error path undoes its work (a clone frees its
   * new disks and config: qemu-server API2/Qemu.pm:4716-4727). A task pvesh already stopped is only
   * read. Returns normally when the task turns out to have succeeded before it could be stopped: its
   * work is done, and the caller sees the cancellation at its next step.
   */
  private async giveUp(
    upidText: string,
    reason: "timeout" | "cancelled",
    limit: TaskLimit,
    action: string,
  ): Promise<void> {
    const upid = parseUpid(upidText);
    if (!upid) throw givenUp(reason, action, limit, { workerEnded: false });
    const statusPath = apiPath`${taskPath(upid)}/status`;
    let status: TaskStatus;
    try {
      status = await this.taskStatus(statusPath);
      if (status.status === "running") {
        this.log.warn(
          { action, upid: upid.upid, limit_ms: limit.ms },
          reason === "timeout"
            ? `stopping the ${upid.type} task: it ran longer than ${formatDuration(limit.ms)} (${limit.name})`
            : `stopping the ${upid.type} task: the operation was cancelled`,
        );
        await this.request("DELETE", taskPath(upid));
        status = await waitForTask(() => this.taskStatus(statusPath), upid.upid, {
          sleep: this.sleep,
          now: this.now,
          timeoutMs: this.taskStopGraceMs,
        });
      }
    } catch (error) {
      const stillRunning = error instanceof TaskTimeoutError;
      throw givenUp(reason, action, limit, { upid, workerEnded: false, stillRunning }, error);
    }
    if (taskSucceeded(status)) return;
    throw givenUp(reason, action, limit, {
      upid,
      workerEnded: true,
      ...(status.exitstatus ? { exitstatus: status.exitstatus } : {}),
    });
  }

  version(): Promise<{ version: string; release: string }> {
    return this.call("read Proxmox version", undefined, async () => {
      const data = (await this.request("GET", apiPath`/version`)) as Json;
      return { version: String(data.version ?? ""), release: String(data.release ?? "") };
    });
  }

  permissions(path: string): Promise<Record<string, number>> {
    return this.call(`read the token's privileges on ${path}`, undefined, async () => {
      const data = (await this.request("GET", apiPath`/access/permissions`, { path })) as Json;
      const privs = (data[path] ?? {}) as Record<string, unknown>;
      return Object.fromEntries(Object.entries(privs).map(([priv, propagate]) => [priv, Number(propagate)]));
    });
  }

  listNodes(): Promise<NodeInfo[]> {
    return this.call("list nodes", undefined, async () => {
      const data = (await this.request("GET", apiPath`/nodes`)) as Json[];
      return data.map((n) => {
        const info: NodeInfo = { node: String(n.node), online: n.status === "online" };
        for (const key of ["cpu", "maxcpu", "mem", "maxmem"] as const) {
          const value = asNumber(n[key]);
          if (value !== undefined) info[key] = value;
        }
        return info;
      });
    });
  }

  listVms(): Promise<ClusterVm[]> {
    return this.call("list cluster VMs", undefined, async () => {
      const data = (await this.request("GET", apiPath`/cluster/resources`, { type: "vm" })) as Json[];
      return data
        .filter((r) => r.type === "qemu")
        .map((r) => {
          const vm: ClusterVm = {
            vmid: Number(r.vmid),
            node: String(r.node),
            // There is no qmpstatus here: `status` already is pvestatd's qmpstatus || status.
            state: powerState(r.status),
            // Missing until pvestatd has reported the VM: read the config where it matters.
            template: asNumber(r.template) === 1,
            tags: splitTags(r.tags),
          };
          const name = asString(r.name);
          if (name) vm.name = name;
          const lock = asString(r.lock);
          if (lock) vm.lock = lock;
          const cpu = asNumber(r.cpu);
          if (cpu !== undefined) vm.cpu = cpu;
          return vm;
        });
    });
  }

  isVmidFree(vmid: number): Promise<boolean> {
    return this.call(`check VMID ${vmid}`, vmid, async () => {
      try {
        await this.request("GET", apiPath`/cluster/nextid`, { vmid });
        return true;
      } catch (error) {
        if (
          error instanceof PveRequestError &&
          /already exists/.test(`${error.errors?.vmid ?? ""} ${error.reason}`)
        ) {
          return false;
        }
        throw error;
      }
    });
  }

  clone(source: VmRef, newid: number, options: CloneOptions, call?: CallOptions): Promise<void> {
    const params: Params = { newid, name: options.name, full: options.full ? 1 : 0 };
    if (options.target) params.target = options.target;
    if (options.storage) params.storage = options.storage;
    if (options.snapname) params.snapname = options.snapname;
    if (options.format) params.format = options.format;
    if (options.description) params.description = options.description;
    const from = options.snapname ? ` (snapshot ${options.snapname})` : "";
    return this.mutate(
      `clone ${source.vmid}${from} -> ${newid}`,
      { vmid: newid },
      "POST",
      apiPath`${vmPath(source)}/clone`,
      params,
      call,
    );
  }

  createVm(node: string, vmid: number, params: CreateVmParams, call?: CallOptions): Promise<void> {
    return this.mutate(
      `create VM ${vmid}`,
      { vmid },
      "POST",
      apiPath`/nodes/${node}/qemu`,
      { ...params, vmid },
      call,
    );
  }

  getConfig(vm: VmRef, options: { current?: boolean; snapshot?: string } = {}): Promise<VmConfig> {
    const what = options.snapshot ? `snapshot ${options.snapshot} of VM ${vm.vmid}` : `VM ${vm.vmid}`;
    return this.call(`read config of ${what}`, vm.vmid, async () => {
      const params: Params = {};
      if (options.current) params.current = 1;
      if (options.snapshot) params.snapshot = options.snapshot;
      const data = (await this.request(
        "GET",
        apiPath`${vmPath(vm)}/config`,
        Object.keys(params).length > 0 ? params : undefined,
      )) as Json;
      return configOf(data);
    });
  }

  getPending(vm: VmRef): Promise<PendingEntry[]> {
    return this.call(`read pending changes of VM ${vm.vmid}`, vm.vmid, async () => {
      const data = (await this.request("GET", apiPath`${vmPath(vm)}/pending`)) as Json[];
      return data.map((row) => {
        const entry: PendingEntry = { key: String(row.key) };
        for (const field of ["value", "pending"] as const) {
          const value = row[field];
          if (typeof value === "string" || typeof value === "number") entry[field] = value;
        }
        const del = asNumber(row.delete);
        if (del) entry.delete = del;
        return entry;
      });
    });
  }

  setConfig(
    vm: VmRef,
    changes: Record<string, string | number | boolean>,
    remove: string[] = [],
  ): Promise<void> {
    const params = configParams(changes, remove);
    if (Object.keys(params).length === 0) return Promise.resolve();
    // PUT config is synchronous (no worker): the per-call timeout bounds it.
    return this.mutate(`configure VM ${vm.vmid}`, vm, "PUT", apiPath`${vmPath(vm)}/config`, params, {}, null);
  }

  setConfigAsync(
    vm: VmRef,
    changes: Record<string, string | number | boolean>,
    remove: string[] = [],
    call?: CallOptions,
  ): Promise<void> {
    const params = configParams(changes, remove);
    if (Object.keys(params).length === 0) return Promise.resolve();
    return this.mutate(`configure VM ${vm.vmid}`, vm, "POST", apiPath`${vmPath(vm)}/config`, params, call);
  }

  resizeDisk(vm: VmRef, disk: string, size: string, call?: CallOptions): Promise<void> {
    return this.mutate(
      `resize ${disk} of VM ${vm.vmid} to ${size}`,
      vm,
      "PUT",
      apiPath`${vmPath(vm)}/resize`,
      { disk, size },
      call,
    );
  }

  start(vm: VmRef, call?: CallOptions): Promise<void> {
    return this.mutate(`start VM ${vm.vmid}`, vm, "POST", apiPath`${vmPath(vm)}/status/start`, {}, call);
  }

  stop(vm: VmRef, call?: CallOptions): Promise<void> {
    return this.mutate(`stop VM ${vm.vmid}`, vm, "POST", apiPath`${vmPath(vm)}/status/stop`, {}, call);
  }

  shutdown(
    vm: VmRef,
    options: { timeoutSeconds?: number; forceStop?: boolean } = {},
    call?: CallOptions,
  ): Promise<void> {
    const params: Params = {};
    if (options.timeoutSeconds !== undefined) params.timeout = options.timeoutSeconds;
    if (options.forceStop) params.forceStop = 1;
    return this.mutate(
      `shut down VM ${vm.vmid}`,
      vm,
      "POST",
      apiPath`${vmPath(vm)}/status/shutdown`,
      params,
      call,
      shutdownLimit(options.timeoutSeconds),
    );
  }

  suspend(vm: VmRef, call?: CallOptions): Promise<void> {
    return this.mutate(`suspend VM ${vm.vmid}`, vm, "POST", apiPath`${vmPath(vm)}/status/suspend`, {}, call);
  }

  resume(vm: VmRef, call?: CallOptions): Promise<void> {
    return this.mutate(`resume VM ${vm.vmid}`, vm, "POST", apiPath`${vmPath(vm)}/status/resume`, {}, call);
  }

  status(vm: VmRef): Promise<VmStatus> {
    return this.call(`read status of VM ${vm.vmid}`, vm.vmid, async () => {
      const data = (await this.request("GET", apiPath`${vmPath(vm)}/status/current`)) as Json;
      const status: VmStatus = {
        vmid: vm.vmid,
        node: vm.node,
        // status/current has both: status (process) and qmpstatus (QEMU's run state, with full=1).
        state: data.status === "stopped" ? "stopped" : powerState(data.qmpstatus ?? data.status),
        template: asNumber(data.template) === 1,
        uptimeSeconds: asNumber(data.uptime) ?? 0,
        cpu: asNumber(data.cpu) ?? 0,
        tags: splitTags(data.tags),
      };
      const name = asString(data.name);
      if (name) status.name = name;
      const lock = asString(data.lock);
      if (lock) status.lock = lock;
      return status;
    });
  }

  destroy(vm: VmRef, options: { purge?: boolean } = {}, call?: CallOptions): Promise<void> {
    const params: Params = options.purge ? { purge: 1, "destroy-unreferenced-disks": 1 } : {};
    return this.mutate(`destroy VM ${vm.vmid}`, vm, "DELETE", vmPath(vm), params, call);
  }

  snapshotCreate(vm: VmRef, name: string, description?: string, call?: CallOptions): Promise<void> {
    const params: Params = { snapname: name };
    if (description) params.description = description;
    return this.mutate(
      `snapshot VM ${vm.vmid} as ${name}`,
      vm,
      "POST",
      apiPath`${vmPath(vm)}/snapshot`,
      params,
      call,
    );
  }

  snapshotList(vm: VmRef): Promise<SnapshotInfo[]> {
    return this.call(`list snapshots of VM ${vm.vmid}`, vm.vmid, async () => {
      const data = (await this.request("GET", apiPath`${vmPath(vm)}/snapshot`)) as Json[];
      return data
        .filter((s) => s.name !== "current")
        .map((s) => {
          const snapshot: SnapshotInfo = { name: String(s.name), vmstate: asNumber(s.vmstate) === 1 };
          const parent = asString(s.parent);
          if (parent) snapshot.parent = parent;
          const description = asString(s.description);
          if (description) snapshot.description = description;
          const snaptime = asNumber(s.snaptime);
          if (snaptime !== undefined) snapshot.snaptime = snaptime;
          return snapshot;
        })
        .sort((a, b) => (a.snaptime ?? 0) - (b.snaptime ?? 0));
    });
  }

  snapshotRollback(vm: VmRef, name: string, call?: CallOptions): Promise<void> {
    const path = apiPath`${vmPath(vm)}/snapshot/${name}/rollback`;
    return this.mutate(`roll VM ${vm.vmid} back to ${name}`, vm, "POST", path, {}, call);
  }

  snapshotDelete(
    vm: VmRef,
    name: string,
    call?: CallOptions,
    options: { force?: boolean } = {},
  ): Promise<void> {
    const path = apiPath`${vmPath(vm)}/snapshot/${name}`;
    const params: Params = options.force ? { force: 1 } : {};
    return this.mutate(`delete snapshot ${name} of VM ${vm.vmid}`, vm, "DELETE", path, params, call);
  }

  guestInterfaces(vm: VmRef): Promise<GuestInterface[]> {
    return this.call(`ask the guest agent of VM ${vm.vmid} for its addresses`, vm.vmid, async () => {
      const data = (await this.request("GET", apiPath`${vmPath(vm)}/agent/network-get-interfaces`)) as Json;
      const result = Array.isArray(data.result) ? (data.result as Json[]) : [];
      return result.map((iface) => {
        const addresses = Array.isArray(iface["ip-addresses"]) ? (iface["ip-addresses"] as Json[]) : [];
        const pick = (type: string) =>
          addresses.filter((a) => a["ip-address-type"] === type).map((a) => String(a["ip-address"]));
        const out: GuestInterface = { name: String(iface.name), ipv4: pick("ipv4"), ipv6: pick("ipv6") };
        const mac = asString(iface["hardware-address"]);
        if (mac) out.mac = mac.toLowerCase();
        return out;
      });
    });
  }

  listStorages(node: string): Promise<StorageInfo[]> {
    return this.call(`list storages of node ${node}`, undefined, async () => {
      const data = (await this.request("GET", apiPath`/nodes/${node}/storage`)) as Json[];
      return data.map((s) => {
        const info: StorageInfo = {
          storage: String(s.storage),
          type: String(s.type),
          active: asNumber(s.active) === 1,
          enabled: asNumber(s.enabled) !== 0,
          shared: asNumber(s.shared) === 1,
          content: typeof s.content === "string" ? s.content.split(",").filter(Boolean) : [],
        };
        const total = asNumber(s.total);
        if (total !== undefined) info.totalBytes = total;
        const used = asNumber(s.used);
        if (used !== undefined) info.usedBytes = used;
        const avail = asNumber(s.avail);
        if (avail !== undefined) info.availBytes = avail;
        return info;
      });
    });
  }

  storageConfig(storage: string): Promise<StorageConfig> {
    return this.call(`read the configuration of storage ${storage}`, undefined, async () => {
      const data = (await this.request("GET", apiPath`/storage/${storage}`)) as Json;
      const config: StorageConfig = {
        storage: String(data.storage ?? storage),
        type: String(data.type ?? ""),
        content: typeof data.content === "string" ? data.content.split(",").filter(Boolean) : [],
        shared: asNumber(data.shared) === 1,
        disabled: asNumber(data.disable) === 1,
      };
      for (const key of ["pool", "vgname", "thinpool", "path"] as const) {
        const value = asString(data[key]);
        if (value) config[key] = value;
      }
      if (data["snapshot-as-volume-chain"] !== undefined)
        config.snapshotAsVolumeChain = asNumber(data["snapshot-as-volume-chain"]) === 1;
      return config;
    });
  }

  storageContent(
    node: string,
    storage: string,
    options: { vmid?: number; content?: string } = {},
  ): Promise<StorageContentEntry[]> {
    return this.call(`list the content of storage ${storage} on node ${node}`, undefined, async () => {
      const params: Params = {};
      if (options.vmid !== undefined) params.vmid = options.vmid;
      if (options.content) params.content = options.content;
      const data = (await this.request(
        "GET",
        apiPath`${storagePath(node, storage)}/content`,
        Object.keys(params).length > 0 ? params : undefined,
      )) as Json[];
      return data.map((row) => {
        const entry: StorageContentEntry = {
          volid: String(row.volid),
          format: String(row.format ?? ""),
          content: String(row.content ?? ""),
          sizeBytes: asNumber(row.size) ?? 0,
        };
        const vmid = asNumber(row.vmid);
        if (vmid !== undefined) entry.vmid = vmid;
        const used = asNumber(row.used);
        if (used !== undefined) entry.usedBytes = used;
        const ctime = asNumber(row.ctime);
        if (ctime !== undefined) entry.ctime = ctime;
        const parent = asString(row.parent);
        if (parent) entry.parent = parent;
        return entry;
      });
    });
  }

  listTasks(node: string, options: ListTasksOptions = {}): Promise<TaskInfo[]> {
    return this.call(`list tasks of node ${node}`, undefined, async () => {
      const params: Params = {};
      if (options.vmid !== undefined) params.vmid = options.vmid;
      if (options.typefilter) params.typefilter = options.typefilter;
      if (options.source) params.source = options.source;
      if (options.limit !== undefined) params.limit = options.limit;
      const data = (await this.request(
        "GET",
        apiPath`/nodes/${node}/tasks`,
        Object.keys(params).length > 0 ? params : undefined,
      )) as Json[];
      return data.map((row) => {
        // Token tasks split the user into user and tokenid.
        const tokenid = asString(row.tokenid);
        const task: TaskInfo = {
          upid: String(row.upid),
          node: String(row.node ?? node),
          type: String(row.type ?? ""),
          id: String(row.id ?? ""),
          user: `${String(row.user ?? "")}${tokenid ? `!${tokenid}` : ""}`,
          starttime: asNumber(row.starttime) ?? 0,
          // Tasks.pm:233: the active list marks running tasks `status: "RUNNING"`; finished ones
          // not yet archived are listed too, with their exit status and endtime.
          running: row.status === "RUNNING" || (row.status === undefined && row.endtime === undefined),
        };
        const endtime = asNumber(row.endtime);
        if (endtime !== undefined) task.endtime = endtime;
        const status = asString(row.status);
        if (status && status !== "RUNNING") task.status = status;
        return task;
      });
    });
  }

  volumeAlloc(
    node: string,
    storage: string,
    vmid: number,
    filename: string,
    size: string,
    format?: string,
  ): Promise<string> {
    return this.call(`allocate ${filename} on ${storage}`, vmid, async () => {
      const params: Params = { vmid, filename, size };
      if (format) params.format = format;
      const path = apiPath`/nodes/${node}/storage/${storage}/content`;
      const data = await this.request("POST", path, params);
      if (typeof data !== "string" || !data.includes(":")) {
        throw new PveRequestError(
          "POST",
          path,
          `unexpected answer ${JSON.stringify(data)} (expected a volume id)`,
        );
      }
      return data;
    });
  }

  volumeInfo(node: string, volid: string): Promise<VolumeInfo> {
    return this.call(`look up volume ${volid}`, undefined, async () => {
      const path = apiPath`/nodes/${node}/storage/${storageOf(volid)}/content/${volid}`;
      const data = (await this.request("GET", path)) as Json;
      const info: VolumeInfo = { volid, path: String(data.path ?? ""), sizeBytes: asNumber(data.size) ?? 0 };
      const format = asString(data.format);
      if (format) info.format = format;
      return info;
    });
  }

  volumeFree(node: string, volid: string, call?: CallOptions): Promise<void> {
    const path = apiPath`/nodes/${node}/storage/${storageOf(volid)}/content/${volid}`;
    return this.mutate(`free volume ${volid}`, {}, "DELETE", path, {}, call);
  }
}
