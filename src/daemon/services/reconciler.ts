/**
 * The reconciler (spec 4.6, with its defects fixed): one cluster-wide VM list per pass, compared with
 * the database (drift.ts decides), then each planned change made under the sandbox's lock, only if the
 * row has not moved since it was read, and only after a live status call confirms what the list said
 * (the list is Proxmox's RRD view and can lag a fresh start or stop by seconds).
 */
import type { Inventory, ReconcileChange, ReconcileResult } from "../../protocol/maintenance.js";
import type { DaemonContext, Scheduler } from "../context.js";
import { KeyedMutex } from "../locks.js";
import { outcomeOf } from "../metrics/observer.js";
import type { ClusterVm } from "../proxmox/types.js";
import { transitionSandbox } from "../state/sandbox.js";
import type { Sandbox } from "../store/sandboxes.js";
import { type Assessment, assessDrift, type Plan } from "./drift.js";
import {
  askGuestIpOnce,
  describe,
  finalizeJobs,
  INTERRUPTED_REASON,
  isVmNotFound,
  vmRefOf,
} from "./maintenance-steps.js";
import type { Operation } from "./operation.js";
import { type Recovery, sameVersion } from "./recovery.js";
import { JOB_VM_MISSING_REASON, recordDestroyed } from "./sandbox/destroy.js";
import { bindDiscoveredAddress } from "./sandbox/network-binding.js";
import type { SandboxService } from "./sandboxes.js";

export interface ReconcilerOptions {
  scheduler: Scheduler;
  /** Bound of the one guest-agent question asked for a missing address. */
  guestIpBudgetMs: number;
}

/** Plans that end a sandbox's record on the strength of one observation; see `confirm`. */
const ENDS_RECORD: ReadonlySet<Plan["kind"]> = new Set(["destroy_record", "fail", "rollback"]);

export { JOB_VM_MISSING_REASON };

interface Survey {
  inventory: Inventory;
  assessments: Assessment[];
}

