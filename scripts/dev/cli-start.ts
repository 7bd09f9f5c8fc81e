/**
 * How long the CLI takes to start, as a ratio to `node -e 0` measured in the same loop (the machine is
 * shared, so absolute times say little): `node dist/scripts/dev/cli-start.js [runs] [-- args...]`.
 * Each run spawns `node -e 0` then `node bin/agentlab ARGS`, alternating, and the medians are compared.
 * Without args it measures `--version` and `status` (against a socket nobody listens on, so the time is
 * the CLI's own: parse, load, connect, render the error).
 *
 * `--against DIR` also times DIR/bin/agentlab (another checkout or a copy of one, built) in the same
 * loop, so a change is compared with its base at the same load: `... 21 --against /tmp/base -- sandbox list`.
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const launcher = join(root, "bin", "agentlab");

function timeOf(args: string[]): number {
  const start = process.hrtime.bigint();
  spawnSync(process.execPath, args, {
    stdio: "ignore",
    env: { ...process.env, AGENTLAB_SOCKET: "/nonexistent/agentlab.sock" },
  });
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const argv = process.argv.slice(2);
const dash = argv.indexOf("--");
const options = dash >= 0 ? argv.slice(0, dash) : argv;
const against = options.includes("--against") ? options[options.indexOf("--against") + 1] : undefined;
const runs = Number(options.find((o) => /^\d+$/.test(o)) ?? "21") || 21;
const cases = dash >= 0 ? [argv.slice(dash + 1)] : [["--version"], ["status"]];
const other = against === undefined ? undefined : join(against, "bin", "agentlab");
for (const args of cases) {
  const base: number[] = [];
  const cli: number[] = [];
  const otherCli: number[] = [];
  for (let i = 0; i < runs; i++) {
    base.push(timeOf(["-e", "0"]));
    cli.push(timeOf([launcher, ...args]));
    if (other) otherCli.push(timeOf([other, ...args]));
  }
  const b = median(base);
  const c = median(cli);
  const vs = other
    ? `; ${against}: ${median(otherCli).toFixed(0)} ms, ratio ${(median(otherCli) / b).toFixed(2)}`
    : "";
  console.log(
    `agentlab ${args.join(" ")}: median ${c.toFixed(0)} ms, node -e 0 ${b.toFixed(0)} ms, ratio ${(c / b).toFixed(2)}${vs} (${runs} runs)`,
  );
}
