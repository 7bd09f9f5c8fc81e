/**
 * The daemon's own time per `sandbox new`, and guest-up -> READY.
 *
 * Overhead: the create's wall time as its RPC client sees it, minus the time during which Proxmox or
 * the guest had the work: every Proxmox call from its arrival at the simulator to its answer (the call
 * log's times; overlapping calls counted once), every task the API started, from its creation to its
 * end (the simulator's task records: through the API a task runs between calls, and no daemon can see it
 * end before it does), and the guest's boot, from the end of the start call to its phone-home. What is
 * left is the daemon's: RPC handling, validation, SQLite commits, building requests, and waiting to poll
 * a task that already ended. Until 2026-12-07 the tasks' run time was counted as the daemon's too; that
 * figure is still reported ("tasks counted"), for comparison with older runs. It is measured on the api
 * backend only: on the shell backend each call's `pvesh` process start-up (the simulator's Node start
 * here, Perl's on a real host) falls before the simulator can log the call, so it would be counted as the
 * daemon's.
 *
 * Guest-up -> READY: from the moment the guest sent its phone-home (the simulated guest marks the report
 * sent in a file just before it POSTs) to the READY event the daemon recorded.
 */
import { statSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { openStore } from "../src/daemon/store/db.js";
import { FAST_KNOBS, type SimHost } from "../test/helpers/simhost.js";
import { callSpans, inspect, resetCalls } from "../test/pvesim/harness.js";
import type { Benchmark } from "./bench.js";
import { createSandbox, destroySandbox, warmUp, withHost } from "./host.js";
import type { Figure } from "./report.js";
import { percentile, unionLength } from "./stats.js";

const KNOBS = { ...FAST_KNOBS, call_latency_ms: 0 };
const START_CALL = /\/status\/start$/;

/** Milliseconds since the epoch with sub-millisecond resolution, comparable with the call log's times. */
const epochMs = () => performance.timeOrigin + performance.now();

interface Sample {
  wallMs: number;
  overheadMs: number;
  /** The same with the tasks' run time left in (the measure before 2026-12-07). */
  withTasksMs: number;
  vmid: number;
  phoneHomeAt: number;
  /** Where the daemon's time went, for the log. */
  gaps: string;
}

async function measureCreate(h: SimHost): Promise<Sample> {
  resetCalls(h.sim.dir);
  const begin = epochMs();
  const made = await createSandbox(h);
  const end = epochMs();
  const spans = callSpans(h.sim.dir);
  const phoneHomeAt = statSync(join(h.sim.dir, "guests", `${made.vmid}.ready-reported`)).mtimeMs;
  const startCall = spans.find((s) => START_CALL.test(s.route) && s.route.startsWith("POST"));
  const outside: Interval[] = spans.map((s) => ({ b: s.begin, e: s.end ?? end, what: s.route }));
  if (startCall?.end !== undefined)
    outside.push({ b: startCall.end, e: phoneHomeAt, what: "the guest's boot" });
  const tasks = await inspect(h.sim.dir, (ctx) =>
    ctx.state.tasks
      .filter((t) => t.createdAt >= begin && t.createdAt <= end)
      .map((t) => ({ b: t.createdAt, e: t.endAt ?? end, what: `the ${t.type} task` })),
  );
  const clip = (list: Interval[]) =>
    list.map((i) => ({ ...i, b: Math.max(i.b, begin), e: Math.min(i.e, end) }));
  const daemonTime = (list: Interval[]) => end - begin - unionLength(list.map((i) => [i.b, i.e] as const));
  const clipped = clip([...outside, ...tasks]);
  return {
    wallMs: end - begin,
    overheadMs: daemonTime(clipped),
    withTasksMs: daemonTime(clip(outside)),
    vmid: made.vmid,
    phoneHomeAt,
    gaps: describeGaps(clipped, begin, end),
  };
}

interface Interval {
  b: number;
  e: number;
  what: string;
}

/** The longest stretches of daemon time, each named by what ended before it (for the log). */
function describeGaps(outside: Interval[], begin: number, end: number): string {
  const intervals = [...outside].sort((x, y) => x.b - y.b);
  const gaps: Array<{ ms: number; what: string }> = [];
  let covered = begin;
  let what = "the request";
  for (const i of intervals) {
    if (i.b > covered) gaps.push({ ms: i.b - covered, what });
    if (i.e >= covered) {
      covered = i.e;
      what = i.what;
    }
  }
  if (end > covered) gaps.push({ ms: end - covered, what });
  return gaps
    .sort((x, y) => y.ms - x.ms)
    .slice(0, 4)
    .map((g) => `${g.ms.toFixed(0)} ms after ${g.what}`)
    .join(", ");
}

export const overheadBench: Benchmark = {
  name: "overhead",
  title: "Daemon overhead per create; guest-up -> READY",
  async run(scale, log) {
    const figures: Figure[] = [];
    for (const kind of ["api"] as const) {
      const creates = scale.overheadCreates;
      await withHost(kind, KNOBS, async (h) => {
        await warmUp(h, scale);
        const samples: Sample[] = [];
        for (let i = 0; i < creates; i++) {
          const sample = await measureCreate(h);
          samples.push(sample);
          await destroySandbox(h, sample.vmid);
        }
        const store = openStore(h.host.dbPath, { readonly: true });
        const readyLag: number[] = [];
        try {
          for (const s of samples) {
            const ready = store.events
              .listForSandbox(s.vmid)
              .find((e) => e.kind === "sandbox.state" && e.payload?.["to_state"] === "READY");
            if (ready) readyLag.push(ready.ts.getTime() - s.phoneHomeAt);
          }
        } finally {
          store.close();
        }
        const overhead = samples.map((s) => s.overheadMs);
        const withTasks = samples.map((s) => s.withTasksMs);
        const wall = samples.map((s) => s.wallMs);
        log(`${kind}: overhead ms ${overhead.map((x) => x.toFixed(0)).join(" ")}`);
        log(
          `${kind}: longest daemon stretches of the first two creates: ${samples[0]?.gaps}; ${samples[1]?.gaps}`,
        );
        const n = `over ${samples.length} creates`;
        figures.push(
          {
            name: `${kind}: overhead p50`,
            value: percentile(overhead, 50),
            unit: "ms",
            ...(kind === "api"
              ? { goal: { op: "<", target: 20, text: "daemon overhead p50 < 20 ms" } as const }
              : {}),
            note: n,
          },
          { name: `${kind}: overhead p99`, value: percentile(overhead, 99), unit: "ms", note: n },
          {
            name: `${kind}: overhead p50, tasks counted`,
            value: percentile(withTasks, 50),
            unit: "ms",
            note: "the tasks' run time counted as the daemon's, as before 2026-12-07",
          },
          { name: `${kind}: create wall p50`, value: percentile(wall, 50), unit: "ms", note: n },
          {
            name: `${kind}: guest-up -> READY p50`,
            value: percentile(readyLag, 50),
            unit: "ms",
            note: `over ${readyLag.length} creates`,
          },
          { name: `${kind}: guest-up -> READY p99`, value: percentile(readyLag, 99), unit: "ms" },
        );
      });
    }
    return figures;
  },
};
