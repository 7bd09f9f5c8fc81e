import { AgentlabError } from "../../protocol/errors.js";
import type {
  SandboxDetail,
  SandboxEvent,
  Sandbox as SandboxJson,
  SandboxSnapshot,
} from "../../protocol/sandbox.js";
import type { DaemonContext } from "../context.js";
import { KeyedMutex } from "../locks.js";
import { observed } from "../metrics/observer.js";
import type { VmRef } from "../proxmox/types.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import type { Workspace } from "../store/workspaces.js";
import type { Operation } from "./operation.js";
import { claimPoolMember, poolRefusal } from "./pool/claim.js";
import { idlePolicy, SandboxActivity } from "./sandbox/activity.js";
import { destroySandbox, destroySandboxIf, pruneSandboxes, removeVm } from "./sandbox/destroy.js";
import { getSandbox, type SandboxScope } from "./sandbox/guards.js";
import { renewLease } from "./sandbox/lease.js";
import { resyncNetwork } from "./sandbox/network-binding.js";
import {
  idleStopSandbox,
  pauseSandbox,
  resumeSandbox,
  type StopAllResult,
  startSandbox,
  stopAllSandboxes,
  stopSandbox,
} from "./sandbox/power.js";
import {
  type CreateParams,
  createSandbox,
  resolveProfile,
  type WorkspacePlan,
  workspaceRefusal,
} from "./sandbox/provision.js";
import { listSandboxes, sandboxLogs, showSandbox } from "./sandbox/queries.js";
import { type RevertResult, revertSandbox } from "./sandbox/revert.js";
import { listSnapshots, restoreSnapshot, saveSnapshot } from "./sandbox/snapshots.js";
import { type UpdateParams, type UpdateResult, updateSandbox } from "./sandbox/update.js";
import { type ValidateParams, type ValidateResult, validateSandbox } from "./sandbox/validate.js";
import { VmidAllocator } from "./sandbox/vmid-allocator.js";
import { releaseSandboxWorkspace, type SandboxWorkspaces, unplugWorkspaces } from "./sandbox/workspace.js";
import type { WorkspaceService } from "./workspaces/service.js";

/**
 * The sandbox lifecycle, as the RPC handlers and maintenance see it. Every state change goes through
 * transitionSandbox; every Proxmox call through the backend; one operation per VMID at a time. The
 * work is in ./sandbox/, one module per concern; this class owns what they share: the daemon's
 * context, the per-VM operation locks (held by RPC calls and maintenance passes alike) and the VMID
 * allocator.
 */
export class SandboxService {
  private readonly vmLocks = new KeyedMutex();
  private readonly scope: SandboxScope;
  /** Use through agentlab (exec sessions, touches) the idle stopper counts. */
  readonly activity: SandboxActivity;
  /** Bound once the workspace service exists (it needs this service first, for attach and detach). */
  private workspaces: SandboxWorkspaces | undefined;
  /**
   * Told when a warm pool member was claimed, destroyed, stopped or paused, so the pool removes and
   * refills at once (bound by the daemon).
   */
  private poolChanged: (() => void) | undefined;

  /**
   * @param vmids the daemon's one VMID allocator; pass it when another service creates VMs too, so
   *   both reserve under the same lock. A service built alone (tests) gets its own.
   */
  constructor(
    private readonly ctx: DaemonContext,
    readonly vmids: VmidAllocator = new VmidAllocator(ctx),
  ) {
    this.scope = { ctx, locks: this.vmLocks };
    this.activity = new SandboxActivity(ctx);
  }

  /** The sandbox's row, or SANDBOX_NOT_FOUND. */
  get(vmid: number): Sandbox {
    return getSandbox(this.ctx, vmid);
  }

  /** Let provisioning attach workspaces (sandbox new --workspace, sessions, rebind). */
  useWorkspaces(workspaces: WorkspaceService): void {
    this.workspaces = {
      attach: (ref, vmid, op, options) => workspaces.attach(ref, vmid, op, options),
      describeOwner: (owner) => workspaces.core.describeOwner(owner),
      acrossRevert: (vmid, work) => workspaces.acrossRevert(vmid, work),
    };
  }

  /** Let claims and operations on warm pool members tell the pool to look again. */
  onPoolChange(kick: () => void): void {
    this.poolChanged = kick;
  }

  /** After an operation on `vmid`: a warm pool member's pool looks again (a stopped one is replaced). */
  private afterMemberOp<T>(vmid: number, work: Promise<T>): Promise<T> {
    return work.finally(() => {
      if (this.ctx.store.sandboxes.get(vmid)?.pool) this.poolChanged?.();
    });
  }

