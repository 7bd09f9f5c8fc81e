/**
 * Start-up recovery after a crash (kill -9, power loss): provisionings the last daemon left in
 * REQUESTED, PROVISIONING or BOOTING are finished or rolled back, so no VM is orphaned and no row stays
 * stuck; and cloud-init snippets of finished sandboxes that a crash kept on disk are deleted.
 */
import type { ReconcileChange } from "../../protocol/maintenance.js";
import type { DaemonContext, Scheduler } from "../context.js";
import { removeSnippet } from "../guest/cloud-init.js";
import type { ClusterVm, VmRef } from "../proxmox/types.js";
import { transitionSandbox } from "../state/sandbox.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import {
  askGuestIpOnce,
  describe,
  finalizeJobs,
  INTERRUPTED_REASON,
  isProvisioning,
  isVmNotFound,
  vmRefOf,
} from "./maintenance-steps.js";
import type { Operation } from "./operation.js";
import { CLEAN_SNAPSHOT } from "./sandbox/revert.js";
import { isTemplateConfig } from "./sandbox/vm-config.js";
import { foreignVolumes, releaseSandboxWorkspace } from "./sandbox/workspace.js";
import type { SandboxService } from "./sandboxes.js";

export interface RecoveryOptions {
  scheduler: Scheduler;
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Bound of one guest-agent question. */
  guestIpBudgetMs: number;
}

export interface RecoverOptions {
  /** Finish the provisioning when its VM runs and the guest reports an address (else only roll back). */
  finish: boolean;
  /** Recorded as the FAILED reason when rolling back. */
  reason: string;
  /** Skip (undefined) when an operation holds the sandbox, or when the row changed since `expect`. */
  ifIdle?: boolean;
  expect?: Sandbox;
}

/** Snippets of sandboxes in these states are no longer needed by any VM agentlab will start. */
const SNIPPET_DONE_STATES: readonly SandboxState[] = ["DESTROYED", "FAILED"];

