/**
 * What the three fake CLIs share: PVE-style option parsing (`--key value`, `-key value`, bare
 * boolean flags), the local node, foreground task waiting, and Perl-like error output and exit codes.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { ROOT } from "./access.js";
import { PveError } from "./errors.js";
import { ROUTES, type Route, type RouteResult } from "./routes.js";
import { type ApiCall, callApi, withModel } from "./runner.js";
import { type ParamSpec, parseBoolean, type RawParams } from "./schema.js";
import { findTask, stopTask } from "./tasks.js";
import type { TaskRec } from "./types.js";

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export const processIo: Io = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/** A usage error in the CLI's own words (exit 255 like any Perl die). */
export class UsageError extends Error {}

export function routeFor(method: string, path: string): Route {
  const route = ROUTES.find((r) => r.method === method && r.path === path);
  if (!route) throw new Error(`no route ${method} ${path}`);
  return route;
}

export function specOf(route: Route, key: string): ParamSpec | undefined {
  return route.params[key] ?? route.additional?.(key);
}

export interface ParsedArgs {
  positional: string[];
  options: RawParams;
}

/**
 * Splits argv into positionals and options. A boolean option may stand alone (`--full`) or take
 * 0/1 (`--full 0`); every other option takes the next argument.
 */
export function parseArgs(argv: string[], specFor: (key: string) => ParamSpec | undefined): ParsedArgs {
  const positional: string[] = [];
  const options: RawParams = {};
  const add = (key: string, value: string): void => {
    const prev = options[key];
    if (prev === undefined) options[key] = value;
    else options[key] = Array.isArray(prev) ? [...prev, value] : [prev, value];
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const m = /^--?([a-zA-Z][\w-]*)(?:=(.*))?$/s.exec(arg);
    if (!m) {
      positional.push(arg);
      continue;
    }
    const key = m[1]!;
    if (m[2] !== undefined) {
      add(key, m[2]);
      continue;
    }
    const spec = specFor(key);
    const next = argv[i + 1];
    if (spec?.type === "boolean") {
      if (next !== undefined && parseBoolean(next) !== undefined) {
        add(key, next);
        i++;
      } else {
        add(key, "1");
      }
      continue;
    }
    if (next === undefined)
      throw new PveError(400, "Parameter verification failed.", { errors: { [key]: "missing value" } });
    add(key, next);
    i++;
  }
  return { positional, options };
}

/** Binds positionals to names; a missing one is a parameter error like in PVE. */
export function bindPositional(names: string[], parsed: ParsedArgs): RawParams {
  const params: RawParams = { ...parsed.options };
  const errors: Record<string, string> = {};
  names.forEach((name, i) => {
    const value = parsed.positional[i];
    if (value === undefined) errors[name] = "property is missing and it is not optional";
    else params[name] = value;
  });
  if (Object.keys(errors).length > 0) throw new PveError(400, "Parameter verification failed.", { errors });
  if (parsed.positional.length > names.length) throw new UsageError("too many arguments");
  return params;
}

export async function localNode(dir: string): Promise<string> {
  const wanted = process.env["PVESIM_NODE"];
  return withModel(dir, (ctx) => {
    if (wanted) {
      if (!ctx.state.nodes.some((n) => n.name === wanted))
        throw new Error(`PVESIM_NODE=${wanted} is not a node of this cluster`);
      return wanted;
    }
    return ctx.state.nodes[0]!.name;
  });
}

export async function rootCall(dir: string, call: Omit<ApiCall, "auth">): Promise<RouteResult> {
  return callApi(dir, { ...call, auth: ROOT });
}

const INTERRUPTS = ["SIGINT", "SIGTERM", "SIGQUIT"] as const;

/**
 * The foreground worker's signal handling. pvesh, qm and pvesm run a worker in the foreground; while
 * it runs, SIGINT, SIGTERM and SIGQUIT to the CLI are forwarded to the worker's process group
 * (tee_worker, pve-common RESTEnvironment.pm:445-459) and the CLI itself ignores them (:531): the
 * worker dies with `received interrupt` (:566), undoing its work as its error path does, and the CLI
 * prints the outcome and exits only once the worker is gone (:735-741). The simulator's worker is the
 * task record, so a signal stops the task in the model. Armed by the CLI program before the call
 * starts, so a signal that arrives while the task is being created stops it too; a signal that came
 * when no task was started ends the process as the signal would have (see `exitIfInterrupted`).
 */
const interrupt = {
  armed: false,
  signal: undefined as NodeJS.Signals | undefined,
  wake: new AbortController(),
};

export function armForegroundInterrupt(): void {
  if (interrupt.armed) return;
  interrupt.armed = true;
  for (const name of INTERRUPTS) {
    process.on(name, () => {
      interrupt.signal ??= name;
      interrupt.wake.abort();
    });
  }
}

/** After a call that started no worker: a signal received meanwhile kills the process after all. */
export function exitIfInterrupted(): void {
  const name = interrupt.signal;
  if (!name) return;
  process.removeAllListeners(name);
  process.kill(process.pid, name);
}

/** Waits for a task like a CLI running the worker in the foreground, streaming its log to stdout. */
export async function waitForTask(dir: string, upid: string, io: Io): Promise<TaskRec> {
  let printed = 0;
  let stopped = false;
  for (;;) {
    const interrupted = interrupt.signal !== undefined && !stopped;
    const task = await withModel(dir, (ctx) => {
      const t = findTask(ctx, upid);
      if (t && interrupted) stopTask(ctx, t);
      return t ? (JSON.parse(JSON.stringify(t)) as TaskRec) : undefined;
    });
    if (interrupted) {
      stopped = true;
      // The CLI survives the signal it forwarded; a later one has nothing left to stop.
      interrupt.signal = undefined;
    }
    if (!task) throw new Error(`task ${upid} vanished`);
    const lines = task.log.filter((l) => !/^TASK (OK|ERROR|WARNINGS)/.test(l));
    for (const line of lines.slice(printed)) io.out(`${line}\n`);
    printed = lines.length;
    if (task.phase === "done") return task;
    const wait = task.endAt !== undefined ? task.endAt - Date.now() : 20;
    try {
      await sleep(Math.min(200, Math.max(2, wait + 1)), undefined, { signal: interrupt.wake.signal });
    } catch {
      // A signal arrived: stop the task at once.
      interrupt.wake = new AbortController();
    }
  }
}

export function taskFailed(task: TaskRec): boolean {
  return task.exitstatus !== "OK" && !task.exitstatus?.startsWith("WARNINGS");
}

/** Prints an error the way the Perl CLIs do and returns the exit code. */
export function reportError(err: unknown, io: Io, usage?: string): number {
  if (err instanceof PveError) {
    if (err.status === 400 && err.errors) {
      io.err(`400 ${err.message}\n`);
      for (const [key, reason] of Object.entries(err.errors))
        io.err(`${key}: ${reason.replace(/\n$/, "")}\n`);
      if (usage) io.err(`${usage}\n`);
      return 255;
    }
    io.err(`${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof UsageError) {
    io.err(`${err.message}\n`);
    if (usage) io.err(`${usage}\n`);
    return 255;
  }
  io.err(`${err instanceof Error ? err.message : String(err)}\n`);
  return 255;
}
