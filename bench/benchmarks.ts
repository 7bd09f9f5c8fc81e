/** Every benchmark `npm run bench` runs, in the order it runs them (cheap and independent first). */
import type { Benchmark } from "./bench.js";
import { callsBench } from "./calls.js";
import { cliStartBench } from "./cli-start.js";
import { overheadBench } from "./overhead.js";
import { parallelBench } from "./parallel.js";
import { rowsBench } from "./rows.js";
import { rpcLoadBench } from "./rpc-load.js";
import { warmPoolBench } from "./warm-pool.js";

export const BENCHMARKS: readonly Benchmark[] = [
  callsBench,
  overheadBench,
  parallelBench,
  rowsBench,
  cliStartBench,
  rpcLoadBench,
  warmPoolBench,
];
