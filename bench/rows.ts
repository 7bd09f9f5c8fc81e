/**
 * A database of many sandboxes (10,000 at full scale): `sandbox.list` p50/p99 over one connection, one
 * reconciler pass (`sandbox.reconcile --apply`) with the Proxmox calls it makes, and the daemon's RSS.
 *
 * The rows are written through the store module (real SQLite, the daemon's own file, while it runs) as
 * STOPPED sandboxes whose clone never happened (vm_created false): `sandbox list` shows them all and a
 * pass compares every one with the cluster VM list without any of them needing a change, so the pass's
 * time is its per-row cost, not a 10,000-sandbox clean-up.
 */
import { readFileSync } from "node:fs";
import { openStore } from "../src/daemon/store/db.js";
import { RawRpcClient } from "../test/helpers/raw-rpc.js";
import { FAST_KNOBS } from "../test/helpers/simhost.js";
import { callStats, resetCalls } from "../test/pvesim/harness.js";
import type { Benchmark } from "./bench.js";
import { PROFILE, withHost } from "./host.js";
import type { Figure } from "./report.js";
import { median, nowMs, percentile } from "./stats.js";

const FIRST_VMID = 100_000;
const PASSES = 3;

/** Resident set size of a process in MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? Number.NaN);
  return kb / 1024;
}

export const rowsBench: Benchmark = {
  name: "rows",
  title: "Many rows: list, reconcile pass, RSS",
  async run(scale, log) {
    return withHost("api", { ...FAST_KNOBS, call_latency_ms: 0 }, async (h) => {
      const pid = h.daemon.proc.pid!;
      const rssBefore = rssMiB(pid);
      const seedStart = nowMs();
      const store = openStore(h.host.dbPath);
      try {
        store.tx(() => {
          for (let i = 0; i < scale.rows; i++) {
            store.sandboxes.insert({
              vmid: FIRST_VMID + i,
              name: `bench-${i}`,
              profile: PROFILE,
              state: "STOPPED",
              vm_created: false,
            });
          }
        });
      } finally {
        store.close();
      }
      log(`seeded ${scale.rows} rows in ${(nowMs() - seedStart).toFixed(0)} ms`);
      const client = await RawRpcClient.open(h.host.socketPath);
      const figures: Figure[] = [];
      try {
        const listMs: number[] = [];
        let bytes = 0;
        for (let i = 0; i < scale.listCalls; i++) {
          const begin = nowMs();
          const answer = await client.request("sandbox.list", {});
          listMs.push(nowMs() - begin);
          if (answer.error) throw new Error(`sandbox.list failed: ${answer.error.message}`);
          const listed = (answer.result as { sandboxes: unknown[] }).sandboxes.length;
          if (listed !== scale.rows)
            throw new Error(`sandbox.list gave ${listed} rows, ${scale.rows} seeded`);
          bytes = answer.bytes;
        }
        const passMs: number[] = [];
        let passCalls = 0;
        for (let i = 0; i < PASSES; i++) {
          resetCalls(h.sim.dir);
          const begin = nowMs();
          const answer = await client.request("sandbox.reconcile", { apply: true });
          passMs.push(nowMs() - begin);
          if (answer.error) throw new Error(`sandbox.reconcile failed: ${answer.error.message}`);
          const result = answer.result as { sandboxes: number; changes: unknown[] };
          if (result.sandboxes !== scale.rows || result.changes.length !== 0)
            throw new Error(
              `the pass saw ${result.sandboxes} sandboxes and changed ${result.changes.length}`,
            );
          passCalls = Math.max(passCalls, callStats(h.sim.dir).total);
        }
        const rssAfter = rssMiB(pid);
        const n = `${scale.rows} rows`;
        figures.push(
          {
            name: "sandbox.list p50",
            value: percentile(listMs, 50),
            unit: "ms",
            note: `${n}, ${listMs.length} calls, ${(bytes / 2 ** 20).toFixed(1)} MiB answer`,
          },
          { name: "sandbox.list p99", value: percentile(listMs, 99), unit: "ms", note: n },
          { name: "reconcile pass", value: median(passMs), unit: "ms", note: `median of ${PASSES}, ${n}` },
          {
            name: "reconcile pass: Proxmox calls",
            value: passCalls,
            unit: "calls",
            note: "upstream: one status call per sandbox per pass",
          },
          { name: "daemon RSS, empty database", value: rssBefore, unit: "MiB" },
          { name: "daemon RSS after list and passes", value: rssAfter, unit: "MiB", note: n },
        );
      } finally {
        client.destroy();
      }
      return figures;
    });
  },
};
