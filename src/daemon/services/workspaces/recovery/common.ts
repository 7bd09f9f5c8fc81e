/**
 * What the recovery of every interrupted workspace operation shares: the scope it runs in, its result,
 * reading a VM (or learning that it is gone), and the ends every kind can reach (the row settled in
 * its final transaction; the workspace `broken` with the operator's fix, and ready again once the fix
 * let the operation finish; the row closed with what to look at).
 */
import type { VmConfig, VmRef, VmStatus } from "../../../proxmox/types.js";
import type { WorkspaceOp } from "../../../store/workspace-ops.js";
import type { Workspace } from "../../../store/workspaces.js";
import { isVmNotFound } from "../../maintenance-steps.js";
import type { Operation } from "../../operation.js";
import type { SandboxPort } from "../attachment.js";
import type { WorkspaceCore } from "../core.js";

export type RecoveryOutcome =
  /** The operation was finished: the database now says what Proxmox shows. */
  | "committed"
  /** The operation was undone: nothing of it is left. */
  | "rolled_back"
  /** An operator must act first; the workspace is `broken` with the fix in its reason. */
  | "broken"
  /** The row was closed without finishing (nothing to finish, or the step cannot be repeated). */
  | "closed";

export interface RecoveryResult {
  outcome: RecoveryOutcome;
  message: string;
  /** Keep the row adopted and look again next pass (the operator's fix lets it finish by itself). */
  keep?: boolean;
}

/** What recovery needs from the sandbox service: attach/detach's port, and destroy (rebind's old sandbox). */
export interface RecoverySandboxes extends SandboxPort {
  destroy(vmid: number, force: boolean, op: Operation): Promise<unknown>;
}

/** How one op kind is recovered; sessions register theirs (see WorkspaceRecovery.register()). */
export type RecoveryHandler = (op: WorkspaceOp, operation: Operation) => Promise<RecoveryResult>;

/** Everything a built-in kind's recovery gets; it runs holding the workspace's mutex. */
export interface RecoveryScope {
  core: WorkspaceCore;
  sandboxes: RecoverySandboxes;
  op: WorkspaceOp;
  operation: Operation;
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Wait (bounded) for Proxmox tasks still running on `vm`; past the bound the row waits for the next pass. */
  waitForTasks(vm: VmRef): Promise<void>;
}

export type Recoverer = (scope: RecoveryScope) => Promise<RecoveryResult>;

/**
 * The recovery of a kind that works on the op's own workspace: with no workspace record left there
 * is nothing to finish or undo, and the row is closed.
 */
export function onWorkspace(
  recover: (scope: RecoveryScope, ws: Workspace) => Promise<RecoveryResult>,
): Recoverer {
  return async (scope) => {
    const ws = scope.core.ctx.store.workspaces.get(scope.op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    return recover(scope, ws);
  };
}

export interface VmView {
  config: VmConfig;
  status: VmStatus;
}

/** The workspace's holder VM, from the row or, before the row has it, from the op's params. */
export function holderRef(core: WorkspaceCore, ws: Workspace, op: WorkspaceOp): VmRef | undefined {
  const vmid = ws.holder_vmid ?? (typeof op.params.holder_vmid === "number" ? op.params.holder_vmid : null);
  if (vmid === null) return undefined;
  return { vmid, node: ws.node ?? core.ctx.config.proxmox_node };
}

/** Config and status, or undefined when the VM does not exist. */
export async function readVm(core: WorkspaceCore, vm: VmRef): Promise<VmView | undefined> {
  try {
    const [config, status] = await Promise.all([core.ctx.backend.getConfig(vm), core.ctx.backend.status(vm)]);
    return { config, status };
  } catch (error) {
    if (isVmNotFound(error)) return undefined;
    throw error;
  }
}

/** The attach precondition that matters for the data: no second QEMU may run on the disk (R2). */
export async function holderStopped(core: WorkspaceCore, ws: Workspace, op: WorkspaceOp): Promise<boolean> {
  const holder = holderRef(core, ws, op);
  if (!holder) return false;
  const view = await readVm(core, holder);
  return view?.status.state === "stopped";
}

/** Close the row (releasing its temporary lease) in the final transaction, after `commit`. */
export function settle(core: WorkspaceCore, op: WorkspaceOp, commit?: () => void): void {
  core.ctx.store.tx(() => {
    commit?.();
    core.endOp(op);
  });
}

/**
 * `broken` with the reason and the fix (meta.broken_fix, which check prints). With `keep`, the row
 * stays adopted: once the operator's fix is done, the next pass finishes the operation and the
 * workspace is ready again (meta.recovery_broken marks that recovery, not something else, broke it).
 */
export function broken(
  core: WorkspaceCore,
  ws: Workspace,
  op: WorkspaceOp,
  reason: string,
  fix: string,
  keep: boolean,
): RecoveryResult {
  const { store } = core.ctx;
  const current = store.workspaces.get(ws.id);
  if (current) {
    store.tx(() => {
      const unchanged = current.state === "broken" && current.broken_reason === reason;
      store.workspaces.update(ws.id, {
        state: "broken",
        broken_reason: reason,
        meta: { ...current.meta, broken_fix: fix, ...(keep ? { recovery_broken: true } : {}) },
      });
      if (!unchanged) core.event(ws, "workspace.broken", `${reason}; fix: ${fix}`, { reason, fix });
      if (!keep) core.endOp(op);
    });
  }
  return { outcome: "broken", message: `${reason}; fix: ${fix}`, ...(keep ? { keep: true } : {}) };
}

/** Undo what broken(…, keep) did, once the operator's fix let the operation finish. */
export function unbreak(core: WorkspaceCore, id: string): void {
  const { store } = core.ctx;
  const current = store.workspaces.get(id);
  if (!current?.meta.recovery_broken) return;
  const { broken_fix: _fix, recovery_broken: _broken, ...meta } = current.meta;
  store.workspaces.update(id, { state: "ready", broken_reason: null, meta });
}

/**
 * A holder left with `lock:` and no task running means a Proxmox worker died. The API token cannot
 * unlock it (skiplock is root-only), so an operator must; the row waits for that.
 */
export function lockedHolder(
  core: WorkspaceCore,
  ws: Workspace,
  op: WorkspaceOp,
  vm: VmRef,
  lock: string,
  what: string,
  extra = "",
): RecoveryResult {
  return broken(
    core,
    ws,
    op,
    `${what} was interrupted and holder VM ${vm.vmid} is left locked (${lock}) with no task running${extra}`,
    `qm unlock ${vm.vmid} (agentlab then finishes the ${op.kind} by itself)`,
    true,
  );
}

/**
 * No built-in recovery for this kind (session rows nobody registered a handler for), or a row that
 * names nothing to finish: close it and say what to look at.
 */
export function abandon(core: WorkspaceCore, op: WorkspaceOp): RecoveryResult {
  const { store } = core.ctx;
  const ws = store.workspaces.get(op.workspace_id);
  settle(core, op);
  const session = op.session_id ? store.sessions.get(op.session_id) : undefined;
  const look = [
    session ? `agentlab session show ${session.name}` : undefined,
    ws ? `agentlab workspace check ${ws.name}` : undefined,
  ].filter(Boolean);
  return {
    outcome: "closed",
    message: `nothing was finished or undone automatically (step ${op.step}); check ${look.join(" and ") || "the workspace"}`,
  };
}