  /**
   * Provision a sandbox; with params.workspace (or a session's or rebind's `plan`) the workspace is
   * attached as scsi1 before the first boot, after the `clean` snapshot. A request a warm pool member
   * can serve claims one when one is ready (pool/claim.ts), else provisions as usual.
   */
  create(params: CreateParams, op: Operation, plan?: WorkspacePlan): Promise<SandboxJson> {
    const work = async () => {
      const claimed = await this.claim(params, op, plan);
      return claimed ?? createSandbox(this.scope, this.vmids, this.workspaces, params, op, plan);
    };
    const metrics = this.ctx.metrics;
    if (!metrics) return work();
    // A profile that does not exist is no label: the set of label values stays the configured profiles.
    const profile = this.ctx.profiles.some((p) => p.name === params.profile) ? params.profile : "unknown";
    return observed((outcome, seconds) => metrics.sandboxCreate(profile, outcome, seconds), work);
  }

  /** A pool member for this request, or undefined (with the reason as a progress step when it has a pool). */
  private async claim(
    params: CreateParams,
    op: Operation,
    plan?: WorkspacePlan,
  ): Promise<SandboxJson | undefined> {
    const profile = this.ctx.profiles.find((p) => p.name === params.profile);
    if (!profile) return undefined;
    const hasMembers =
      profile.warm_pool > 0 || this.ctx.store.sandboxes.list({ poolOf: profile.name }).length > 0;
    if (!hasMembers) return undefined;
    const refusal = poolRefusal(params, plan);
    if (refusal !== undefined) {
      if (params.pool === undefined) op.step("pool", `not from the warm pool of ${profile.name}: ${refusal}`);
      return undefined;
    }
    try {
      const claimed = await claimPoolMember(this.scope, resolveProfile(this.ctx, profile.name), params, op);
      if (!claimed)
        op.step("pool", `the warm pool of ${profile.name} has no ready sandbox: provisioning one`);
      return claimed;
    } finally {
      this.poolChanged?.();
    }
  }

  /**
   * The lease reaper's hook between stopping an expired sandbox and destroying its VM: drop the
   * workspace reference (the VM is stopped, so this is a plain config change) and record the workspace
   * detached, its lease released and the session without a sandbox. A reference that cannot be dropped
   * leaves the sandbox TIMEOUT for the next pass rather than recording a detach that did not happen.
   */
  async releaseWorkspaceBeforeReap(row: Sandbox, vm: VmRef): Promise<void> {
    if (!(await unplugWorkspaces(this.ctx, vm))) {
      throw new AgentlabError(
        "PROXMOX_ERROR",
        `could not drop the workspace reference from VM ${vm.vmid}; the next pass retries`,
        { details: { vmid: row.vmid } },
      );
    }
    releaseSandboxWorkspace(this.ctx, row.vmid);
  }

  /**
   * Stop and destroy with purge; a VM that is already gone is fine. Maintenance uses it too, holding
   * the sandbox's lock through `exclusive`.
   */
  removeVm(vm: VmRef): Promise<void> {
    return removeVm(this.ctx, vm);
  }

  /** Whether an operation holds or waits for this sandbox; maintenance passes leave such sandboxes alone. */
  isBusy(vmid: number): boolean {
    return this.vmLocks.isBusy(String(vmid));
  }

  /**
   * Run `work` holding the sandbox's operation lock, for maintenance (lease reaper, reconciler, start-up
   * recovery), so it never races a user's operation on the same VM. With `ifIdle`, a sandbox that another
   * operation holds or waits for is skipped (undefined) instead of waited for; the next pass looks again.
   */
  exclusive<T>(
    vmid: number,
    work: () => Promise<T>,
    options: { ifIdle?: boolean } = {},
  ): Promise<T | undefined> {
    if (options.ifIdle && this.isBusy(vmid)) return Promise.resolve(undefined);
    return this.vmLocks.run(String(vmid), work);
  }

  /** Run `work` holding the sandbox's operation lock (workspace attach/detach: after the workspace's lock). */
  withVmLock<T>(vmid: number, work: () => Promise<T>): Promise<T> {
    return this.vmLocks.run(String(vmid), work);
  }

  /** Rebuild the nftables sandbox sets from the database (daemon start). */
  resyncNetwork(): Promise<void> {
    return resyncNetwork(this.ctx);
  }

  list(filter: {
    state?: SandboxState | undefined;
    profile?: string | undefined;
    all?: boolean | undefined;
  }): { sandboxes: SandboxJson[] } {
    return listSandboxes(this.ctx, filter);
  }

  show(vmid: number, eventCount = 20): Promise<SandboxDetail> {
    return showSandbox(this.ctx, vmid, eventCount);
  }

  destroy(vmid: number, force: boolean, op: Operation): Promise<SandboxJson> {
    // A destroyed warm pool member is replaced at once.
    const work = () => this.afterMemberOp(vmid, destroySandbox(this.scope, vmid, force, op));
    const metrics = this.ctx.metrics;
    return metrics ? observed((outcome) => metrics.sandboxDestroy(outcome), work) : work();
  }

  /**
   * A forced destroy the daemon decided on from a row read earlier (a warm pool removal), made only if
   * `ifStill` holds on the row read under the sandbox's lock: see destroySandboxIf.
   */
  destroyIf(
    vmid: number,
    op: Operation,
    options: Parameters<typeof destroySandboxIf>[4],
  ): Promise<SandboxJson | undefined> {
    return destroySandboxIf(this.scope, vmid, true, op, options);
  }

