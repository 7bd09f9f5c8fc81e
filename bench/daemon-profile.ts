/**
 * Preloaded into a benchmark's daemon when AGENTLAB_BENCH_PROFILE_DIR is set (bench/host.ts): a CPU
 * profile of the daemon's whole run and its event-loop delay, written to that directory when the daemon
 * exits at the end of the benchmark: `daemon-PID.cpuprofile` (Chrome DevTools, speedscope) and
 * `daemon-PID.eventloop.txt`. Made with node:inspector because Node 20 refuses `--cpu-prof` in
 * NODE_OPTIONS, the only way into a daemon the test helpers spawn.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector";
import { basename, join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";

const dir = process.env.AGENTLAB_BENCH_PROFILE_DIR;
// Programs the daemon runs (the simulator's pvesh on the shell backend) inherit NODE_OPTIONS: only the
// daemon is profiled.
if (dir && basename(process.argv[1] ?? "") === "agentlabd") {
  const session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.start");
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  process.on("exit", () => {
    delay.disable();
    const ms = (ns: number) => (ns / 1e6).toFixed(1);
    writeFileSync(
      join(dir, `daemon-${process.pid}.eventloop.txt`),
      `event-loop delay (ms): mean ${ms(delay.mean)}, p50 ${ms(delay.percentile(50))}, p99 ${ms(delay.percentile(99))}, max ${ms(delay.max)}\n`,
    );
    // An in-process session answers synchronously, so the profile is written before the process ends.
    session.post("Profiler.stop", (error, result) => {
      if (!error)
        writeFileSync(join(dir, `daemon-${process.pid}.cpuprofile`), JSON.stringify(result.profile));
    });
  });
}
