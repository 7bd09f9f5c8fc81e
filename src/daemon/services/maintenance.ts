/**
 * Maintenance: what keeps the database and Proxmox in agreement without anyone asking.
 * - start-up recovery (recovery.ts): provisionings a crash interrupted are finished or rolled back;
 *   sandbox operations on existing VMs (sandbox/recovery/) are finished or undone from their intents,
 *   and live rows whose VM is gone are settled, in the first pass;
 * - the lease reaper (reaper.ts): expired sandboxes are destroyed and their jobs finalised;
 * - the reconciler (reconciler.ts): drift found with one cluster-wide VM list is corrected;
 * plus the read-only drift report behind `sandbox inventory` and `sandbox reconcile`.
 *
 * Background work runs as one periodic pass (recovery on the first pass only, then reaper, then
 * reconciler), once at start and every 30 s after the previous pass ended, on the injected scheduler.
 * Workspaces (design §10.1) slot in as: sandbox recovery → workspace operations (retried every pass
 * until settled) → the lease keeper (its own timer, started once they had their first try) → reaper →
 * reconciler → stale workspace snapshot records.
 * The idle stopper (idle-stop.ts) runs beside them on its own timer (idle_stop_interval), started
 * by the daemon (idleStop.start()) and stopped with the rest.
 * In the background the reconciler ends a record (DESTROYED, FAILED) only when two passes in a row see
 * the same drift; `sandbox reconcile --apply` acts at once.
 */
import type { Inventory, ReconcileResult } from "../../protocol/maintenance.js";
import { type DaemonContext, type Scheduler, systemScheduler } from "../context.js";
import { abortableSleep } from "../proxmox/tasks.js";
import { IdleStopper } from "./idle-stop.js";
import { describe } from "./maintenance-steps.js";
import { backgroundOperation, type Operation } from "./operation.js";
import { type PassSignals, PeriodicTask } from "./periodic.js";
import { type DetachWorkspaceHook, LeaseReaper } from "./reaper.js";
import { Reconciler } from "./reconciler.js";
import { Recovery } from "./recovery.js";
import { SandboxOpRecovery } from "./sandbox/recovery/index.js";
import type { SandboxService } from "./sandboxes.js";
import { LeaseKeeper } from "./workspaces/lease-keeper.js";
import type { WorkspaceRecovery } from "./workspaces/recovery/index.js";

/** Spec 11: lease reaper and reconciler every 30 s. */
export const MAINTENANCE_INTERVAL_MS = 30_000;
/** Spec 13.3: a missing address is asked for with a 2 s bound, so one silent guest cannot stall a pass. */
export const GUEST_IP_BUDGET_MS = 2_000;

export interface MaintenanceOptions {
  scheduler?: Scheduler;
  /** Waits between guest-agent questions during recovery. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  intervalMs?: number;
  guestIpBudgetMs?: number;
  /** See DetachWorkspaceHook: set once workspaces exist. */
  detachWorkspace?: DetachWorkspaceHook;
}

/** What one background pass did. */
export interface PassReport {
  recovered: number;
  /** Workspace operations settled in this pass. */
  workspacesRecovered: number;
  reaped: number[];
  reconciled: ReconcileResult["changes"];
  errors: Array<{ step: string; vmid?: number; message: string }>;
}

