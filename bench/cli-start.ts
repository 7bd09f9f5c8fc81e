/**
 * CLI cold start as a ratio to `node -e 0` (the floor any Node program pays), run interleaved so that
 * the machine's load falls on all three alike: `agentlab --version` and `agentlab status` (which asks a
 * running daemon). Each run is a fresh process, timed from spawn to exit. Beside them, the daemon's
 * part of a status, which no CLI change can shorten: one `daemon.status` call on a new connection from
 * this (already running) process, once the daemon's shared Proxmox probe has expired, as it has for
 * each status run when the machine is loaded (runs are then more than PROBE_TTL_MS apart).
 */
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { call } from "../src/cli/client.js";
import { PROBE_TTL_MS } from "../src/daemon/services/probes.js";
import { daemonStatus } from "../src/protocol/daemon.js";
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
      const answers: number[] = [];
      // One run each first (unless the scale has no warm-ups): the files are then in the page cache
      // for every measured run alike.
      if (scale.warmUp) for (const args of Object.values(commands)) await timeProcess([...args], env);
      for (let i = 0; i < scale.cliRuns; i++) {
        for (const [what, args] of Object.entries(commands) as Array<
          [keyof typeof commands, readonly string[]]
        >)
          samples[what].push(await timeProcess([...args], env));
      }
      for (let i = 0; i < scale.cliRuns; i++) {
        await sleep(PROBE_TTL_MS + 100);
        const begin = nowMs();
        await call({ socketPath: h.host.socketPath, timeoutMs: 60_000 }, daemonStatus, {});
        answers.push(nowMs() - begin);
      }
      const base = median(samples.node);
      const n = `medians of ${scale.cliRuns} runs`;
      const figures: Figure[] = [
        { name: "node -e 0", value: base, unit: "ms", note: n },
        { name: "agentlab --version", value: median(samples.version), unit: "ms", note: n },
        { name: "agentlab status", value: median(samples.status), unit: "ms", note: n },
        {
          name: "daemon.status answer",
          value: median(answers),
          unit: "ms",
          note: `${n}: one call on a new connection from a running process, its probe expired`,
        },
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
