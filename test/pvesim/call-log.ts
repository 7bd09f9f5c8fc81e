/**
 * Every call that reaches the simulator through one of the daemon's faces (a `pvesh` run, an HTTPS
 * request) is logged in DIR/calls.log, so a test can count the calls an operation costs (per method and
 * route) and see how many were in flight at once. Each call appends a begin line and an end line with
 * O_APPEND, which keeps small writes whole and in order across the separate `pvesh` processes; the
 * file's order is therefore the order in which calls began and ended.
 *
 * Two knobs act here, for both faces alike: `call_latency_ms` (added to every call, as a real host's
 * round trip or pvesh start-up) and `hang_calls` (a regular expression over `METHOD /path`; a matching
 * call waits until the knob no longer matches it, for tests that need Proxmox to be stuck).
 */
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { armCallFaults, disarmCallFaults } from "./call-faults.js";
import { type Fault, readControl } from "./control.js";
import { matchRoute } from "./routes.js";

export const callLogPath = (dir: string): string => join(dir, "calls.log");

interface Line {
  e: "b" | "e";
  id: string;
  face?: "pvesh" | "api";
  method?: string;
  path?: string;
  /** Epoch ms when the line was written (begin: before the latency knob; end: after the answer). */
  t?: number;
  /**
   * Begin lines: the process serving the call (a `pvesh` run, or the HTTPS server), so a test can tell
   * a call that ended unlogged (its pvesh died) from one still running.
   */
  pid?: number;
}

function hangs(dir: string, call: string): boolean {
  const pattern = readControl(dir).hang_calls;
  return pattern !== "" && new RegExp(pattern).test(call);
}

export interface BegunCall {
  /** Logs the call's end and spends the faults it armed. */
  end(): Promise<void>;
  /** Faults aimed at this very call (call-faults.ts); the face acts on `http500` and `api_down`. */
  faults: Fault[];
}

/**
 * Logs the beginning of a call, arms the faults aimed at it, then applies the latency and hang knobs.
 * Call it before the call does anything, and `end` after the answer was written.
 */
export async function beginCall(
  dir: string,
  face: "pvesh" | "api",
  method: string,
  path: string,
): Promise<BegunCall> {
  const id = randomBytes(6).toString("hex");
  const write = (line: Line) =>
    appendFileSync(callLogPath(dir), `${JSON.stringify({ ...line, t: Date.now() })}\n`);
  write({ e: "b", id, face, method, path, pid: process.pid });
  const faults = await armCallFaults(dir, id, method, path);
  let ended = false;
  const end = async () => {
    if (ended) return;
    ended = true;
    await disarmCallFaults(dir, id, faults);
    write({ e: "e", id });
  };
  const latency = readControl(dir).call_latency_ms;
  if (latency > 0) await sleep(latency);
  while (hangs(dir, `${method} ${path}`)) await sleep(25);
  return { end, faults };
}

export interface CallStats {
  /** Calls begun since the log was last reset. */
  total: number;
  /** Calls per `METHOD /route/{param}` (the route's template, so VMIDs and UPIDs fold together). */
  byRoute: Record<string, number>;
  /** The most calls that were in flight at one time. */
  maxInFlight: number;
  /** Calls begun and not ended yet. */
  inFlight: number;
}

/** What the call log holds: counts per route and the peak concurrency. */
export function callStats(dir: string): CallStats {
  const path = callLogPath(dir);
  const stats: CallStats = { total: 0, byRoute: {}, maxInFlight: 0, inFlight: 0 };
  if (!existsSync(path)) return stats;
  const open = new Set<string>();
  for (const text of readFileSync(path, "utf8").split("\n")) {
    if (text === "") continue;
    const line = JSON.parse(text) as Line;
    if (line.e === "e") {
      open.delete(line.id);
      continue;
    }
    stats.total++;
    const key = routeKey(line);
    stats.byRoute[key] = (stats.byRoute[key] ?? 0) + 1;
    open.add(line.id);
    stats.maxInFlight = Math.max(stats.maxInFlight, open.size);
  }
  stats.inFlight = open.size;
  return stats;
}

/** One call's route (as in `byRoute`) and when it began and ended (epoch ms; `end` undefined while in flight). */
export interface CallSpan {
  route: string;
  begin: number;
  end: number | undefined;
}

/** Every call of the log with its times, in the order the calls began (for time spent inside Proxmox). */
export function callSpans(dir: string): CallSpan[] {
  const path = callLogPath(dir);
  if (!existsSync(path)) return [];
  const spans = new Map<string, CallSpan>();
  for (const text of readFileSync(path, "utf8").split("\n")) {
    if (text === "") continue;
    const line = JSON.parse(text) as Line;
    const span = spans.get(line.id);
    if (line.e === "e") {
      if (span) span.end = line.t;
      continue;
    }
    spans.set(line.id, { route: routeKey(line), begin: line.t ?? 0, end: undefined });
  }
  return [...spans.values()];
}

function routeKey(line: Line): string {
  const method = line.method ?? "?";
  return `${method} ${matchRoute(method, line.path ?? "/")?.route.path ?? line.path ?? "?"}`;
}

/** Starts counting afresh (calls in flight then are not counted when they end). */
export function resetCalls(dir: string): void {
  writeFileSync(callLogPath(dir), "");
}

/** The calls begun since the last reset, in order, as `METHOD /path` (the path as the face received it). */
export function callSequence(dir: string): string[] {
  const path = callLogPath(dir);
  if (!existsSync(path)) return [];
  const calls: string[] = [];
  for (const text of readFileSync(path, "utf8").split("\n")) {
    if (text === "") continue;
    const line = JSON.parse(text) as Line;
    if (line.e === "b") calls.push(`${line.method ?? "?"} ${line.path ?? "?"}`);
  }
  return calls;
}
