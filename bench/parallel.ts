/**
 * Bursts of concurrent `sandbox new` (1, 10, 50 at full scale) at realistic latency, per backend: how
 * many succeed, whether any VMID, name or address was handed out twice or any VM exists twice or without
 * its sandbox, and the burst's wall time against the bound the simulator's locks allow.
 *
 * The bound: clones of one template take its lock shared (qemu-server's clone_vm, modelled in
 * test/pvesim/clone.ts) and every other lock a create takes is on its own new VMID, so nothing in
 * Proxmox serialises two creates; the simulator's state lock is held for milliseconds per call. A burst
 * of N could therefore finish in the time of one create, and its ratio to the single create (burst of 1)
 * is what the daemon's own lines and locks (VMID reservation, the call pool's bounds) add.
 *
 * The shell backend runs bursts of at most the scale's shellBurstMax (10; 1 at tiny scale): every call
 * is a `pvesh` process, and 50 creates' worth of them (700 Node start-ups here) measure the machine's
 * CPU, not the daemon.
 */

import { inspect } from "../test/pvesim/harness.js";
import { isTemplate } from "../test/pvesim/vms.js";
import { type Benchmark, realisticKnobs } from "./bench.js";
import { createSandbox, destroySandbox, warmUp, withHost } from "./host.js";
import type { Figure } from "./report.js";
import { nowMs } from "./stats.js";

const duplicates = (values: readonly unknown[]) => values.length - new Set(values).size;

export const parallelBench: Benchmark = {
  name: "parallel",
  title: "Concurrent creates: success, duplicates, wall time",
  async run(scale, log) {
    const figures: Figure[] = [];
    for (const kind of ["api", "shell"] as const) {
      await withHost(kind, realisticKnobs(scale), async (h) => {
        await warmUp(h, scale);
        let singleMs = Number.NaN;
        for (const n of scale.parallel.filter((size) => kind === "api" || size <= scale.shellBurstMax)) {
          const begin = nowMs();
          const outcomes = await Promise.allSettled(Array.from({ length: n }, () => createSandbox(h)));
          const wallMs = nowMs() - begin;
          if (n === 1) singleMs = wallMs;
          const made = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
          const failures = outcomes.flatMap((o) => (o.status === "rejected" ? [String(o.reason)] : []));
          const vms = await inspect(h.sim.dir, (ctx) =>
            Object.values(ctx.state.vms)
              .filter((vm) => !isTemplate(vm))
              .map((vm) => vm.vmid),
          );
          const dup =
            duplicates(made.map((s) => s.vmid)) +
            duplicates(made.map((s) => s.name)) +
            duplicates(made.flatMap((s) => (s.ip ? [s.ip] : []))) +
            duplicates(vms);
          const vmsWithoutSandbox = vms.filter((vmid) => !made.some((s) => s.vmid === vmid)).length;
          if (failures.length > 0) log(`${kind} x${n}: ${failures.length} failed: ${failures[0]}`);
          figures.push(
            { name: `${kind} x${n}: succeeded`, value: made.length, unit: `of ${n}` },
            {
              name: `${kind} x${n}: duplicates`,
              value: dup,
              unit: "",
              goal: { op: "<=", target: 0, text: "no VMID, name, address or VM handed out twice" },
            },
            { name: `${kind} x${n}: VMs without a sandbox`, value: vmsWithoutSandbox, unit: "VMs" },
            { name: `${kind} x${n}: wall`, value: wallMs, unit: "ms" },
            {
              name: `${kind} x${n}: wall / one create`,
              value: wallMs / singleMs,
              unit: "x",
              note: "1 is the bound the simulator's locks allow",
            },
          );
          await Promise.all(made.map((s) => destroySandbox(h, s.vmid)));
        }
      });
    }
    return figures;
  },
};
