/**
 * The lease reaper (spec 4.5): a sandbox whose lease ran out goes TIMEOUT → VM stopped → workspace
 * detached → VM destroyed with purge → DESTROYED, and the job bound to it is finalised as TIMEOUT
 * (upstream left such jobs RUNNING forever). Every step is idempotent and the row only reaches DESTROYED
 * after the VM is gone, so a crash or a Proxmox failure between steps is finished by a later pass: a
 * TIMEOUT row keeps its expired lease and is picked up again.
 */

import type { DaemonContext } from "../context.js";
import { removeSnippet } from "../guest/cloud-init.js";
import type { VmRef } from "../proxmox/types.js";
import { transitionSandbox } from "../state/sandbox.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import { describe, finalizeJobs, isVmNotFound, locateVm, vmRefOf } from "./maintenance-steps.js";
import type { Operation } from "./operation.js";
import type { SandboxService } from "./sandboxes.js";

/**
 * Workspace hook point (workspaces are not built yet). Called after the VM stopped and before it is
 * destroyed, for a sandbox with a workspace_id: detach the workspace volume (so `destroy --purge` never
 * takes it along) and release the workspace leases held by the sandbox's job or `sandbox:<vmid>`
 * (spec 4.5). Throwing leaves the sandbox TIMEOUT with its VM stopped, for the next pass.
 */
export type DetachWorkspaceHook = (row: Sandbox, vm: VmRef, op: Operation) => Promise<void>;

export interface ReaperOptions {
  /** Rows start-up recovery still has to settle; the reaper leaves them to it. */
  isInterrupted(vmid: number): boolean;
  detachWorkspace?: DetachWorkspaceHook;
}

export interface ReaperResult {
  reaped: number[];
  errors: Array<{ vmid: number; message: string }>;
}

/** States that are already out of service: expiry destroys them without passing through TIMEOUT. */
const SETTLED: readonly SandboxState[] = ["TIMEOUT", "COMPLETED", "FAILED", "STOPPED"];

export const JOB_LEASE_EXPIRED_REASON = "sandbox lease expired";

export class LeaseReaper {
  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
    private readonly options: ReaperOptions,
  ) {}

  /** Expire every sandbox whose lease ran out, one at a time; sandboxes in use by an operation wait. */
  async pass(op: Operation, stopping: AbortSignal): Promise<ReaperResult> {
    const result: ReaperResult = { reaped: [], errors: [] };
    const now = this.ctx.clock.now();
    for (const row of this.ctx.store.sandboxes.listLeaseExpired(now)) {
      if (stopping.aborted) break;
      try {
        if (await this.expire(row.vmid, now, op)) result.reaped.push(row.vmid);
      } catch (error) {
        result.errors.push({ vmid: row.vmid, message: describe(error) });
        this.ctx.store.events.append({
          kind: "sandbox.destroy.failed",
          sandbox_vmid: row.vmid,
          msg: `lease expired but the VM could not be removed yet: ${describe(error)}`,
        });
        op.log.warn(
          { vmid: row.vmid, err: error },
          `could not reap sandbox ${row.vmid}; the next pass retries`,
        );
      }
    }
    return result;
  }

  /**
   * Expire one sandbox if its lease is still out when its lock is free. Returns false when there was
   * nothing to do (renewed meanwhile, already destroyed, busy, or still being recovered).
   */
  async expire(vmid: number, now: Date, op: Operation): Promise<boolean> {
    const done = await this.sandboxes.exclusive(
      vmid,
      async () => {
        const { ctx } = this;
        const row = ctx.store.sandboxes.get(vmid);
        if (!row || row.state === "DESTROYED") return false;
        if (!row.lease_expires_at || row.lease_expires_at.getTime() > now.getTime()) return false;
        if (this.options.isInterrupted(vmid) && !SETTLED.includes(row.state)) return false;
        const reason = `lease expired at ${row.lease_expires_at.toISOString()}`;
        ctx.store.tx(() => {
          if (row.state !== "TIMEOUT") {
            if (!SETTLED.includes(row.state)) transitionSandbox(ctx.store, vmid, "TIMEOUT", { reason });
            ctx.store.events.append({ kind: "sandbox.lease.expired", sandbox_vmid: vmid, msg: reason });
          }
          finalizeJobs(ctx, vmid, "TIMEOUT", JOB_LEASE_EXPIRED_REASON);
        });
        op.log.info({ vmid, state: row.state }, `sandbox ${vmid}: ${reason}; destroying it`);
        if (row.vm_created) {
          const vm = await locateVm(ctx, vmRefOf(ctx, row));
          try {
            await ctx.backend.stop(vm, { signal: op.signal });
          } catch (error) {
            if (!isVmNotFound(error)) throw error;
          }
          if (row.workspace_id !== null) await this.options.detachWorkspace?.(row, vm, op);
          await this.sandboxes.removeVm(vm);
        }
        removeSnippet(row.snippet_path);
        transitionSandbox(ctx.store, vmid, "DESTROYED", { patch: { snippet_path: null } });
        ctx.store.events.append({
          kind: "sandbox.destroy.completed",
          sandbox_vmid: vmid,
          msg: "destroyed: lease expired",
        });
        return true;
      },
      { ifIdle: true },
    );
    return done === true;
  }
}