export class Reconciler {
  /** One pass at a time, whether the background loop or `sandbox reconcile --apply` asked for it. */
  private readonly passes = new KeyedMutex();
  /** Record-changing drift the last confirming pass saw, by VMID: `code@row version`. */
  private sightings = new Map<number, string>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    private readonly recovery: Recovery,
    private readonly options: ReconcilerOptions,
  ) {}

  /**
   * Rows first, then the VM list: a VM created after the rows were read is then at worst unknown to
   * this pass, never taken for one whose record is missing.
   */
  private async survey(): Promise<Survey & { rows: Sandbox[]; vms: ClusterVm[] }> {
    const { ctx } = this;
    const now = ctx.clock.now();
    const rows = ctx.store.sandboxes.list();
    const vms = await ctx.backend.listVms();
    // An intent left for recovery (one it could not settle yet) holds its sandbox as an operation does.
    const intents = new Set(ctx.store.sandboxOps.list().map((intent) => intent.vmid));
    const { assessments, busy } = assessDrift({
      rows,
      vms,
      busy: (vmid) => this.sandboxes.isBusy(vmid) || intents.has(vmid),
      interrupted: this.recovery.interrupted,
      now,
      orphanGraceMs: ctx.config.orphan_grace_period_ms,
      holders: new Set(ctx.store.workspaces.holderVmids()),
    });
    return {
      rows,
      vms,
      assessments,
      inventory: {
        checked_at: now.toISOString(),
        sandboxes: rows.length,
        proxmox_vms: vms.length,
        busy,
        findings: assessments.map((a) => a.finding),
      },
    };
  }

  /** The drift report: reads only, one Proxmox call. */
  async inventory(): Promise<Inventory> {
    return (await this.survey()).inventory;
  }

  /**
   * One pass: the report, and with `apply` the planned changes made one sandbox at a time (stopping
   * early, between sandboxes, once `stopping` is aborted). With `skipIfIdle`, a database with no live
   * sandbox and nothing to recover costs no Proxmox call (the background loop's case).
   *
   * With `confirm` (the background loop), a change that ends a sandbox's record (DESTROYED, FAILED) is
   * only made when the previous confirming pass saw the same drift on the same row version: a VM that
   * is missing or stopped for a moment (an HA restart, a reboot from the host, an operator's qm stop
   * followed by qm start) costs nothing. `sandbox reconcile --apply` is a person asking: it acts at once.
   */
  async pass(
    op: Operation,
    options: { apply: boolean; stopping?: AbortSignal; skipIfIdle?: boolean; confirm?: boolean },
  ): Promise<ReconcileResult> {
    const metrics = this.ctx.metrics;
    const pass = this.onePass(op, options);
    if (!metrics) return pass;
    return pass.then(
      (result) => {
        metrics.reconcilePass(
          "success",
          result.findings.map((finding) => finding.code),
        );
        return result;
      },
      (error: unknown) => {
        metrics.reconcilePass(outcomeOf(error));
        throw error;
      },
    );
  }

  private onePass(
    op: Operation,
    options: { apply: boolean; stopping?: AbortSignal; skipIfIdle?: boolean; confirm?: boolean },
  ): Promise<ReconcileResult> {
    return this.passes.run("pass", async () => {
      const { ctx } = this;
      if (
        options.skipIfIdle &&
        this.recovery.interrupted.size === 0 &&
        ctx.store.sandboxes.list().length === 0
      ) {
        const now = ctx.clock.now().toISOString();
        return {
          checked_at: now,
          sandboxes: 0,
          proxmox_vms: 0,
          busy: [],
          findings: [],
          applied: options.apply,
          changes: [],
          errors: [],
        };
      }
      const survey = await this.survey();
      this.recovery.forgetSettled(survey.rows, survey.vms);
      const changes: ReconcileChange[] = [];
      const errors: Array<{ vmid: number; message: string }> = [];
      const seenBefore = this.sightings;
      if (options.confirm) this.sightings = new Map();
      if (options.apply) {
        for (const assessment of survey.assessments) {
          if (options.stopping?.aborted || op.signal.aborted) break;
          if (!assessment.plan || !assessment.row) continue;
          if (options.confirm && ENDS_RECORD.has(assessment.plan.kind)) {
            const key = `${assessment.finding.code}@${assessment.row.updated_at.getTime()}`;
            this.sightings.set(assessment.row.vmid, key);
            if (seenBefore.get(assessment.row.vmid) !== key) continue;
          }
          try {
            const change = await this.carryOut(assessment, op);
            if (change) {
              changes.push(change);
              op.step("reconcile", `sandbox ${change.vmid}: ${change.message}`);
            }
          } catch (error) {
            errors.push({ vmid: assessment.row.vmid, message: describe(error) });
            op.log.warn(
              { vmid: assessment.row.vmid, err: error },
              `reconcile could not fix sandbox ${assessment.row.vmid}`,
            );
          }
        }
      }
      return { ...survey.inventory, applied: options.apply, changes, errors };
    }) as Promise<ReconcileResult>;
  }

  private async carryOut(assessment: Assessment, op: Operation): Promise<ReconcileChange | undefined> {
    const { plan, vm } = assessment;
    const seen = assessment.row;
    if (!plan || !seen) return undefined;
    if (plan.kind === "recover") {
      return this.recovery.recover(seen.vmid, vm, op, {
        finish: true,
        reason: INTERRUPTED_REASON,
        ifIdle: true,
      });
    }
    if (plan.kind === "rollback") {
      return this.recovery.recover(seen.vmid, vm, op, {
        finish: false,
        reason: plan.reason,
        ifIdle: true,
        expect: seen,
      });
    }
    const { ctx } = this;
    const vmid = seen.vmid;
    return this.sandboxes.exclusive(
      vmid,
      async (): Promise<ReconcileChange | undefined> => {
        const row = ctx.store.sandboxes.get(vmid);
        // Someone acted on it since the survey: the next pass looks again.
        if (!row || !sameVersion(row, seen)) return undefined;
        const ref = vmRefOf(ctx, row, vm);
        const liveState = async () => {
          try {
            return (await ctx.backend.status(ref)).state;
          } catch (error) {
            if (isVmNotFound(error)) return "missing" as const;
            throw error;
          }
        };
        const askIp = async () => {
          try {
            return await askGuestIpOnce(ctx, ref, this.options.guestIpBudgetMs, this.options.scheduler);
          } catch {
            return undefined;
          }
        };
        switch (plan.kind) {
          case "destroy_record": {
            if ((await liveState()) !== "missing") return undefined;
            // The VM never owned its workspace's volume: the workspace is intact, only detached now.
            await recordDestroyed(
              ctx,
              row,
              `${row.state} -> DESTROYED: its VM no longer exists in Proxmox`,
              "sandbox.reconcile",
              { jobReason: JOB_VM_MISSING_REASON },
            );
            return {
              vmid,
              action: "destroyed",
              from: row.state,
              to: "DESTROYED",
              message: `${row.state} -> DESTROYED: its VM no longer exists in Proxmox`,
            };
          }
          case "fail": {
            if ((await liveState()) !== "stopped") return undefined;
            ctx.store.tx(() => {
              transitionSandbox(ctx.store, vmid, "FAILED", { reason: plan.reason });
              finalizeJobs(ctx, vmid, "FAILED", plan.reason);
            });
            return {
              vmid,
              action: "failed",
              from: row.state,
              to: "FAILED",
              message: `${row.state} -> FAILED: ${plan.reason}`,
            };
          }
          case "adopt":
          case "advance_ready": {
            if ((await liveState()) !== "running") return undefined;
            const ip = await askIp();
            const patch = ip ? { ip } : {};
            if (row.state === "PROVISIONING") transitionSandbox(ctx.store, vmid, "BOOTING");
            transitionSandbox(ctx.store, vmid, "READY", { patch });
            if (ip) await bindDiscoveredAddress(ctx, row, ip);
            const why = plan.kind === "adopt" ? "its VM was started outside agentlab" : "its VM runs";
            this.event(vmid, "sandbox.reconcile", `${row.state} -> READY: ${why}${ip ? ` (at ${ip})` : ""}`);
            return {
              vmid,
              action: plan.kind === "adopt" ? "adopted" : "ready",
              from: row.state,
              to: "READY",
              ...(ip ? { ip } : {}),
              message: `${row.state} -> READY: ${why}${ip ? ` (at ${ip})` : "; no address yet"}`,
            };
          }
          case "refresh_ip": {
            const ip = await askIp();
            if (!ip) return undefined;
            if (!ctx.store.sandboxes.update(vmid, { ip }, row.state)) return undefined;
            await bindDiscoveredAddress(ctx, row, ip);
            this.event(vmid, "sandbox.reconcile", `address found: ${ip}`, { ip });
            return { vmid, action: "ip", ip, message: `address found: ${ip}` };
          }
        }
      },
      { ifIdle: true },
    );
  }

  private event(vmid: number, kind: string, msg: string, payload?: Record<string, unknown>): void {
    this.ctx.store.events.append({ kind, sandbox_vmid: vmid, msg, ...(payload ? { payload } : {}) });
  }
}
