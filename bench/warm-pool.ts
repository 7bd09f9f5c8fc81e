/**
 * `agentlab sandbox new` from a warm pool against a cold create (docs/warm-pool.md), at the CLI: each
 * run is a fresh `agentlab sandbox new` process, timed from spawn to exit (RUNNING printed), at
 * realistic Proxmox latency (api backend), from a pool that keeps its members running and from one that
 * keeps them paused (resumed at the claim). The pools are refilled before each claim, so every claim
 * finds a member; the cold creates use the same profile with no pool.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { call } from "../src/cli/client.js";
import { daemonStatus } from "../src/protocol/daemon.js";
import { sandboxCreate } from "../src/protocol/sandbox.js";
import { startDaemon } from "../test/helpers/daemon.js";
import { AGENTLAB_BIN } from "../test/helpers/paths.js";
import { REALISTIC_KNOBS } from "../test/helpers/proxmox-calls.js";
import type { Benchmark } from "./bench.js";
import { PROFILE, withHost } from "./host.js";
import type { Figure } from "./report.js";
import { median, nowMs } from "./stats.js";

/** A fresh process, timed from spawn to exit: `node -e 0` and `agentlab sandbox list`, the CLI's floor now. */
function timeProcess(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const begin = nowMs();
    const child = spawn(process.execPath, args, { stdio: "ignore" });
    child.on("error", reject);
    child.on("exit", () => resolve(nowMs() - begin));
  });
}

const POOLED = "pooled";
/** The same pool with its members kept paused (`warm_pool_state: paused`): a claim resumes one first. */
const PAUSED = "pooled-paused";

function timeNew(socketPath: string, profile: string): Promise<{ ms: number; fromPool: boolean }> {
  return new Promise((resolve, reject) => {
    const begin = nowMs();
    const child = spawn(
      process.execPath,
      [AGENTLAB_BIN, "--socket", socketPath, "--json", "sandbox", "new", "--profile", profile],
      { stdio: ["ignore", "pipe", "ignore"] },
    );
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code !== 0)
        return reject(new Error(`sandbox new --profile ${profile} exited with ${code}: ${out}`));
      const body = JSON.parse(out) as { from_pool?: boolean };
      resolve({ ms: nowMs() - begin, fromPool: body.from_pool === true });
    });
  });
}

export const warmPoolBench: Benchmark = {
  name: "warm-pool",
  title: "sandbox new from a warm pool against a cold create (CLI, spawn to exit)",
  async run(scale, log) {
    return withHost("api", REALISTIC_KNOBS, async (h) => {
      const base = readFileSync(join(h.host.profilesDir, `${PROFILE}.yaml`), "utf8");
      writeFileSync(
        join(h.host.profilesDir, `${POOLED}.yaml`),
        `${base.replace(/^name: .*$/m, `name: ${POOLED}`)}warm_pool: 1\n`,
      );
      writeFileSync(
        join(h.host.profilesDir, `${PAUSED}.yaml`),
        `${base.replace(/^name: .*$/m, `name: ${PAUSED}`)}warm_pool: 1\nwarm_pool_state: paused\n`,
      );
      await h.daemon.stop();
      const daemon = await startDaemon(h.host);
      try {
        const rpc = { socketPath: h.host.socketPath, timeoutMs: 60_000 };
        const full = async () => {
          for (;;) {
            const pools = (await call(rpc, daemonStatus, {})).pools ?? [];
            const filled = [POOLED, PAUSED].every((profile) =>
              pools.some((p) => p.profile === profile && p.ready >= p.wanted && p.filling === 0),
            );
            if (filled) return;
            await sleep(100);
          }
        };
        const runs = scale.name === "tiny" ? 1 : scale.loadedCreates * 3;
        const warm: number[] = [];
        const warmPaused: number[] = [];
        const cold: number[] = [];
        const rpcClaims: number[] = [];
        const nodeStarts: number[] = [];
        const lists: number[] = [];
        for (let i = 0; i < runs; i++) {
          await full();
          const claimed = await timeNew(h.host.socketPath, POOLED);
          if (!claimed.fromPool) throw new Error("a claim found the pool empty after it was full");
          warm.push(claimed.ms);
          const resumed = await timeNew(h.host.socketPath, PAUSED);
          if (!resumed.fromPool) throw new Error("a claim found the paused pool empty after it was full");
          warmPaused.push(resumed.ms);
          cold.push((await timeNew(h.host.socketPath, PROFILE)).ms);
          nodeStarts.push(await timeProcess(["-e", "0"]));
          lists.push(await timeProcess([AGENTLAB_BIN, "--socket", h.host.socketPath, "sandbox", "list"]));
          // The daemon's part alone: the same claim over the socket from this process.
          await full();
          const begin = nowMs();
          const viaRpc = await call(rpc, sandboxCreate, { profile: POOLED });
          rpcClaims.push(nowMs() - begin);
          if (viaRpc.from_pool !== true)
            throw new Error("an RPC claim found the pool empty after it was full");
          log(
            `run ${i + 1}/${runs}: warm ${claimed.ms.toFixed(0)} ms, paused ${resumed.ms.toFixed(0)} ms, cold ${cold.at(-1)!.toFixed(0)} ms`,
          );
        }
        const n = `medians of ${runs} runs, REALISTIC_KNOBS, api backend`;
        const figures: Figure[] = [
          {
            name: "sandbox new from the warm pool",
            value: median(warm),
            unit: "ms",
            note: n,
            goal: {
              op: "<=",
              target: 500,
              text: "sandbox new from a warm pool < 500 ms to RUNNING at the CLI",
            },
          },
          {
            name: "sandbox new from a paused warm pool",
            value: median(warmPaused),
            unit: "ms",
            note: `${n}; the member is resumed before RUNNING`,
            goal: {
              op: "<=",
              target: 500,
              text: "sandbox new from a warm pool < 500 ms to RUNNING at the CLI",
            },
          },
          { name: "sandbox new, cold create", value: median(cold), unit: "ms", note: n },
          { name: "sandbox.create claim over the socket", value: median(rpcClaims), unit: "ms", note: n },
          { name: "node -e 0 (the CLI's floor now)", value: median(nodeStarts), unit: "ms", note: n },
          { name: "agentlab sandbox list (any CLI call now)", value: median(lists), unit: "ms", note: n },
        ];
        return figures;
      } finally {
        await daemon.stop();
      }
    });
  },
};
