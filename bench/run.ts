/**
 * `npm run bench`: runs the benchmarks one after another on this machine (each starts its own simulator
 * and daemon in a temp directory), prints a table of figures with the goals beside them, and
 * writes every figure with its unit, goal and the machine's facts to bench/results.json.
 *
 *   npm run bench [-- --only calls,rows] [--quick | --tiny] [--out FILE]
 */
import { loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { REPO_ROOT } from "../test/helpers/paths.js";
import type { Scale } from "./bench.js";
import { SCALES } from "./bench.js";
import { BENCHMARKS } from "./benchmarks.js";
import { type BenchResult, check, machineFacts, renderTable, round, writeResults } from "./report.js";
import { nowMs } from "./stats.js";

const USAGE = `usage: npm run bench -- [--only NAME[,NAME...]] [--quick | --tiny] [--out FILE]

Runs agentlab's benchmarks against the Proxmox simulator and prints a table; writes the figures to
bench/results.json (or FILE).
  --only   run only these benchmarks: ${BENCHMARKS.map((b) => b.name).join(", ")}
  --quick  small sizes instead of the full ones (the full run took 20 min on 2 cores at load 10-17)
  --tiny   the smallest sizes, to check that every benchmark still runs (its figures mean little)
  --out    where to write the results (default bench/results.json)`;

function fail(message: string): never {
  process.stderr.write(`error: ${message}\n${USAGE}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  let parsed: ReturnType<typeof parse>;
  const parse = () =>
    parseArgs({
      options: {
        only: { type: "string" },
        quick: { type: "boolean" },
        tiny: { type: "boolean" },
        out: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
  try {
    parsed = parse();
  } catch (error) {
    fail((error as Error).message);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.quick && values.tiny) fail("--quick and --tiny exclude each other");
  const scale: Scale = SCALES[values.tiny ? "tiny" : values.quick ? "quick" : "full"];
  const names = values.only?.split(",").map((n) => n.trim()) ?? BENCHMARKS.map((b) => b.name);
  const unknown = names.filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length > 0) fail(`unknown benchmark ${unknown.join(", ")}`);
  const out = values.out ?? join(REPO_ROOT, "bench", "results.json");

  const machine = machineFacts(REPO_ROOT);
  const started = nowMs();
  const results: BenchResult[] = [];
  for (const bench of BENCHMARKS.filter((b) => names.includes(b.name))) {
    process.stderr.write(`bench: ${bench.name} (${bench.title}), ${scale.name} scale...\n`);
    const begin = nowMs();
    const log = (line: string) => process.stderr.write(`  ${bench.name}: ${line}\n`);
    try {
      const figures = await bench.run(scale, log);
      results.push({
        name: bench.name,
        title: bench.title,
        seconds: round((nowMs() - begin) / 1000, 1),
        figures: figures.map((f) => check({ ...f, value: round(f.value) })),
      });
    } catch (error) {
      const message = (error as Error).stack ?? String(error);
      log(`failed: ${message}`);
      results.push({
        name: bench.name,
        title: bench.title,
        seconds: round((nowMs() - begin) / 1000, 1),
        figures: [],
        error: message,
      });
    }
    process.stderr.write(`bench: ${bench.name} done in ${results.at(-1)!.seconds} s\n`);
  }
  machine.load_after = round(loadavg()[0] ?? 0);
  writeResults(out, {
    machine,
    scale: scale.name,
    seconds: round((nowMs() - started) / 1000, 1),
    benchmarks: results,
  });
  process.stdout.write(`${renderTable(results)}\n\n`);
  process.stdout.write(
    `${machine.cores} cores, node ${machine.node}, commit ${machine.commit}${machine.dirty ? " (modified)" : ""}, load ${machine.load_before} -> ${machine.load_after}; results in ${out}\n`,
  );
  if (results.some((r) => r.error)) process.exitCode = 1;
}

await main();
