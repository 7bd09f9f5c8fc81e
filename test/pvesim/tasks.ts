/**
 * Worker tasks without workers. A task is data (its operation, locks and timing) and every access to
 * the model first "settles" the cluster: tasks whose time has come begin or end, in time order, and
 * apply their effects. So a clone started by one `qm` process is finished by whichever process looks
 * next, and the HTTPS server needs no timers.
 *
 * Per-VM config flocks are modelled too: a task holds the flock of its VM(s) from begin to end, a
 * task that cannot get them waits (up to 1 s for clones, 10 s otherwise) and then fails with
 * Proxmox's `can't lock file ... - got timeout`.
 */
import type { AuthId } from "./access.js";
import { authIdString } from "./access.js";
import type { Ctx } from "./context.js";
import { findFault, matchesVmid } from "./control.js";
import { FlockBusy, fail, lockTimeout, PveError } from "./errors.js";
import { createTaskLog, openConfigLockFile, requireConfigLockFile } from "./host-files.js";
import type { TaskLock, TaskOp, TaskRec } from "./types.js";
import { encodeUpid } from "./upid.js";

export interface BeginResult {
  durationMs: number;
  /** Decided at begin, reported at the end (effects are undone through `abort`). */
  failAtEnd?: string;
}

export interface TaskKind {
  /** Checks (errors become the task's exit status) and the effects visible while it runs. */
  begin(ctx: Ctx, task: TaskRec): BeginResult;
  /** The effects of success. May throw a PveError to fail the task at its end instead. */
  finish(ctx: Ctx, task: TaskRec): void;
  /** Undo what `begin` did when the task fails at its end. */
  abort(ctx: Ctx, task: TaskRec): void;
  /**
   * For work whose end is not known in advance (a real QEMU that has to exit): called when the task's
   * end time has come; returns a later time to look again (the task stays active), or undefined to end
   * now. It may set `task.failAtEnd`.
   */
  poll?(ctx: Ctx, task: TaskRec): number | undefined;
  /**
   * Clean up after a task that failed before it began (flock timeout, stopped while waiting): for
   * operations that changed the cluster before their worker started, like create's `lock: create`.
   */
  discard?(ctx: Ctx, task: TaskRec): void;
}

const kinds = new Map<string, TaskKind>();

export function registerTaskKind(kind: string, impl: TaskKind): void {
  kinds.set(kind, impl);
}

const KEEP_DONE_TASKS = 1000;

const DEFAULT_FAILURES: Record<string, (task: TaskRec) => string> = {
  qmcreate: (t) =>
    `unable to create VM ${t.op.vmid} - zfs error: cannot create 'rpool/data/vm-${t.op.vmid}-disk-0': out of space`,
  qmclone: (t) =>
    `clone failed: zfs error: cannot create 'rpool/data/vm-${t.op.params["newid"]}-disk-0': out of space`,
  qmstart: () => "start failed: QEMU exited with code 1",
  qmstop: (t) => `VM ${t.op.vmid} qmp command 'quit' failed - got timeout`,
  qmshutdown: () => "VM quit/powerdown failed - got timeout",
  qmdestroy: (t) => `zfs error: cannot destroy 'rpool/data/vm-${t.op.vmid}-disk-0': dataset is busy`,
  qmsnapshot: () => "snapshot create failed: starting cleanup",
  resize: () => "zfs error: cannot set property for 'rpool/data': out of space",
};

export interface NewTask {
  node: string;
  type: string;
  /** The UPID id field (usually the VMID). */
  id: string;
  auth: AuthId;
  op: TaskOp;
  locks: TaskLock[];
  lockTimeoutMs?: number;
}

export function createTask(ctx: Ctx, spec: NewTask): TaskRec {
  const { state, now } = ctx;
  const node = state.nodes.find((n) => n.name === spec.node);
  if (!node) throw fail(`no such node '${spec.node}'`);
  const pid = state.nextPid++;
  const pstart = Math.max(0, Math.floor((now - node.bootMs) / 10));
  const starttime = Math.floor(now / 1000);
  const user = authIdString(spec.auth);
  const task: TaskRec = {
    upid: encodeUpid({ node: spec.node, pid, pstart, starttime, type: spec.type, id: spec.id, user }),
    node: spec.node,
    pid,
    pstart,
    starttime,
    type: spec.type,
    id: spec.id,
    user,
    createdAt: now,
    phase: "waiting",
    log: [],
    op: spec.op,
    locks: spec.locks,
    lockTimeoutMs: spec.lockTimeoutMs ?? 10_000,
    scratch: {},
  };
  // fork_worker creates the log before the worker exists: its failure fails the call, no task is made.
  createTaskLog(ctx.dir, task.upid);
  state.tasks.push(task);
  // The worker opens its VMs' lock files (lock_file_full) before it can flock them: a failure there is
  // the task's failure, and nothing of the operation happens.
  for (const lock of spec.locks) {
    const message = openConfigLockFile(ctx.dir, lock.vmid);
    if (message) {
      failTaskNow(ctx, task, message);
      return task;
    }
  }
  settle(ctx);
  return task;
}

