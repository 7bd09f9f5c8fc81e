/**
 * Recovery of an interrupted `workspace create` (design §5.1): a holder VM this create made and that
 * has its disk is finished (formatted again, which is safe on a volume the row never left `creating`
 * with); no holder, or one that is not this workspace's, removes the unfinished record; a locked or
 * diskless holder needs an operator.
 */
import type { Workspace } from "../../../store/workspaces.js";
import { driveVolid } from "../core.js";
import { formatIfPossible } from "../create.js";
import { broken, holderRef, type RecoveryResult, type RecoveryScope, readVm, settle } from "./common.js";

export async function recoverCreate(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op } = scope;
  const { store, backend } = core.ctx;
  const holder = holderRef(core, ws, op);
  if (!holder) {
    store.tx(() => store.workspaces.delete(ws.id));
    return {
      outcome: "rolled_back",
      message: "no holder VM was reserved; the unfinished record is removed",
    };
  }
  await scope.waitForTasks(holder);
  const vm = await readVm(core, holder);
  if (!vm) {
    store.tx(() => store.workspaces.delete(ws.id));
    return {
      outcome: "rolled_back",
      message: `holder VM ${holder.vmid} was never created; the unfinished record is removed`,
    };
  }
  const lock = vm.status.lock ?? (vm.config.lock !== undefined ? String(vm.config.lock) : undefined);
  if (vm.config.name !== `ws-${ws.name}` && lock !== "create") {
    // Not the VM this create made (its create never ran, and someone else took the VMID): leave it.
    store.tx(() => store.workspaces.delete(ws.id));
    return {
      outcome: "rolled_back",
      message: `VM ${holder.vmid} is not this workspace's holder (named ${String(vm.config.name ?? "nothing")}); it is left alone and the unfinished record is removed`,
    };
  }
  const destroyFix = `agentlab workspace destroy ${ws.name} --force`;
  if (lock) {
    return broken(
      core,
      ws,
      op,
      `create was interrupted and holder VM ${holder.vmid} is left locked (${lock}) with no task running`,
      `qm unlock ${holder.vmid} && ${destroyFix}`,
      false,
    );
  }
  const volid = driveVolid(vm.config.scsi0);
  if (!volid) {
    return broken(
      core,
      ws,
      op,
      `create was interrupted and holder VM ${holder.vmid} has no disk`,
      destroyFix,
      false,
    );
  }
  const volume = await backend.volumeInfo(holder.node, volid);
  // The volume is new (the row never left `creating`), so formatting it again is always safe.
  const formatted = await formatIfPossible(core, { ...ws, volid });
  settle(core, op, () => {
    store.workspaces.update(ws.id, { state: "ready", volid, format: volume.format ?? ws.format });
    core.event(
      ws,
      "workspace.created",
      `workspace ${ws.name} created on ${ws.storage} (holder VM ${holder.vmid}), finished after a restart`,
      {
        holder_vmid: holder.vmid,
        volid,
        size_gb: ws.size_gb,
        formatted,
      },
    );
  });
  return {
    outcome: "committed",
    message: `holder VM ${holder.vmid} exists with ${volid}; workspace ${ws.name} is ready`,
  };
}
