/**
 * Idle stop (spec §4.5, issue 17): a RUNNING sandbox that nobody uses is stopped (STOPPED, its lease
 * kept; `sandbox start` brings it back). Idle means, for the sandbox's whole window
 * (sandbox/activity.ts idlePolicy): no QUEUED or RUNNING job, no `sandbox exec` in flight, no use
 * recorded in `last_used_at` (exec, `agentlab ssh`), no change to its record, and guest CPU at or below
 * idle_stop_cpu_threshold in every sample. Keepalive sandboxes are left alone unless their profile says
 * idle_stop_keepalive. Anything that cannot be checked counts as use.
 *
 * One pass now and every idle_stop_interval: the CPU samples come from one cluster-wide list
 * (/cluster/resources, pvestatd's ~10 s average per VM), one Proxmox call per pass and none when no
 * sandbox is a candidate. Not status/current per VM: qemu-server's vmstatus reports `cpu` 0 on the
 * first read of a QEMU process by a process (QemuServer.pm vmstatus, $last_proc_pid_stat), and each
 * `pvesh` run is a new process, so through the shell backend every guest would look idle.
 *
 * When each sandbox went quiet is kept in memory: after a daemon restart a sandbox must be seen idle for
 * a whole window again before it is stopped (never sooner than it would have been).
 */
import type { DaemonContext, Scheduler } from "../context.js";
import type { Sandbox } from "../store/sandboxes.js";
import { describe } from "./maintenance-steps.js";
import { backgroundOperation } from "./operation.js";
import { type PassSignals, PeriodicTask } from "./periodic.js";
import { hasActiveJob, idlePolicy } from "./sandbox/activity.js";
import type { SandboxService } from "./sandboxes.js";

/** What one pass did, for tests and the log. */
export interface IdlePassReport {
  /** RUNNING sandboxes idle stop applied to. */
  watched: number;
  stopped: number[];
  errors: Array<{ vmid?: number; message: string }>;
}

const round1 = (n: number) => Math.round(n * 10) / 10;

export class IdleStopper {
  /** Made at start: registering the handlers must not read the config. */
  private loop: PeriodicTask | undefined;
  /** When each watched sandbox was first seen quiet, in the run of quiet samples going on now. */
  private readonly quietSince = new Map<number, number>();
  lastPass: IdlePassReport | undefined;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    private readonly options: { scheduler: Scheduler },
  ) {}

  /** First pass now, then every idle_stop_interval (a pass with idle stop disabled does nothing). */
  start(): void {
    this.loop ??= new PeriodicTask({
      name: "idle stop",
      intervalMs: this.ctx.config.idle_stop_interval_ms,
      scheduler: this.options.scheduler,
      log: this.ctx.log,
      run: (signals) => this.pass(signals).then(() => undefined),
    });
    this.loop.start();
  }

  get completedPasses(): number {
    return this.loop?.completedPasses ?? 0;
  }

  async stop(graceMs: number): Promise<boolean> {
    return (await this.loop?.stop(graceMs)) ?? true;
  }

  async pass(signals: PassSignals): Promise<IdlePassReport> {
    const { ctx } = this;
    const report: IdlePassReport = { watched: 0, stopped: [], errors: [] };
    const now = ctx.clock.now().getTime();
    const running = ctx.store.sandboxes.list({ state: "RUNNING" });
    const watched: Array<{ row: Sandbox; windowMs: number }> = [];
    for (const row of running) {
      const { windowMs } = idlePolicy(ctx, row);
      if (windowMs <= 0) this.quietSince.delete(row.vmid);
      else if (this.inUse(row.vmid)) this.quietSince.set(row.vmid, now);
      else watched.push({ row, windowMs });
    }
    const live = new Set(running.map((row) => row.vmid));
    for (const vmid of this.quietSince.keys()) if (!live.has(vmid)) this.quietSince.delete(vmid);
    report.watched = watched.length;
    if (watched.length === 0 || signals.stopping.aborted) return this.finish(report);

    let cpuOf: Map<number, number>;
    try {
      const vms = await ctx.backend.listVms();
      cpuOf = new Map(
        vms.filter((vm) => vm.state === "running" && vm.cpu !== undefined).map((vm) => [vm.vmid, vm.cpu!]),
      );
    } catch (error) {
      // Unknown counts as used: every watched sandbox starts its window again.
      for (const { row } of watched) this.quietSince.set(row.vmid, now);
      report.errors.push({ message: `could not read guest CPU: ${describe(error)}` });
      return this.finish(report);
    }
    const threshold = ctx.config.idle_stop_cpu_threshold;
    const op = backgroundOperation(ctx.log.child({ task: "idle stop" }), signals.signal);
    for (const { row, windowMs } of watched) {
      if (signals.stopping.aborted) break;
      const cpu = cpuOf.get(row.vmid);
      // Not listed, not running as pvestatd last saw it, or busy: in use.
      if (cpu === undefined || cpu > threshold) {
        this.quietSince.set(row.vmid, now);
        continue;
      }
      const since = this.quietSince.get(row.vmid) ?? now;
      this.quietSince.set(row.vmid, since);
      if (now - lastUse(row, since) < windowMs) continue;
      try {
        const stopped = await this.sandboxes.idleStop(row.vmid, op, (fresh) => {
          const quietFor = ctx.clock.now().getTime() - lastUse(fresh, since);
          // Under the sandbox's lock now, so only the uses that take no lock are looked at again.
          if (this.inSessionOrJob(fresh.vmid) || quietFor < windowMs) return undefined;
          const minutes = round1(quietFor / 60_000);
          return {
            msg: `idle for ${minutes} min (guest CPU ${cpu} <= ${threshold}, no job, no exec or ssh through agentlab): stopping`,
            payload: {
              idle_for_minutes: minutes,
              cpu_usage: cpu,
              cpu_threshold: threshold,
              window_minutes: round1(windowMs / 60_000),
            },
          };
        });
        if (stopped) {
          report.stopped.push(row.vmid);
          this.quietSince.delete(row.vmid);
          op.log.info({ vmid: row.vmid, cpu }, `idle stop: sandbox ${row.vmid} stopped`);
        }
      } catch (error) {
        report.errors.push({ vmid: row.vmid, message: describe(error) });
        op.log.warn({ vmid: row.vmid, err: error }, `idle stop: could not stop sandbox ${row.vmid}`);
      }
    }
    return this.finish(report);
  }

  /** Busy with an operation, an exec, or a queued or running job. */
  private inUse(vmid: number): boolean {
    return this.sandboxes.isBusy(vmid) || this.inSessionOrJob(vmid);
  }

  private inSessionOrJob(vmid: number): boolean {
    return this.sandboxes.activity.inSession(vmid) || hasActiveJob(this.ctx, vmid);
  }

  private finish(report: IdlePassReport): IdlePassReport {
    this.lastPass = report;
    if (report.errors.length > 0) this.ctx.log.warn({ ...report }, "idle stop pass finished with errors");
    else this.ctx.log.debug({ ...report }, "idle stop pass finished");
    return report;
  }
}

/** The latest sign of use: the quiet run's start, a change to the record, a recorded use. */
function lastUse(row: Sandbox, quietSince: number): number {
  return Math.max(quietSince, row.updated_at.getTime(), row.last_used_at?.getTime() ?? 0);
}
