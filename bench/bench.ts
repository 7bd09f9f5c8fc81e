/** What every benchmark is given and returns, and the sizes and pace each scale runs at. */
import { REALISTIC_KNOBS } from "../test/helpers/proxmox-calls.js";
import type { Figure } from "./report.js";

export interface Scale {
  name: "full" | "quick" | "tiny";
  /** Measured creates (and destroys) per backend and latency for the call counts, after one warm-up. */
  callRepeats: number;
  /** Creates timed for the daemon's overhead and guest-up -> READY. */
  overheadCreates: number;
  /** Sizes of the parallel-create bursts. */
  parallel: number[];
  /** Sandbox rows seeded for the list/reconcile/RSS benchmark, and list calls timed. */
  rows: number;
  listCalls: number;
  /** Runs of each command for the CLI start ratio. */
  cliRuns: number;
  /** Concurrent RPC clients, and for how long they run. */
  rpcClients: number;
  rpcSeconds: number;
  /** Creates timed unloaded and under load for the concurrent `sandbox new` ratio. */
  loadedCreates: number;
  /**
   * The share of a real host's pace (REALISTIC_KNOBS: latency per call, task and boot times) at which
   * the benchmarks that want that pace run: 1 at full and quick scale. Tiny runs faster, as its figures
   * only show that the machinery works.
   */
  pace: number;
  /**
   * Whether each series starts with the create and destroy that no figure counts (warmUp in host.ts),
   * and the CLI timing with one unmeasured run of each command: off at tiny scale, whose figures are
   * not compared.
   */
  warmUp: boolean;
  /** The largest burst of concurrent creates on the shell backend (see parallel.ts). */
  shellBurstMax: number;
}

export const SCALES: Record<Scale["name"], Scale> = {
  full: {
    name: "full",
    callRepeats: 2,
    overheadCreates: 100,
    parallel: [1, 10, 50],
    rows: 10_000,
    listCalls: 200,
    cliRuns: 20,
    rpcClients: 200,
    rpcSeconds: 20,
    loadedCreates: 3,
    pace: 1,
    warmUp: true,
    shellBurstMax: 10,
  },
  quick: {
    name: "quick",
    callRepeats: 1,
    overheadCreates: 10,
    parallel: [1, 5],
    rows: 2_000,
    listCalls: 50,
    cliRuns: 6,
    rpcClients: 50,
    rpcSeconds: 5,
    loadedCreates: 1,
    pace: 1,
    warmUp: true,
    shellBurstMax: 10,
  },
  tiny: {
    name: "tiny",
    callRepeats: 1,
    overheadCreates: 2,
    parallel: [1, 2],
    rows: 100,
    listCalls: 5,
    cliRuns: 1,
    rpcClients: 5,
    rpcSeconds: 1,
    loadedCreates: 1,
    pace: 0.1,
    warmUp: false,
    shellBurstMax: 1,
  },
};

/** The simulator's knobs for a real host's pace (REALISTIC_KNOBS), times the scale's pace. */
export function realisticKnobs(scale: Scale): Record<keyof typeof REALISTIC_KNOBS, number> {
  const knobs = { ...REALISTIC_KNOBS };
  for (const key of Object.keys(knobs) as Array<keyof typeof knobs>)
    knobs[key] = Math.round(knobs[key] * scale.pace);
  return knobs;
}

export interface Benchmark {
  name: string;
  title: string;
  run(scale: Scale, log: (line: string) => void): Promise<Figure[]>;
}
