/**
 * Small steps the lease reaper, the reconciler and start-up recovery share.
 */
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonContext, Scheduler } from "../context.js";
import { secondsBetween } from "../metrics/observer.js";
import { pickGuestIp } from "../network/guest-ip.js";
import type { ClusterVm, ProxmoxBackend, VmRef } from "../proxmox/types.js";
import type { Job } from "../store/jobs.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";

/** States of a sandbox whose provisioning has not finished. */
export const PROVISIONING_STATES: readonly SandboxState[] = ["REQUESTED", "PROVISIONING", "BOOTING"];

export function isProvisioning(state: SandboxState): boolean {
  return PROVISIONING_STATES.includes(state);
}

/** The reason start-up recovery records on provisionings a daemon crash interrupted. */
export const INTERRUPTED_REASON = "interrupted by daemon restart";

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function isVmNotFound(error: unknown): boolean {
  return error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND";
}

/** Where a sandbox's VM lives: the cluster list knows best, then the row, then the configured node. */
export function vmRefOf(ctx: DaemonContext, row: Sandbox, vm?: ClusterVm): VmRef {
  return { vmid: row.vmid, node: vm?.node ?? row.node ?? ctx.config.proxmox_node };
}

/**
 * The VM's node as the cluster knows it now, looked up by VMID cluster-wide. A recorded node goes
 * stale when someone migrates the VM; asked on the old node, Proxmox answers "Configuration file
 * 'nodes/<old>/qemu-server/<vmid>.conf' does not exist", which must never be read as "the VM is gone"
 * while it lives on another node. A VM the cluster list does not show (a token without VM.Audit on it
 * sees nothing) keeps the recorded node.
 */
export async function locateVm(ctx: DaemonContext, vm: VmRef): Promise<VmRef> {
  const listed = (await ctx.backend.listVms()).find((entry) => entry.vmid === vm.vmid);
  return listed && listed.node !== vm.node ? { vmid: vm.vmid, node: listed.node } : vm;
}

/**
 * End the QUEUED/RUNNING jobs bound to a sandbox that maintenance took out of service, with one event
 * each. Call inside the transaction that moves the sandbox, so the two never disagree.
 */
export function finalizeJobs(
  ctx: DaemonContext,
  vmid: number,
  status: "FAILED" | "TIMEOUT",
  reason: string,
): Job[] {
  const ended = ctx.store.jobs.finalizeForSandbox(vmid, status, reason);
  for (const job of ended) {
    ctx.metrics?.jobEnded(status, secondsBetween(job.created_at, job.updated_at));
    ctx.store.events.append({
      kind: status === "TIMEOUT" ? "job.timeout" : "job.failed",
      sandbox_vmid: vmid,
      job_id: job.id,
      msg: `job ${job.id} ${status}: ${reason}`,
      payload: { status, reason },
    });
  }
  return ended;
}

/** `promise`, or a PROXMOX_TIMEOUT after `ms` on the scheduler (the call itself is left to finish alone). */
export function withBudget<T>(
  promise: Promise<T>,
  ms: number,
  scheduler: Scheduler,
  what: string,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cancel = scheduler.schedule(
      () => reject(new AgentlabError("PROXMOX_TIMEOUT", `${what} did not answer within ${ms} ms`)),
      ms,
    );
    promise.then(
      (value) => {
        cancel();
        resolve(value);
      },
      (error: unknown) => {
        cancel();
        reject(error);
      },
    );
  });
}

/**
 * Ask the guest agent once for the sandbox's address, within `budgetMs`. Undefined when the agent does
 * not answer yet or reports no usable address; other failures are thrown.
 */
export async function askGuestIpOnce(
  ctx: DaemonContext,
  vm: VmRef,
  budgetMs: number,
  scheduler: Scheduler,
): Promise<string | undefined> {
  try {
    const interfaces = await withBudget(
      ctx.backend.guestInterfaces(vm),
      budgetMs,
      scheduler,
      `the guest agent of VM ${vm.vmid}`,
    );
    return pickGuestIp(interfaces, ctx.config.agent_subnet);
  } catch (error) {
    if (error instanceof AgentlabError && ["GUEST_AGENT_NOT_READY", "PROXMOX_TIMEOUT"].includes(error.code))
      return undefined;
    throw error;
  }
}

/**
 * Wait until no Proxmox task runs on the VM: one a dead daemon started (a stop, a rollback, a destroy)
 * keeps running in Proxmox, and recovery must read the VM after it, not race it. Throws PROXMOX_TIMEOUT
 * after `waitMs`; recovery then tries again at the next maintenance pass.
 */
export async function waitForVmTasks(
  backend: ProxmoxBackend,
  vm: VmRef,
  options: {
    waitMs: number;
    sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
    signal: AbortSignal;
  },
): Promise<void> {
  const deadline = Date.now() + options.waitMs;
  let delay = 200;
  for (;;) {
    // The active list also holds finished tasks not yet archived (Tasks.pm:228-236).
    const active = (await backend.listTasks(vm.node, { vmid: vm.vmid, source: "active" })).filter(
      (t) => t.running,
    );
    if (active.length === 0) return;
    if (Date.now() >= deadline) {
      throw new AgentlabError(
        "PROXMOX_TIMEOUT",
        `Proxmox task ${active[0]!.upid} on VM ${vm.vmid} is still running`,
        {
          hint: "recovery waits for it and tries again at the next maintenance pass",
          details: { vmid: vm.vmid, upid: active[0]!.upid },
        },
      );
    }
    await options.sleep(delay, options.signal);
    delay = Math.min(delay * 2, 2000);
  }
}