  prune(op: Operation): ReturnType<typeof pruneSandboxes> {
    return pruneSandboxes(this.scope, op);
  }

  start(vmid: number, op: Operation): Promise<SandboxJson> {
    return startSandbox(this.scope, vmid, op);
  }

  stop(vmid: number, op: Operation): Promise<SandboxJson> {
    // A stopped warm pool member cannot be claimed: the pool replaces it at once.
    return this.afterMemberOp(vmid, stopSandbox(this.scope, vmid, op));
  }

  /** The idle stopper's stop: see idleStopSandbox. */
  idleStop(
    vmid: number,
    op: Operation,
    stillIdle: Parameters<typeof idleStopSandbox>[3],
  ): Promise<Sandbox | undefined> {
    return idleStopSandbox(this.scope, vmid, op, stillIdle);
  }

  stopAll(op: Operation): Promise<StopAllResult> {
    return stopAllSandboxes(this.scope, op);
  }

  pause(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.afterMemberOp(vmid, pauseSandbox(this.scope, vmid, op));
  }

  resume(vmid: number, op: Operation): Promise<SandboxJson> {
    return resumeSandbox(this.scope, vmid, op);
  }

  update(params: UpdateParams): Promise<UpdateResult> {
    return updateSandbox(this.scope, params);
  }

  revert(
    vmid: number,
    options: { force?: boolean | undefined; restart?: boolean | undefined },
    op: Operation,
  ): Promise<RevertResult> {
    return revertSandbox(this.scope, this.workspaces, vmid, options, op);
  }

  snapshotSave(
    vmid: number,
    name: string,
    force: boolean,
    op: Operation,
  ): Promise<{ vmid: number; name: string; created_at: string }> {
    return saveSnapshot(this.scope, vmid, name, force, op);
  }

  snapshotList(vmid: number): Promise<{ vmid: number; snapshots: SandboxSnapshot[] }> {
    return listSnapshots(this.ctx, vmid);
  }

  snapshotRestore(
    vmid: number,
    name: string,
    force: boolean,
    op: Operation,
  ): Promise<{ sandbox: SandboxJson; snapshot: string }> {
    return restoreSnapshot(this.scope, vmid, name, force, op);
  }

  /**
   * The refusal `sandbox new --workspace` would meet before cloning (the node is not compared: no
   * template was looked up yet), for callers that queue work first (job run). WORKSPACE_NOT_FOUND throws.
   * A lease held by `leaseOwner` (a session's, for its own job) is no refusal.
   */
  workspaceRefusal(
    ref: string,
    profile: string,
    leaseOwner?: string,
  ): { workspace: Workspace; error?: AgentlabError } {
    return workspaceRefusal(
      this.ctx,
      this.workspaces,
      { ref, ...(leaseOwner !== undefined ? { leaseOwner } : {}) },
      undefined,
      profile,
    );
  }

  /** sandbox.validate, plus the workspace checks sandbox new --workspace would make before cloning. */
  async validate(params: ValidateParams & { workspace?: string | undefined }): Promise<ValidateResult> {
    const { workspace, ...rest } = params;
    const result = await validateSandbox(this.ctx, this.vmids, rest);
    if (workspace === undefined) return result;
    try {
      // Without a template there is no node to compare with; the template problem is reported already.
      const { error } = workspaceRefusal(
        this.ctx,
        this.workspaces,
        { ref: workspace },
        result.plan.node,
        params.profile,
      );
      if (error) {
        result.errors.push({
          code: "workspace_unavailable",
          field: "workspace",
          message: `${error.message}${error.hint ? ` (${error.hint})` : ""}`,
        });
      }
    } catch (error) {
      // WORKSPACE_NOT_FOUND: the report lists it with the rest rather than failing the call.
      result.errors.push({
        code: "workspace_unavailable",
        field: "workspace",
        message: `${error instanceof Error ? error.message : String(error)}: ${workspace}`,
      });
    }
    result.ok = result.errors.length === 0;
    return result;
  }

  /** sandbox.touch: record a use now; says how long idle stop would wait without another. */
  touch(vmid: number): { vmid: number; last_used_at: string; idle_stop_after_ms: number } {
    const row = this.activity.touch(vmid);
    return {
      vmid,
      last_used_at: (row.last_used_at ?? this.ctx.clock.now()).toISOString(),
      idle_stop_after_ms: idlePolicy(this.ctx, row).windowMs,
    };
  }

  leaseRenew(vmid: number, ttlMinutes: number): { vmid: number; lease_expires_at: string } {
    return renewLease(this.ctx, vmid, ttlMinutes);
  }

  logs(
    vmid: number,
    options: { tail?: number | undefined; after_id?: number | undefined },
  ): { events: SandboxEvent[]; last_id: number } {
    return sandboxLogs(this.ctx, vmid, options);
  }
}