export class Recovery {
  /** Provisionings interrupted by the last daemon stop that are not finished or rolled back yet. */
  readonly interrupted = new Set<number>();

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    private readonly options: RecoveryOptions,
  ) {}

  /**
   * Before the socket opens (nothing can be in flight yet): note every row a crash left before READY,
   * and the rows an earlier recovery failed but could not remove the VM of (it is retried), and delete
   * leftover snippets. Database and files only, no Proxmox call.
   */
  prepare(): void {
    // A BOOTING row with an intent is a start or revert, not a provisioning: sandbox/recovery/ owns it
    // (rolling it back here would remove the VM of a sandbox that was only being started).
    const withIntent = new Set(this.ctx.store.sandboxOps.list().map((intent) => intent.vmid));
    for (const row of this.ctx.store.sandboxes.list()) {
      if (withIntent.has(row.vmid)) continue;
      const unfinishedRollback =
        row.state === "FAILED" && row.vm_created && row.failure_reason === INTERRUPTED_REASON;
      if (isProvisioning(row.state) || unfinishedRollback) this.interrupted.add(row.vmid);
    }
    const removed = this.cleanSnippets();
    if (this.interrupted.size > 0 || removed > 0) {
      this.ctx.log.info(
        { interrupted: [...this.interrupted], snippets_removed: removed },
        `start-up recovery: ${this.interrupted.size} provisioning(s) interrupted by the last stop`,
      );
    }
  }

  /**
   * Forget interrupted rows that need nothing more: settled by someone else (destroyed, say), or FAILED
   * with no VM left. What is left is what `recover` still has to do.
   */
  forgetSettled(rows: readonly Sandbox[], vms: readonly ClusterVm[]): void {
    if (this.interrupted.size === 0) return;
    const present = new Set(vms.map((vm) => vm.vmid));
    const byVmid = new Map(rows.map((row) => [row.vmid, row]));
    for (const vmid of this.interrupted) {
      const row = byVmid.get(vmid);
      const pending =
        row !== undefined &&
        (isProvisioning(row.state) || (row.state === "FAILED" && row.vm_created && present.has(vmid)));
      if (!pending) this.interrupted.delete(vmid);
    }
  }

  /** Delete the cloud-init snippets of DESTROYED and FAILED sandboxes still on disk; returns how many. */
  cleanSnippets(): number {
    let removed = 0;
    for (const row of this.ctx.store.sandboxes.listWithSnippet(SNIPPET_DONE_STATES)) {
      try {
        removeSnippet(row.snippet_path);
        this.ctx.store.sandboxes.update(row.vmid, { snippet_path: null });
        removed++;
      } catch (error) {
        this.ctx.log.warn({ vmid: row.vmid, err: error }, `could not delete snippet ${row.snippet_path}`);
      }
    }
    return removed;
  }

  /**
   * Settle every interrupted provisioning with one cluster-wide VM list. Rows that cannot be settled
   * now (Proxmox failing) stay in `interrupted`; the reconciler retries them every pass.
   */
  async run(
    op: Operation,
  ): Promise<{ changes: ReconcileChange[]; errors: Array<{ vmid: number; message: string }> }> {
    const changes: ReconcileChange[] = [];
    const errors: Array<{ vmid: number; message: string }> = [];
    if (this.interrupted.size === 0) return { changes, errors };
    const vms = new Map((await this.ctx.backend.listVms()).map((vm) => [vm.vmid, vm]));
    await Promise.all(
      [...this.interrupted].map(async (vmid) => {
        try {
          const change = await this.recover(vmid, vms.get(vmid), op, {
            finish: true,
            reason: INTERRUPTED_REASON,
          });
          if (change) changes.push(change);
        } catch (error) {
          errors.push({ vmid, message: describe(error) });
          op.log.warn(
            { vmid, err: error },
            `start-up recovery of sandbox ${vmid} failed; the reconciler retries`,
          );
        }
      }),
    );
    op.log.info(
      { changes, errors, left: [...this.interrupted] },
      `start-up recovery finished: ${changes.length} settled, ${errors.length} failed`,
    );
    return { changes, errors };
  }

  /**
   * Finish or roll back one provisioning, holding the sandbox's lock:
   * - the VM this row created runs and its guest reports an address (within what is left of
   *   provisioning_timeout) → READY → RUNNING, taking the clean snapshot if it is missing;
   * - otherwise → FAILED with `reason`, the VM removed if this row created it, its jobs FAILED.
   * A clone that was in flight when the daemon died finished without the row knowing; the VM is this
   * row's when it has the row's VMID (free when reserved) and the name the clone gave it.
   * Throws when Proxmox fails; the row then stays interrupted for the next try.
   */
  async recover(
    vmid: number,
    vm: ClusterVm | undefined,
    op: Operation,
    options: RecoverOptions,
  ): Promise<ReconcileChange | undefined> {
    // A rollback that failed half-way (FAILED, VM still there) stays this class's to finish.
    const keepOnFailure = () => {
      const row = this.ctx.store.sandboxes.get(vmid);
      if (row && (isProvisioning(row.state) || (row.state === "FAILED" && row.vm_created)))
        this.interrupted.add(vmid);
    };
    const outcome = await this.sandboxes
      .exclusive(
        vmid,
        async () => {
          let row = this.ctx.store.sandboxes.get(vmid);
          if (!row || (options.expect && !sameVersion(row, options.expect))) return { settled: !row };
          const from = row.state;
          const ref = vmRefOf(this.ctx, row, vm);
          if (isProvisioning(row.state)) {
            if (
              !row.vm_created &&
              row.state === "PROVISIONING" &&
              vm &&
              (await this.clonedFor(row, vm, ref))
            ) {
              row = this.ctx.store.sandboxes.update(vmid, { vm_created: true }) ?? row;
              this.event(
                vmid,
                "sandbox.recovery",
                `VM ${vmid} was cloned for this sandbox while the daemon was down`,
              );
            }
            if (options.finish && row.vm_created && vm && (await this.runsNow(vm, ref))) {
              try {
                const ip = await this.finish(row, ref, op);
                if (ip) {
                  return {
                    settled: true,
                    change: {
                      vmid,
                      action: "running",
                      from,
                      to: "RUNNING",
                      ip,
                      message: `provisioning finished after the restart: running at ${ip}`,
                    } satisfies ReconcileChange,
                  };
                }
              } catch (error) {
                op.log.warn({ vmid, err: error }, `could not finish sandbox ${vmid}; rolling it back`);
              }
            }
          }
          return { settled: true, change: await this.rollBack(vmid, vm, ref, options.reason, from) };
        },
        { ifIdle: options.ifIdle === true },
      )
      .catch((error: unknown) => {
        keepOnFailure();
        throw error;
      });
    if (outcome?.settled) this.interrupted.delete(vmid);
    return outcome?.change;
  }

  /**
   * Whether the VM is the clone made for this row. The cluster list has `name` and `template` only
   * once pvestatd has reported the VM (API2Tools.pm:84-116); before that, the config has both.
   */
  private async clonedFor(row: Sandbox, vm: ClusterVm, ref: VmRef): Promise<boolean> {
    if (vm.name !== undefined) return !vm.template && vm.name === row.name;
    const config = await this.ctx.backend.getConfig(ref);
    return !isTemplateConfig(config) && config.name === row.name;
  }

  /**
   * Whether the VM runs. The cluster list is pvestatd's last report: "unknown", or still "stopped",
   * for up to ~10 s after a start, so anything but "running" there is asked of the VM itself.
   */
  private async runsNow(vm: ClusterVm, ref: VmRef): Promise<boolean> {
    if (vm.state === "running") return true;
    try {
      return (await this.ctx.backend.status(ref)).state === "running";
    } catch (error) {
      if (isVmNotFound(error)) return false;
      throw error;
    }
  }

  /** FAILED (if still before RUNNING), the VM removed if this row created it, the snippet deleted. */
  private async rollBack(
    vmid: number,
    vm: ClusterVm | undefined,
    ref: VmRef,
    reason: string,
    from: SandboxState,
  ): Promise<ReconcileChange | undefined> {
    const row = this.ctx.store.sandboxes.get(vmid);
    if (!row) return undefined;
    let failed = false;
    if (isProvisioning(row.state) || row.state === "READY") {
      this.ctx.store.tx(() => {
        transitionSandbox(this.ctx.store, vmid, "FAILED", { reason });
        this.event(vmid, "sandbox.provision_failed", reason, { reason, vm_created: row.vm_created });
        finalizeJobs(this.ctx, vmid, "FAILED", reason);
      });
      failed = true;
    } else if (row.state !== "FAILED") {
      return undefined; // someone else settled it meanwhile (destroyed, say)
    }
    if (row.vm_created && vm) {
      await this.sandboxes.removeVm(ref);
      this.event(vmid, "sandbox.rollback.completed", "removed the VM created for this sandbox");
    }
    // The VM is gone (or never was): a workspace attached for this provisioning is detached, intact.
    releaseSandboxWorkspace(this.ctx, vmid);
    removeSnippet(row.snippet_path);
    if (row.snippet_path) this.ctx.store.sandboxes.update(vmid, { snippet_path: null });
    if (!failed && !(row.vm_created && vm)) return undefined;
    return {
      vmid,
      action: "failed",
      from,
      to: "FAILED",
      message: `${reason}${row.vm_created && vm ? "; its VM was removed" : ""}`,
    };
  }

  /** Wait for the guest's address, then READY → clean snapshot (if missing) → RUNNING. */
  private async finish(row: Sandbox, ref: VmRef, op: Operation): Promise<string | undefined> {
    const { ctx } = this;
    const deadline = row.created_at.getTime() + ctx.config.provisioning_timeout_ms;
    const ip = await this.waitForIp(ref, deadline, op);
    if (!ip) return undefined;
    if (row.state === "PROVISIONING") transitionSandbox(ctx.store, row.vmid, "BOOTING");
    transitionSandbox(ctx.store, row.vmid, "READY", { patch: { ip } });
    const snapshots = await ctx.backend.snapshotList(ref);
    const foreign = foreignVolumes(ctx, await ctx.backend.getConfig(ref), row.vmid);
    if (!snapshots.some((s) => s.name === CLEAN_SNAPSHOT) && foreign.length > 0) {
      // A snapshot now would cover the workspace (invariant I4): revert is unavailable for this one.
      this.event(
        row.vmid,
        "sandbox.recovery",
        `no "${CLEAN_SNAPSHOT}" snapshot taken: ${foreign.map((f) => f.key).join(", ")} belongs to another VM`,
      );
    } else if (!snapshots.some((s) => s.name === CLEAN_SNAPSHOT)) {
      op.step("snapshot", `taking the "${CLEAN_SNAPSHOT}" snapshot of sandbox ${row.vmid}`);
      await ctx.backend.snapshotCreate(
        ref,
        CLEAN_SNAPSHOT,
        "agentlab: state right after provisioning (taken by start-up recovery)",
        { signal: op.signal },
      );
    }
    transitionSandbox(ctx.store, row.vmid, "RUNNING");
    this.event(
      row.vmid,
      "sandbox.recovered",
      `provisioning finished after a daemon restart: running at ${ip}`,
      {
        ip,
      },
    );
    return ip;
  }

  /** Ask the guest agent until it reports an address or the deadline passes (at least once). */
  private async waitForIp(ref: VmRef, deadline: number, op: Operation): Promise<string | undefined> {
    let delay = 250;
    for (;;) {
      op.signal.throwIfAborted();
      const ip = await askGuestIpOnce(this.ctx, ref, this.options.guestIpBudgetMs, this.options.scheduler);
      if (ip) return ip;
      const left = deadline - this.ctx.clock.now().getTime();
      if (left <= 0) return undefined;
      await this.options.sleep(Math.min(delay, left), op.signal);
      delay = Math.min(delay * 2, 2000);
    }
  }

  private event(vmid: number, kind: string, msg: string, payload?: Record<string, unknown>): void {
    this.ctx.store.events.append({ kind, sandbox_vmid: vmid, msg, ...(payload ? { payload } : {}) });
  }
}

/** The row has not moved since it was read (same state, same last update). */
export function sameVersion(row: Sandbox, seen: Sandbox): boolean {
  return row.state === seen.state && row.updated_at.getTime() === seen.updated_at.getTime();
}
