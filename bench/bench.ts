/** What every benchmark is given and returns, and the sizes each scale runs at. */
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
  },
  tiny: {
    name: "tiny",
    callRepeats: 1,
    overheadCreates: 2,
    parallel: [1, 2],
    rows: 100,
    listCalls: 10,
    cliRuns: 2,
    rpcClients: 5,
    rpcSeconds: 1,
    loadedCreates: 1,
  },
};

export interface Benchmark {
  name: string;
  title: string;
  run(scale: Scale, log: (line: string) => void): Promise<Figure[]>;
}