export class MaintenanceService {
  readonly recovery: Recovery;
  /** Sandbox operations on existing VMs (destroy, stop, revert, ...) a crash interrupted. */
  readonly opRecovery: SandboxOpRecovery;
  readonly reaper: LeaseReaper;
  readonly reconciler: Reconciler;
  /** Renews the workspace leases of live owners, releases those of gone ones (design §9.3). */
  readonly keeper: LeaseKeeper;
  /** Stops RUNNING sandboxes nobody uses (issue 17). */
  readonly idleStop: IdleStopper;
  private workspaceRecovery: WorkspaceRecovery | undefined;
  private readonly loop: PeriodicTask;
  private recoveryDone = false;
  /** Told after every background pass (the warm pool tops up then). */
  private passListener: (() => void) | undefined;
  /** The last background pass's report, for tests and status. */
  lastPass: PassReport | undefined;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    options: MaintenanceOptions = {},
  ) {
    const scheduler = options.scheduler ?? systemScheduler;
    const guestIpBudgetMs = options.guestIpBudgetMs ?? GUEST_IP_BUDGET_MS;
    this.recovery = new Recovery(ctx, sandboxes, {
      scheduler,
      sleep: options.sleep ?? abortableSleep,
      guestIpBudgetMs,
    });
    this.opRecovery = new SandboxOpRecovery(ctx, (vmid, work) => sandboxes.exclusive(vmid, work), {
      sleep: options.sleep ?? abortableSleep,
    });
    this.reaper = new LeaseReaper(ctx, sandboxes, {
      isInterrupted: (vmid) => this.recovery.interrupted.has(vmid),
      ...(options.detachWorkspace ? { detachWorkspace: options.detachWorkspace } : {}),
    });
    this.reconciler = new Reconciler(ctx, sandboxes, this.recovery, { scheduler, guestIpBudgetMs });
    this.keeper = new LeaseKeeper(ctx, { scheduler });
    this.idleStop = new IdleStopper(ctx, sandboxes, { scheduler });
    this.loop = new PeriodicTask({
      name: "maintenance",
      intervalMs: options.intervalMs ?? MAINTENANCE_INTERVAL_MS,
      scheduler,
      log: ctx.log,
      run: (signals) => this.backgroundPass(signals).then(() => undefined),
    });
  }

  /** Run `listener` after every background pass, the first one included (after start-up recovery). */
  afterEachPass(listener: () => void): void {
    this.passListener = listener;
  }

  /** The workspace service's recovery, so background passes settle interrupted workspace operations. */
  useWorkspaces(recovery: WorkspaceRecovery): void {
    this.workspaceRecovery = recovery;
  }

  /**
   * Before the socket opens (no Proxmox): note interrupted provisionings and delete leftover snippets;
   * adopt interrupted workspace operations (their workspaces answer WORKSPACE_BUSY until settled); and
   * run the lease keeper once, so leases of live owners that expired while the daemon was down are
   * extended again before any client can ask for them.
   */
  prepare(): void {
    this.opRecovery.prepare();
    this.recovery.prepare();
    this.workspaceRecovery?.prepare();
    this.keeper.pass();
  }

  /** Start the background passes; the first runs now (recovery first). Returns at once. */
  start(): void {
    this.loop.start();
  }

  /** Background passes finished so far. */
  get completedPasses(): number {
    return this.loop.completedPasses;
  }

  /** Resolves when the pass running now (if any) has ended. */
  idle(): Promise<void> {
    return this.loop.idle();
  }

  /** No more passes; wait up to `graceMs` for the running one, then abort it. True when it ended in time. */
  async stop(graceMs: number): Promise<boolean> {
    const [loop] = await Promise.all([
      this.loop.stop(graceMs),
      this.keeper.stop(graceMs),
      this.idleStop.stop(graceMs),
    ]);
    return loop;
  }

  /**
   * One pass: recovery (first pass only), the reaper, the reconciler. Each step runs even when the one
   * before failed (Proxmox down makes them all fail; each says why in the log).
   */
  async backgroundPass(signals: PassSignals): Promise<PassReport> {
    const op: Operation = backgroundOperation(this.ctx.log.child({ task: "maintenance" }), signals.signal);
    const report: PassReport = {
      recovered: 0,
      workspacesRecovered: 0,
      reaped: [],
      reconciled: [],
      errors: [],
    };
    // Interrupted sandbox operations first (retried every pass until settled): a provisioning's VMID
    // never has one, and the vanished-VM check below must see their outcome.
    if (this.opRecovery.pending.size > 0 && !signals.stopping.aborted) {
      try {
        const { recovered, errors } = await this.opRecovery.run(op);
        report.recovered += recovered.length;
        report.errors.push(...errors.map((e) => ({ step: "sandbox recovery", ...e })));
      } catch (error) {
        report.errors.push({ step: "sandbox recovery", message: describe(error) });
        op.log.warn({ err: error }, "sandbox operation recovery could not run; the next pass retries it");
      }
    }
    if (!this.recoveryDone) {
      try {
        const { changes, errors } = await this.recovery.run(op);
        report.recovered += changes.length;
        report.errors.push(...errors.map((e) => ({ step: "recovery", ...e })));
      } catch (error) {
        report.errors.push({ step: "recovery", message: describe(error) });
        op.log.warn({ err: error }, "start-up recovery could not run; the reconciler retries it every pass");
      }
      try {
        // A live row whose VM went while the daemon was down is settled now, not after the
        // reconciler's two confirming passes.
        const { recovered, errors } = await this.opRecovery.settleVanished(
          op,
          (vmid) => this.recovery.interrupted.has(vmid) || this.sandboxes.isBusy(vmid),
        );
        report.recovered += recovered.length;
        report.errors.push(...errors.map((e) => ({ step: "recovery", ...e })));
      } catch (error) {
        report.errors.push({ step: "recovery", message: describe(error) });
        op.log.warn({ err: error }, "start-up check for vanished VMs failed; the reconciler covers them");
      }
      this.recoveryDone = true;
    }
    // After sandbox recovery: an attach or detach depends on how its sandbox was settled.
    if (this.workspaceRecovery && this.workspaceRecovery.pendingCount > 0 && !signals.stopping.aborted) {
      try {
        const { recovered, errors } = await this.workspaceRecovery.run(op);
        report.workspacesRecovered = recovered.length;
        report.errors.push(
          ...errors.map((e) => ({
            step: "workspace recovery",
            message: `${e.kind} on ${e.workspace_id}: ${e.message}`,
          })),
        );
      } catch (error) {
        report.errors.push({ step: "workspace recovery", message: describe(error) });
        op.log.warn({ err: error }, "workspace recovery could not run; the next pass retries it");
      }
    }
    // Once interrupted operations had their first try, so their leases are settled or adopted.
    if (this.workspaceRecovery && !signals.stopping.aborted) this.keeper.start();
    if (!signals.stopping.aborted) {
      try {
        const { reaped, errors } = await this.reaper.pass(op, signals.stopping);
        report.reaped = reaped;
        report.errors.push(...errors.map((e) => ({ step: "reaper", ...e })));
      } catch (error) {
        report.errors.push({ step: "reaper", message: describe(error) });
        op.log.warn({ err: error }, "lease reaper pass failed; the next pass retries");
      }
    }
    if (!signals.stopping.aborted) {
      try {
        const result = await this.reconciler.pass(op, {
          apply: true,
          stopping: signals.stopping,
          skipIfIdle: true,
          confirm: true,
        });
        report.reconciled = result.changes;
        report.errors.push(...result.errors.map((e) => ({ step: "reconciler", ...e })));
        for (const change of result.changes)
          op.log.info({ vmid: change.vmid, change }, `reconcile: sandbox ${change.vmid}: ${change.message}`);
      } catch (error) {
        report.errors.push({ step: "reconciler", message: describe(error) });
        op.log.warn({ err: error }, "reconciler pass failed; the next pass retries");
      }
    }
    if (this.workspaceRecovery && !signals.stopping.aborted) {
      try {
        await this.workspaceRecovery.dropOrphanSnapshotRecords(op);
      } catch (error) {
        report.errors.push({ step: "workspace snapshot records", message: describe(error) });
        op.log.warn(
          { err: error },
          "could not compare workspace snapshot records with Proxmox; the next pass retries",
        );
      }
    }
    this.lastPass = report;
    op.log.debug({ ...report }, "maintenance pass finished");
    if (!signals.stopping.aborted) {
      try {
        this.passListener?.();
      } catch (error) {
        op.log.warn({ err: error }, `after the maintenance pass: ${describe(error)}`);
      }
    }
    return report;
  }

  /** `sandbox inventory`. */
  inventory(): Promise<Inventory> {
    return this.reconciler.inventory();
  }

  /** `sandbox reconcile [--apply]`: the report, and with apply one reconciler pass now. */
  reconcile(apply: boolean, op: Operation): Promise<ReconcileResult> {
    return this.reconciler.pass(op, { apply });
  }
}