/** Ends a task at once with `message` (before or during its work): the worker died. */
export function failTaskNow(ctx: Ctx, task: TaskRec, message: string, logLines: string[] = []): void {
  if (task.phase === "done") return;
  task.log.push(...logLines);
  task.failAtEnd = message;
  if (task.phase === "waiting") task.beginAt = ctx.now;
  end(ctx, task, ctx.now);
}

const conflicts = (a: TaskLock, b: TaskLock): boolean => a.vmid === b.vmid && !(a.shared && b.shared);

/** The lock this task cannot get yet (held by a running task or wanted by an earlier waiting one). */
function blockingLock(tasks: TaskRec[], task: TaskRec): TaskLock | undefined {
  for (const other of tasks) {
    if (other === task) break;
    if (other.phase === "done") continue;
    for (const want of task.locks) {
      if (other.locks.some((held) => conflicts(held, want))) return want;
    }
  }
  // Tasks after this one can only hold locks if they are active (they began while we waited).
  for (const other of tasks) {
    if (other === task || other.phase !== "active") continue;
    for (const want of task.locks) {
      if (other.locks.some((held) => conflicts(held, want))) return want;
    }
  }
  return undefined;
}

function flatten(message: string): string {
  return message.replace(/\s*\n\s*/g, " ").trim();
}

function begin(ctx: Ctx, task: TaskRec, at: number): void {
  const sub: Ctx = { ...ctx, now: at };
  task.phase = "active";
  task.beginAt = at;
  const kind = kinds.get(task.op.kind);
  try {
    if (!kind) throw fail(`simulator has no implementation for task kind '${task.op.kind}'`);
    // A `lock kind=flock` fault: the worker's own lock_config times out (qemu-server takes the config
    // flock inside the start/stop/destroy workers), which is the task's exit status.
    const flock = findFault(
      ctx.state,
      ctx.control,
      "lock",
      (a) => a["kind"] === "flock" && task.locks.some((l) => matchesVmid(a, l.vmid)),
      { consume: true, now: at },
    );
    if (flock) throw lockTimeout(task.locks[0]!.vmid);
    const result = kind.begin(sub, task);
    task.scratch["began"] = true;
    task.endAt = at + result.durationMs;
    // A task slower than the caller's patience (a full clone of a big disk, a stuck storage): `by=` ms more.
    const slow = findFault(
      ctx.state,
      ctx.control,
      "slow_task",
      (a) => (a["type"] === undefined || a["type"] === task.type) && matchesVmid(a, task.op.vmid),
      { consume: true, now: at },
    );
    if (slow) task.endAt += Number(slow.args["by"] ?? 600_000);
    if (result.failAtEnd) task.failAtEnd = result.failAtEnd;
    const fault = findFault(
      ctx.state,
      ctx.control,
      "fail_task",
      (a) => (a["type"] === undefined || a["type"] === task.type) && matchesVmid(a, task.op.vmid),
      { consume: true, now: at },
    );
    if (fault && !task.failAtEnd) {
      task.failAtEnd =
        fault.args["message"] ||
        (DEFAULT_FAILURES[task.type]?.(task) ?? `${task.type} failed: simulated failure`);
    }
  } catch (err) {
    if (!(err instanceof PveError)) throw err;
    task.endAt = at + ctx.control.fail_ms;
    task.failAtEnd = err.message;
  }
}

function end(ctx: Ctx, task: TaskRec, at: number): void {
  const sub: Ctx = { ...ctx, now: at };
  const kind = kinds.get(task.op.kind);
  task.phase = "done";
  task.endAt = at;
  if (task.failAtEnd === undefined) {
    try {
      kind?.finish(sub, task);
    } catch (err) {
      if (!(err instanceof PveError)) throw err;
      task.failAtEnd = err.message;
      if (task.scratch["began"]) kind?.abort(sub, task);
    }
  } else if (task.scratch["began"]) {
    kind?.abort(sub, task);
  } else {
    kind?.discard?.(sub, task);
  }
  if (task.failAtEnd !== undefined) {
    const message = flatten(task.failAtEnd);
    task.exitstatus = message;
    task.log.push(`TASK ERROR: ${message}`);
  } else {
    const warnings = Number(task.scratch["warnings"] ?? 0);
    task.exitstatus = warnings > 0 ? `WARNINGS: ${warnings}` : "OK";
    task.log.push(warnings > 0 ? `TASK WARNINGS: ${warnings}` : "TASK OK");
  }
}

