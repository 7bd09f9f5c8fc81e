/**
 * Choosing VMIDs for the VMs agentlab creates. One allocator per daemon: whoever creates a VM (today
 * sandboxes; soon workspace holder VMs) reserves its VMID here, so two creations never pick the same one.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import { KeyedMutex } from "../../locks.js";
import type { ClusterVm } from "../../proxmox/types.js";
import type { Store } from "../../store/db.js";

/** Auto-allocated VMIDs start here and grow; they are never reused (DESTROYED rows keep theirs). */
export const FIRST_VMID = 1000;

/** Candidates tried above the highest used VMID before allocation gives up. */
const ALLOCATION_TRIES = 50;

/**
 * The highest VMID agentlab ever used, so allocation never hands out one again. Every kind of VM
 * agentlab records must count here: a kind left out could get a VMID that one of its rows already holds.
 */
export function highestVmidUsed(store: Store): number | undefined {
  // Sandbox rows, workspace holders and the recorded high-water mark (workspace rows are deleted).
  return store.vmidAllocator.highestUsed();
}

/** Why an explicitly requested VMID cannot be had: agentlab has a sandbox with it, or the cluster a VM. */
export type VmidConflict = "sandbox" | "cluster";

/** The words for a conflict, the same in create's refusal and in validate's report. */
export function vmidConflictMessage(conflict: VmidConflict, vmid: number): string {
  return conflict === "sandbox"
    ? `sandbox vmid already exists: ${vmid}`
    : "vmid already exists in proxmox inventory";
}

export class VmidAllocator {
  /** One key only: allocations run one at a time; the per-VM operation locks are elsewhere. */
  private readonly lock = new KeyedMutex();

  constructor(private readonly ctx: DaemonContext) {}

  /**
   * Choose the VMID under one lock, so parallel creates never pick the same one: an explicit VMID
   * must be free in the database and the cluster; otherwise the next free one (nextFree). `record`
   * runs under the lock too and must write the row that holds the VMID, so the next allocation sees it.
   */
  reserve<T>(requested: number | undefined, cluster: ClusterVm[], record: (vmid: number) => T): Promise<T> {
    return this.lock.run("vmid-allocator", async () => {
      const taken = new Set(cluster.map((vm) => vm.vmid));
      if (requested !== undefined) {
        const conflict = await this.conflict(requested, taken);
        if (conflict) {
          throw new AgentlabError("CONFLICT", vmidConflictMessage(conflict, requested), {
            ...(conflict === "cluster" ? { hint: "leave out --vmid to let agentlab choose a free one" } : {}),
            details: { vmid: requested },
          });
        }
        return this.recorded(requested, record);
      }
      return this.recorded(await this.nextFree(taken), record);
    });
  }

  /** Raise the high-water mark in the transaction that writes the row holding the VMID. */
  private recorded<T>(vmid: number, record: (vmid: number) => T): T {
    return this.ctx.store.tx(() => {
      this.ctx.store.vmidAllocator.record(vmid);
      return record(vmid);
    });
  }

  /**
   * Whether a requested VMID is taken: by a sandbox row first, else by a VM of the cluster (`taken`,
   * from one cluster list) or by Proxmox's own nextid check. Undefined when it is free.
   */
  async conflict(vmid: number, taken: ReadonlySet<number>): Promise<VmidConflict | undefined> {
    if (this.ctx.store.sandboxes.get(vmid)) return "sandbox";
    if (this.ctx.store.vmidAllocator.isUsed(vmid)) return "cluster";
    if (taken.has(vmid) || !(await this.ctx.backend.isVmidFree(vmid))) return "cluster";
    return undefined;
  }

  /**
   * The next number above every VMID agentlab ever used that no VM of the cluster has, confirmed with
   * Proxmox's own nextid check. Only reserve's lock makes the answer stick; validate just reports it.
   */
  async nextFree(taken: ReadonlySet<number>): Promise<number> {
    let candidate = Math.max(FIRST_VMID, (highestVmidUsed(this.ctx.store) ?? 0) + 1);
    for (let tries = 0; tries < ALLOCATION_TRIES; tries++, candidate++) {
      if (taken.has(candidate) || this.ctx.store.vmidAllocator.isUsed(candidate)) continue;
      if (!(await this.ctx.backend.isVmidFree(candidate))) continue;
      return candidate;
    }
    throw new AgentlabError(
      "CONFLICT",
      `vmid allocation failed: no free VMID found after ${ALLOCATION_TRIES} tries`,
      { details: { last_tried: candidate } },
    );
  }
}
