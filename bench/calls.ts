/**
 * Proxmox calls per `sandbox new` and `sandbox destroy`, counted by the simulator's call log (both faces:
 * `pvesh` runs and HTTPS requests), per backend, at zero latency (fast tasks) and at a realistic one.
 * Each series starts with one create and destroy that is not counted: the daemon has then seen how
 * long each kind of task takes, as it has after its first sandbox.
 */

import { splitCalls } from "../test/helpers/proxmox-calls.js";
import { FAST_KNOBS } from "../test/helpers/simhost.js";
import { callStats, resetCalls, setControl } from "../test/pvesim/harness.js";
import { type Benchmark, realisticKnobs, type Scale } from "./bench.js";
import { createSandbox, destroySandbox, warmUp, withHost } from "./host.js";
import type { Figure } from "./report.js";
import { median } from "./stats.js";

const latencies = (scale: Scale) => ({
  zero: { ...FAST_KNOBS, call_latency_ms: 0 },
  realistic: realisticKnobs(scale),
});

export const callsBench: Benchmark = {
  name: "calls",
  title: "Proxmox calls per create/destroy",
  async run(scale, log) {
    const figures: Figure[] = [];
    const byLatency = latencies(scale);
    const paced = scale.pace === 1 ? "" : ` (the realistic pace x${scale.pace})`;
    for (const kind of ["shell", "api"] as const) {
      await withHost(kind, byLatency.zero, async (h) => {
        for (const [latency, knobs] of Object.entries(byLatency)) {
          await setControl(h.sim.dir, knobs);
          await warmUp(h, scale);
          const creates: Array<ReturnType<typeof splitCalls> & { total: number }> = [];
          const destroys: Array<ReturnType<typeof splitCalls> & { total: number }> = [];
          for (let i = 0; i < scale.callRepeats; i++) {
            resetCalls(h.sim.dir);
            const made = await createSandbox(h);
            const c = callStats(h.sim.dir);
            resetCalls(h.sim.dir);
            await destroySandbox(h, made.vmid);
            const d = callStats(h.sim.dir);
            creates.push({ total: c.total, ...splitCalls(c) });
            destroys.push({ total: d.total, ...splitCalls(d) });
            log(
              `${kind} ${latency}: create ${JSON.stringify(c.byRoute)}; destroy ${JSON.stringify(d.byRoute)}`,
            );
          }
          for (const [op, runs] of [
            ["create", creates],
            ["destroy", destroys],
          ] as const) {
            const total = median(runs.map((r) => r.total));
            figures.push({
              name: `${op} ${kind} ${latency}: calls`,
              value: total,
              unit: "calls",
              ...(op === "create" && latency === "realistic"
                ? {
                    goal: { op: "<=", target: 8, text: "<= 8 Proxmox calls per create at realistic latency" },
                  }
                : {}),
              note: `median of ${runs.length}; range ${Math.min(...runs.map((r) => r.total))}-${Math.max(...runs.map((r) => r.total))}${latency === "realistic" ? paced : ""}`,
            });
            figures.push({
              name: `${op} ${kind} ${latency}: task polls`,
              value: median(runs.map((r) => r.polls)),
              unit: "calls",
            });
          }
        }
      });
    }
    return figures;
  },
};