/** Begins every waiting task whose locks are free, as of `at` (never before it was created). */
function beginUnblocked(ctx: Ctx, at: number): void {
  for (const task of ctx.state.tasks) {
    if (task.phase !== "waiting" || task.createdAt > ctx.now) continue;
    if (blockingLock(ctx.state.tasks, task)) continue;
    begin(ctx, task, Math.max(task.createdAt, at));
  }
}

/** Applies, in time order, every task begin and end that is due. */
export function settle(ctx: Ctx): void {
  const { state } = ctx;
  let cursor = 0;
  for (let guard = 0; guard < 100_000; guard++) {
    beginUnblocked(ctx, cursor);
    let next: { at: number; task: TaskRec; what: "end" | "deadline" } | undefined;
    for (const task of state.tasks) {
      if (task.phase === "active" && task.endAt !== undefined && task.endAt <= ctx.now) {
        if (!next || task.endAt < next.at) next = { at: task.endAt, task, what: "end" };
      } else if (task.phase === "waiting") {
        const deadline = task.createdAt + task.lockTimeoutMs;
        if (deadline <= ctx.now && (!next || deadline < next.at))
          next = { at: deadline, task, what: "deadline" };
      }
    }
    if (!next) break;
    cursor = next.at;
    if (next.what === "end") {
      const kind = kinds.get(next.task.op.kind);
      const again = next.task.failAtEnd === undefined ? kind?.poll?.(ctx, next.task) : undefined;
      if (again !== undefined) {
        next.task.endAt = Math.max(again, ctx.now + 1);
        continue;
      }
      end(ctx, next.task, next.at);
    } else {
      const blocked = blockingLock(state.tasks, next.task);
      next.task.phase = "active";
      next.task.beginAt = next.at;
      next.task.failAtEnd = lockTimeout(blocked?.vmid ?? next.task.op.vmid).message;
      end(ctx, next.task, next.at);
    }
  }
  const done = state.tasks.filter((t) => t.phase === "done");
  if (done.length > KEEP_DONE_TASKS) {
    const drop = new Set(done.slice(0, done.length - KEEP_DONE_TASKS));
    state.tasks = state.tasks.filter((t) => !drop.has(t));
  }
}

/**
 * For synchronous operations that take a VM's config flock: throws FlockBusy while a task holds it
 * (in a conflicting mode), so the caller waits outside the state lock and retries, or times out like
 * flock would.
 */
export function requireFlock(
  ctx: Ctx,
  vmid: number,
  timeoutMs = 10_000,
  shared = false,
  /** The real lock is taken inside the worker (clone): its lock file is opened by createTask. */
  inWorker = false,
): void {
  const fault = findFault(
    ctx.state,
    ctx.control,
    "lock",
    (a) => a["kind"] === "flock" && matchesVmid(a, vmid),
    { consume: true, now: ctx.now },
  );
  if (fault) throw lockTimeout(vmid);
  if (!inWorker) requireConfigLockFile(ctx.dir, vmid);
  const want: TaskLock = { vmid, shared };
  for (const task of ctx.state.tasks) {
    if (task.phase === "done") continue;
    if (task.locks.some((held) => conflicts(held, want))) {
      // A waiting task has no end yet; poll again shortly.
      throw new FlockBusy(vmid, task.endAt ?? ctx.now + 20, timeoutMs);
    }
  }
}

export function findTask(ctx: Ctx, upid: string): TaskRec | undefined {
  return ctx.state.tasks.find((t) => t.upid === upid);
}

/**
 * `DELETE /nodes/{node}/tasks/{upid}`, or the signal a foreground CLI forwards: the worker gets TERM
 * and dies with `received interrupt` (pve-common RESTEnvironment.pm:566), cleaning up after itself. A
 * worker past its start may have its own TERM handler with its own text (clone: `interrupted by
 * signal`); `interrupted` tells its abort that it was stopped mid-work.
 */
export function stopTask(ctx: Ctx, task: TaskRec): void {
  if (task.phase === "done") return;
  task.failAtEnd = "received interrupt";
  if (task.phase === "waiting") task.beginAt = ctx.now;
  else task.scratch["interrupted"] = true;
  end(ctx, task, ctx.now);
}
