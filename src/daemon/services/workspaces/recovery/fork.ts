/**
 * Recovery of an interrupted `workspace fork` (design §7): a copy that finished is made ready (steps
 * 3–5 again, all idempotent); one that did not is removed with what the fork made, the source's data
 * never having been written; a copy whose worker died is not trusted and waits for an operator.
 */
import type { VmRef } from "../../../proxmox/types.js";
import type { Workspace } from "../../../store/workspaces.js";
import type { Operation } from "../../operation.js";
import { driveVolid, HOLDER_TAG, type WorkspaceCore } from "../core.js";
import { type RecoveryResult, type RecoveryScope, readVm, settle } from "./common.js";

export async function recoverFork(scope: RecoveryScope): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  // Either row may come first: the source's op (lease fork:…, params fork_id once reserved) or the
  // new workspace's op (params source_id, source_op_id).
  const isTarget = typeof op.params.source_id === "string";
  const srcOp = isTarget ? store.workspaceOps.get(Number(op.params.source_op_id)) : op;
  const srcId = isTarget ? String(op.params.source_id) : op.workspace_id;
  const forkId = isTarget
    ? op.workspace_id
    : typeof op.params.fork_id === "string"
      ? op.params.fork_id
      : undefined;
  const forkOp = forkId ? store.workspaceOps.getByWorkspace(forkId) : undefined;
  const closeSource = () => {
    if (srcOp) core.endOp(srcOp);
  };
  const src = store.workspaces.get(srcId);
  const fork = forkId ? store.workspaces.get(forkId) : undefined;
  if (!fork) {
    settle(core, op, closeSource);
    return { outcome: "rolled_back", message: "no new workspace was reserved yet; the source is released" };
  }
  const node = fork.node ?? core.ctx.config.proxmox_node;
  const target: VmRef = { vmid: fork.holder_vmid!, node };
  const holder = src?.holder_vmid != null ? { vmid: src.holder_vmid, node: src.node ?? node } : undefined;
  if (holder) await scope.waitForTasks(holder);
  await scope.waitForTasks(target);
  const params = { ...(srcOp?.params ?? {}), ...(forkOp?.params ?? {}) };
  const fromSnapshot = typeof params.from_snapshot === "string" ? params.from_snapshot : undefined;
  const baseSnapshot = typeof params.base_snapshot === "string" ? params.base_snapshot : undefined;
  const path = String(params.path ?? "");
  const vm = await readVm(core, target);
  const ours = vm !== undefined && vm.config.name === `ws-${fork.name}`;
  const lock = vm?.status.lock;

  if (vm && ours && lock) {
    // A copy whose worker died may be incomplete: the new workspace is not trusted, only removed.
    store.tx(() => {
      if (forkOp) store.workspaceOps.finish(forkOp.id);
      closeSource();
    });
    return brokenFork(
      core,
      fork,
      `fork was interrupted and its holder VM ${target.vmid} is left locked (${lock}) with no task running`,
      `qm unlock ${target.vmid} && agentlab workspace destroy ${fork.name} --force`,
    );
  }

  const volid = ours ? driveVolid(vm.config.scsi0) : undefined;
  if (vm && ours && volid) {
    // The copy finished: steps 3–5 again (all idempotent).
    await backend.setConfig(target, { protection: 1, tags: HOLDER_TAG, onboot: 0 });
    let baseDropped = false;
    if (holder && src && path === "linked-clone" && fromSnapshot === undefined && baseSnapshot) {
      baseDropped = await dropSnapshot(core, holder, baseSnapshot, operation);
    }
    const volume = await backend.volumeInfo(node, volid);
    const copyMode = path === "full-clone" ? "full" : "cow";
    const origin = path === "zfs-clone" ? (fromSnapshot ?? baseSnapshot) : fromSnapshot;
    store.tx(() => {
      store.workspaces.update(fork.id, {
        state: "ready",
        volid,
        format: volume.format ?? fork.format,
        copy_mode: copyMode,
        fork_origin_snapshot: origin ?? null,
      });
      if (forkOp) store.workspaceOps.finish(forkOp.id);
      if (baseDropped && src && baseSnapshot) store.workspaceSnapshots.delete(src.id, baseSnapshot);
      if (src && baseSnapshot && !baseDropped) store.workspaceSnapshots.markReady(src.id, baseSnapshot);
      closeSource();
      const payload = {
        source_id: srcId,
        fork_id: fork.id,
        holder_vmid: target.vmid,
        copy_mode: copyMode,
        from_snapshot: origin ?? null,
      };
      core.event(
        fork,
        "workspace.fork.completed",
        `workspace ${fork.name} forked from ${src?.name ?? srcId} (finished after a restart)`,
        payload,
      );
      if (src)
        core.event(
          src,
          "workspace.fork.completed",
          `workspace ${src.name} forked as ${fork.name} (finished after a restart)`,
          payload,
        );
    });
    return {
      outcome: "committed",
      message: `fork ${fork.name} (holder VM ${target.vmid}, ${volid}) is ready`,
    };
  }

  // The copy did not finish: remove what this fork made. The source's data was never written.
  if (vm && ours) {
    await backend.setConfig(target, {}, ["protection"]);
    await backend.destroy(target, { purge: true }, { signal: operation.signal });
  }
  let baseLeft = false;
  if (holder && src && baseSnapshot && fromSnapshot === undefined) {
    baseLeft = !(await dropSnapshot(core, holder, baseSnapshot, operation));
  }
  store.tx(() => {
    if (src && baseSnapshot && !baseLeft) store.workspaceSnapshots.delete(src.id, baseSnapshot);
    closeSource();
    store.workspaces.delete(fork.id);
    if (src) {
      core.event(
        src,
        "workspace.fork.failed",
        `fork ${fork.name} of workspace ${src.name} was interrupted by a restart and undone`,
        {
          source_id: srcId,
          fork_name: fork.name,
          holder_vmid: target.vmid,
        },
      );
    }
  });
  const extra =
    vm && !ours
      ? `; VM ${target.vmid} is not the fork's (named ${String(vm.config.name ?? "nothing")}) and was left alone`
      : "";
  return {
    outcome: "rolled_back",
    message: `the copy did not finish; fork ${fork.name} is removed${extra}`,
  };
}

/** Delete an internal snapshot nobody depends on (lvmthin clones do not); false when it stays. */
async function dropSnapshot(
  core: WorkspaceCore,
  holder: VmRef,
  name: string,
  operation: Operation,
): Promise<boolean> {
  const { backend } = core.ctx;
  try {
    if ((await backend.snapshotList(holder)).some((s) => s.name === name)) {
      await backend.snapshotDelete(holder, name, { signal: operation.signal });
    }
    return true;
  } catch (error) {
    operation.log.warn(
      { err: error, holder_vmid: holder.vmid, snapshot: name },
      "could not delete the internal fork snapshot; it stays listed",
    );
    return false;
  }
}

function brokenFork(core: WorkspaceCore, fork: Workspace, reason: string, fix: string): RecoveryResult {
  const { store } = core.ctx;
  store.tx(() => {
    const current = store.workspaces.get(fork.id);
    if (!current) return;
    store.workspaces.update(fork.id, {
      state: "broken",
      broken_reason: reason,
      meta: { ...current.meta, broken_fix: fix },
    });
    core.event(fork, "workspace.broken", `${reason}; fix: ${fix}`, { reason, fix });
  });
  return { outcome: "broken", message: `${reason}; fix: ${fix}` };
}
