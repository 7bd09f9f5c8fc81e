import type { FsckResult, WorkspaceDetail, Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { DaemonContext } from "../../context.js";
import { KeyedMutex } from "../../locks.js";
import { observed } from "../../metrics/observer.js";
import type { Operation } from "../operation.js";
import type { VmidAllocator } from "../sandbox/vmid-allocator.js";
import { acrossRevert, type RevertGuard, recoverRevert } from "./across-revert.js";
import { type AttachResult, attachWorkspace, type DetachResult, detachWorkspace } from "./attachment.js";
import { type CheckResult, checkWorkspace } from "./check.js";
import { WorkspaceCore } from "./core.js";
import { type CreateWorkspaceParams, createWorkspace } from "./create.js";
import { type DestroyResult, destroyWorkspace } from "./destroy.js";
import { type ForkParams, forkWorkspace } from "./fork.js";
import { fsckWorkspace } from "./fsck.js";
import { clearWorkspaceLease, listWorkspaces, showWorkspace } from "./queries.js";
import { type RebindParams, type RebindResult, type RebindSandboxes, rebindWorkspace } from "./rebind.js";
import { WorkspaceRecovery } from "./recovery/index.js";
import {
  createWorkspaceSnapshot,
  listWorkspaceSnapshots,
  restoreWorkspaceSnapshot,
  type SnapshotCreateResult,
  type SnapshotListResult,
  type SnapshotRestoreResult,
} from "./snapshots.js";

/**
 * Workspaces as the RPC handlers, sessions and maintenance see them. Each operation lives in its own
 * module of ./; this class owns what they share: the per-workspace mutex, the sandbox service (for
 * attach/detach, which also act on a sandbox) and the daemon's one VMID allocator (holders are VMs).
 */
export class WorkspaceService {
  readonly core: WorkspaceCore;
  /** Settles the operations a restart interrupted; until then their workspaces refuse new ones. */
  readonly recovery: WorkspaceRecovery;

  constructor(
    readonly ctx: DaemonContext,
    readonly sandboxes: RebindSandboxes,
    private readonly vmids: VmidAllocator,
  ) {
    this.core = new WorkspaceCore(ctx, new KeyedMutex());
    this.recovery = new WorkspaceRecovery(this.core, sandboxes);
    this.recovery.register("revert", (op, operation) =>
      recoverRevert(this.core, this.recovery, op, operation),
    );
  }

  /** Run a revert of sandbox `vmid` with its workspace held and kept attached (across-revert.ts). */
  acrossRevert<T>(vmid: number, work: (guard: RevertGuard | undefined) => Promise<T>): Promise<T> {
    return acrossRevert(this.core, this.recovery, vmid, work);
  }

  /**
   * Run `work` unless start-up recovery still holds the workspace (WORKSPACE_BUSY, design §10.1);
   * `operation` names it in metrics, refusals included.
   */
  private idle<T>(operation: string, ref: string, work: () => Promise<T>): Promise<T> {
    return this.counted(operation, () => {
      this.recovery.guard(ref);
      return work();
    });
  }

  /** An operation that changes a workspace, reported to metrics by name and outcome. */
  private counted<T>(operation: string, work: () => Promise<T>): Promise<T> {
    const metrics = this.ctx.metrics;
    if (!metrics) return (async () => work())();
    return observed(
      (outcome, seconds) => metrics.workspaceOperation(operation, outcome, seconds),
      async () => work(),
    );
  }

  create(params: CreateWorkspaceParams, op: Operation): Promise<WorkspaceJson> {
    return this.counted("create", () => createWorkspace(this.core, this.vmids, params, op));
  }

  list(): { workspaces: WorkspaceJson[] } {
    return listWorkspaces(this.core);
  }

  show(ref: string): Promise<WorkspaceDetail> {
    return showWorkspace(this.core, ref);
  }

  attach(
    ref: string,
    vmid: number,
    op: Operation,
    options: { leaseOwner?: string; sessionId?: string } = {},
  ): Promise<AttachResult> {
    return this.idle("attach", ref, () => attachWorkspace(this.core, this.sandboxes, ref, vmid, op, options));
  }

  detach(ref: string, hot: boolean, op: Operation): Promise<DetachResult> {
    return this.idle("detach", ref, () => detachWorkspace(this.core, this.sandboxes, ref, hot, op));
  }

  leaseClear(ref: string): ReturnType<typeof clearWorkspaceLease> {
    return clearWorkspaceLease(this.core, ref);
  }

  destroy(ref: string, op: Operation): Promise<DestroyResult> {
    return this.idle("destroy", ref, () => destroyWorkspace(this.core, ref, op));
  }

  snapshotCreate(ref: string, name: string, op: Operation): Promise<SnapshotCreateResult> {
    return this.idle("snapshot_create", ref, () => createWorkspaceSnapshot(this.core, ref, name, op));
  }

  snapshotList(ref: string): Promise<SnapshotListResult> {
    return listWorkspaceSnapshots(this.core, ref);
  }

  snapshotRestore(ref: string, name: string, op: Operation): Promise<SnapshotRestoreResult> {
    return this.idle("snapshot_restore", ref, () => restoreWorkspaceSnapshot(this.core, ref, name, op));
  }

  fork(ref: string, params: ForkParams, op: Operation): Promise<WorkspaceJson> {
    return this.idle("fork", ref, () => forkWorkspace(this.core, this.vmids, ref, params, op));
  }

  rebind(ref: string, params: RebindParams, op: Operation): Promise<RebindResult> {
    return this.idle("rebind", ref, () => rebindWorkspace(this, this.sandboxes, ref, params, op));
  }

  fsck(ref: string, repair: boolean, op: Operation): Promise<FsckResult> {
    return this.idle("fsck", ref, () => fsckWorkspace(this.core, ref, repair, op));
  }

  /** `workspace check` (design §5.4): read-only, so it runs during recovery too. */
  check(ref: string): Promise<CheckResult> {
    return checkWorkspace(this.core, ref, {
      // Rows this process made are its own operations; older ones only while recovery works on them.
      opRunning: (op) => op.created_at >= this.ctx.startedAt || this.recovery.isRunning(op),
    });
  }
}
