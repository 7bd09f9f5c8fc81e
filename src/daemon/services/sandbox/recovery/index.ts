/**
 * Start-up recovery of sandbox operations on existing VMs (destroy, stop, start, revert, snapshot save
 * and restore, a warm pool claim): every `sandbox_ops` intent the last daemon left behind is finished or undone after
 * reading Proxmox, never guessed from the row alone; one module per kind, this class dispatches.
 *
 * prepare() (database only, before the socket opens) adopts the intents; an operation on such a sandbox
 * meanwhile is refused (CONFLICT "recovering after restart", from the intent's own row). run() settles
 * them in the first maintenance pass, before provisioning recovery, each under the sandbox's lock; one
 * that fails (Proxmox down, a task still running) stays adopted and the next pass retries it. Then, once,
 * `settleVanished` ends the record of every live sandbox whose VM no longer exists (checked with a live
 * status call), so a RUNNING row with no VM does not wait for the reconciler's confirming passes.
 * Every settled intent records a `sandbox.recovered` event with the op kind and the outcome.
 */

import type { DaemonContext } from "../../../context.js";
import type { SandboxOp, SandboxOpKind } from "../../../store/sandbox-ops.js";
import type { Sandbox, SandboxState } from "../../../store/sandboxes.js";
import { describe, vmRefOf, waitForVmTasks } from "../../maintenance-steps.js";
import type { Operation } from "../../operation.js";
import { recoverBoot } from "./boot.js";
import { liveStatus, type OpOutcome, type OpRecoverer, settleVmGone } from "./common.js";
import { recoverDestroy } from "./destroy.js";
import { recoverPoolClaim } from "./pool-claim.js";
import { recoverRevert } from "./revert.js";
import { recoverSnapshotRestore, recoverSnapshotSave } from "./snapshot.js";
import { recoverStop } from "./stop.js";

const RECOVERERS: Record<SandboxOpKind, OpRecoverer> = {
  destroy: recoverDestroy,
  stop: recoverStop,
  start: (scope) => recoverBoot(scope, "start"),
  revert: recoverRevert,
  snapshot_save: recoverSnapshotSave,
  snapshot_restore: recoverSnapshotRestore,
  pool_claim: recoverPoolClaim,
};

/** States in which a sandbox's VM must exist; a row in one of them with no VM is settled at start-up. */
const VM_EXPECTED: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "SUSPENDED",
  "STOPPED",
  "COMPLETED",
  "TIMEOUT",
];

/** Proxmox tasks a dead daemon left behind are waited for this long per intent before the next pass. */
const DEFAULT_TASK_WAIT_MS = 10 * 60_000;

export interface SandboxOpRecoveryOptions {
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  taskWaitMs?: number;
}

export interface SandboxOpRecoveryReport {
  recovered: Array<{ vmid: number; kind: SandboxOpKind | "vm_check"; outcome: OpOutcome; message: string }>;
  errors: Array<{ vmid: number; message: string }>;
}

export class SandboxOpRecovery {
  /** Intents adopted from the last process, by VMID, not settled yet. */
  readonly pending = new Map<number, SandboxOp>();

  constructor(
    private readonly ctx: DaemonContext,
    /** The sandbox service's per-VM operation lock (SandboxService.exclusive). */
    private readonly exclusive: <T>(vmid: number, work: () => Promise<T>) => Promise<T | undefined>,
    private readonly options: SandboxOpRecoveryOptions,
  ) {}

  /** Before the socket opens, so every intent is the last process's. Database only. */
  prepare(): void {
    for (const intent of this.ctx.store.sandboxOps.list()) this.pending.set(intent.vmid, intent);
    if (this.pending.size > 0) {
      this.ctx.log.info(
        { ops: [...this.pending.values()].map((o) => ({ vmid: o.vmid, kind: o.kind, step: o.step })) },
        `start-up recovery: ${this.pending.size} sandbox operation(s) interrupted by the last stop`,
      );
    }
  }

  /** Settle every adopted intent, oldest first; failures stay adopted for the next pass. */
  async run(op: Operation): Promise<SandboxOpRecoveryReport> {
    const report: SandboxOpRecoveryReport = { recovered: [], errors: [] };
    for (const intent of [...this.pending.values()]) {
      if (op.signal.aborted) break;
      try {
        const result = await this.exclusive(intent.vmid, () => this.recoverOne(intent, op));
        this.pending.delete(intent.vmid);
        if (result) report.recovered.push({ vmid: intent.vmid, kind: intent.kind, ...result });
      } catch (error) {
        report.errors.push({ vmid: intent.vmid, message: `${intent.kind}: ${describe(error)}` });
        op.log.warn(
          { vmid: intent.vmid, kind: intent.kind, err: error },
          `recovery of the interrupted ${intent.kind} of sandbox ${intent.vmid} failed; the next pass retries`,
        );
      }
    }
    return report;
  }

  private async recoverOne(intent: SandboxOp, op: Operation) {
    const { ctx } = this;
    // Read again under the lock: nothing else may have settled it, but the row is the truth.
    const current = ctx.store.sandboxOps.get(intent.vmid);
    const row = ctx.store.sandboxes.get(intent.vmid);
    if (!current || !row) return undefined;
    const vm = vmRefOf(ctx, row);
    const result = await RECOVERERS[current.kind]({
      ctx,
      op,
      intent: current,
      row,
      vm,
      waitForTasks: () =>
        waitForVmTasks(ctx.backend, vm, {
          waitMs: this.options.taskWaitMs ?? DEFAULT_TASK_WAIT_MS,
          sleep: this.options.sleep,
          signal: op.signal,
        }),
    });
    op.log.info(
      { vmid: row.vmid, kind: current.kind, outcome: result.outcome },
      `start-up recovery: sandbox ${row.vmid}: ${result.message}`,
    );
    return result;
  }

  /**
   * Once, at start-up, with one cluster-wide VM list: every live sandbox (in a state whose VM must
   * exist, not held by an operation or another recovery) whose VM is missing from the list and whose
   * status call says it does not exist is DESTROYED, with the reason. The status call guards against a
   * list that lags (pvestatd) or a VM on a node the list did not cover.
   */
  async settleVanished(op: Operation, skip: (vmid: number) => boolean): Promise<SandboxOpRecoveryReport> {
    const { ctx } = this;
    const report: SandboxOpRecoveryReport = { recovered: [], errors: [] };
    const live = ctx.store.sandboxes
      .list()
      .filter((row) => row.vm_created && VM_EXPECTED.includes(row.state) && !this.pending.has(row.vmid));
    // No live sandbox, no Proxmox call.
    if (live.length === 0) return report;
    const present = new Set((await ctx.backend.listVms()).map((vm) => vm.vmid));
    const candidates = live.filter((row) => !present.has(row.vmid) && !skip(row.vmid));
    for (const seen of candidates) {
      if (op.signal.aborted) break;
      try {
        const result = await this.exclusive(seen.vmid, async () => {
          const row: Sandbox | undefined = ctx.store.sandboxes.get(seen.vmid);
          if (!row || row.state !== seen.state) return undefined;
          if (await liveStatus(ctx, vmRefOf(ctx, row))) return undefined;
          return settleVmGone(ctx, row, "found at daemon start-up", "vm_check");
        });
        if (result) {
          report.recovered.push({ vmid: seen.vmid, kind: "vm_check", ...result });
          op.log.info({ vmid: seen.vmid }, `start-up recovery: sandbox ${seen.vmid}: ${result.message}`);
        }
      } catch (error) {
        report.errors.push({ vmid: seen.vmid, message: describe(error) });
      }
    }
    return report;
  }
}
