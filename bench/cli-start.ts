/**
 * CLI cold start as a ratio to `node -e 0` (the floor any Node program pays), run interleaved so that
 * the machine's load falls on all three alike: `agentlab --version` and `agentlab status` (which asks a
 * running daemon). Each run is a fresh process, timed from spawn to exit.
 */
import { spawn } from "node:child_process";
import { AGENTLAB_BIN } from "../test/helpers/paths.js";
import { FAST_KNOBS } from "../test/helpers/simhost.js";
import type { Benchmark } from "./bench.js";
import { withHost } from "./host.js";
import type { Figure } from "./report.js";
import { median, nowMs } from "./stats.js";

function timeProcess(args: string[], env: NodeJS.ProcessEnv = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const begin = nowMs();
    const child = spawn(process.execPath, args, { stdio: "ignore", env: { ...process.env, ...env } });
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code === 0) resolve(nowMs() - begin);
      else reject(new Error(`node ${args.join(" ")} exited with ${code}`));
    });
  });
}

export const cliStartBench: Benchmark = {
  name: "cli",
  title: "CLI cold start against node -e 0",
  async run(scale) {
    return withHost("api", FAST_KNOBS, async (h) => {
      const env = { AGENTLAB_SOCKET: h.host.socketPath, AGENTLAB_CONFIG: "" };
      const commands = {
        node: ["-e", "0"],
        version: [AGENTLAB_BIN, "--version"],
        status: [AGENTLAB_BIN, "status"],
      } as const;
      const samples: Record<keyof typeof commands, number[]> = { node: [], version: [], status: [] };
      // One run each first (unless the scale has no warm-ups): the files are then in the page cache
      // for every measured run alike.
      if (scale.warmUp) for (const args of Object.values(commands)) await timeProcess([...args], env);
      for (let i = 0; i < scale.cliRuns; i++) {
        for (const [what, args] of Object.entries(commands) as Array<
          [keyof typeof commands, readonly string[]]
        >)
          samples[what].push(await timeProcess([...args], env));
      }
      const base = median(samples.node);
      const n = `medians of ${scale.cliRuns} runs`;
      const figures: Figure[] = [
        { name: "node -e 0", value: base, unit: "ms", note: n },
        { name: "agentlab --version", value: median(samples.version), unit: "ms", note: n },
        { name: "agentlab status", value: median(samples.status), unit: "ms", note: n },
        {
          name: "agentlab --version / node -e 0",
          value: median(samples.version) / base,
          unit: "x",
          goal: { op: "<=", target: 1.3, text: "agentlab --version <= 1.3x node -e 0" },
        },
        {
          name: "agentlab status / node -e 0",
          value: median(samples.status) / base,
          unit: "x",
          goal: { op: "<=", target: 1.6, text: "agentlab status <= 1.6x node -e 0" },
        },
      ];
      return figures;
    });
  },
};
