/** /nodes/{node}/tasks: status, log, list, stop. */
import { type AuthId, authIdString, hasPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { PveError, paramError } from "./errors.js";
import { bool, num, type Params, str } from "./schema.js";
import { findTask, stopTask } from "./tasks.js";
import type { TaskRec } from "./types.js";
import { decodeUpid } from "./upid.js";
import { checkNode } from "./vms.js";

function lookup(ctx: Ctx, auth: AuthId, node: string, upid: string): TaskRec {
  checkNode(ctx, node);
  if (!decodeUpid(upid)) throw paramError({ upid: "unable to parse worker upid" });
  const task = findTask(ctx, upid);
  // Task logs are files on the node that ran the task; other nodes have no such file.
  if (!task || task.node !== node) throw paramError({ upid: "no such task" });
  if (task.user !== authIdString(auth) && !hasPriv(ctx.state, auth, `/nodes/${node}`, ["Sys.Audit"])) {
    throw new PveError(403, `Permission check failed (/nodes/${node}, Sys.Audit)`);
  }
  return task;
}

function userFields(task: TaskRec): Record<string, string> {
  const bang = task.user.indexOf("!");
  return bang < 0
    ? { user: task.user }
    : { user: task.user.slice(0, bang), tokenid: task.user.slice(bang + 1) };
}

export function taskStatus(ctx: Ctx, auth: AuthId, node: string, upid: string): Record<string, unknown> {
  const task = lookup(ctx, auth, node, upid);
  const out: Record<string, unknown> = {
    upid: task.upid,
    node: task.node,
    pid: task.pid,
    pstart: task.pstart,
    starttime: task.starttime,
    type: task.type,
    id: task.id,
    ...userFields(task),
    status: task.phase === "done" ? "stopped" : "running",
  };
  if (task.phase === "done") out["exitstatus"] = task.exitstatus;
  return out;
}

export function taskLog(
  ctx: Ctx,
  auth: AuthId,
  node: string,
  upid: string,
  p: Params,
): { data: unknown; total: number } {
  const task = lookup(ctx, auth, node, upid);
  const start = num(p, "start") ?? 0;
  const limit = num(p, "limit") ?? 50;
  const lines = task.log.length > 0 ? task.log : ["no content"];
  const data = lines.slice(start, start + limit).map((t, i) => ({ n: start + i + 1, t }));
  return { data, total: lines.length };
}

export function stopTaskApi(ctx: Ctx, auth: AuthId, node: string, upid: string): null {
  const task = lookup(ctx, auth, node, upid);
  stopTask(ctx, task);
  return null;
}

/**
 * Whether a task is still in the node's active list: running, or finished but not yet archived into
 * the index (Tasks.pm:228-236 lists those with their status); task_archive_ms is that window.
 */
function unarchived(ctx: Ctx, t: TaskRec): boolean {
  if (t.phase !== "done") return true;
  return ctx.now - (t.endAt ?? t.createdAt) < ctx.control.task_archive_ms;
}

export function listTasks(ctx: Ctx, auth: AuthId, node: string, p: Params): { data: unknown; total: number } {
  checkNode(ctx, node);
  const me = authIdString(auth);
  const audit = hasPriv(ctx.state, auth, `/nodes/${node}`, ["Sys.Audit"]);
  const vmid = num(p, "vmid");
  const typefilter = str(p, "typefilter");
  const userfilter = str(p, "userfilter");
  const source = str(p, "source") ?? "archive";
  const errorsOnly = bool(p, "errors") ?? false;
  const since = num(p, "since");
  const until = num(p, "until");
  const rows = ctx.state.tasks
    .filter((t) => t.node === node && (audit || t.user === me))
    .filter((t) => (source === "all" ? true : source === "active" ? unarchived(ctx, t) : t.phase === "done"))
    .filter((t) => vmid === undefined || t.id === String(vmid))
    .filter((t) => !typefilter || t.type === typefilter)
    .filter((t) => !userfilter || t.user.includes(userfilter))
    .filter((t) => !errorsOnly || (t.phase === "done" && t.exitstatus !== "OK"))
    .filter((t) => since === undefined || t.starttime >= since)
    .filter((t) => until === undefined || t.starttime <= until)
    .sort((a, b) => b.starttime - a.starttime || b.pid - a.pid);
  const start = num(p, "start") ?? 0;
  const limit = num(p, "limit") ?? 50;
  const data = rows.slice(start, start + limit).map((t) => {
    const row: Record<string, unknown> = {
      upid: t.upid,
      node: t.node,
      pid: t.pid,
      pstart: t.pstart,
      starttime: t.starttime,
      type: t.type,
      id: t.id,
      ...userFields(t),
    };
    if (t.phase === "done") {
      row["endtime"] = Math.floor((t.endAt ?? t.createdAt) / 1000);
      row["status"] = t.exitstatus;
    } else if (source !== "archive") {
      // Tasks.pm:233: an entry of the active list without a status is still running.
      row["status"] = "RUNNING";
    }
    return row;
  });
  return { data, total: rows.length };
}
