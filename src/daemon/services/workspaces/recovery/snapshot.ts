/**
 * Recovery of an interrupted `workspace snapshot create` (design §6.1: a snapshot Proxmox finished is
 * recorded, a half-made one removed) and `workspace snapshot restore` (design §6.3: the rollback is
 * repeated, which is idempotent on a detached, leased volume).
 */
import { AgentlabError } from "../../../../protocol/errors.js";
import type { Workspace } from "../../../store/workspaces.js";
import { describe } from "../../maintenance-steps.js";
import {
  broken,
  holderRef,
  lockedHolder,
  type RecoveryResult,
  type RecoveryScope,
  readVm,
  settle,
  unbreak,
} from "./common.js";

export async function recoverSnapshot(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  const name = String(op.params.name);
  const holder = holderRef(core, ws, op);
  const dropRow = () => {
    const row = store.workspaceSnapshots.get(ws.id, name);
    if (row && row.state !== "ready") store.workspaceSnapshots.delete(ws.id, name);
  };
  if (!holder) {
    settle(core, op, dropRow);
    return { outcome: "rolled_back", message: "the workspace has no holder VM" };
  }
  await scope.waitForTasks(holder);
  const vm = await readVm(core, holder);
  if (!vm) {
    settle(core, op, () => {
      dropRow();
      unbreak(core, ws.id);
    });
    return {
      outcome: "rolled_back",
      message: `holder VM ${holder.vmid} does not exist (agentlab workspace check ${ws.name})`,
    };
  }
  const taken = (await backend.snapshotList(holder)).find((s) => s.name === name);
  if (!taken) {
    settle(core, op, () => {
      dropRow();
      unbreak(core, ws.id);
    });
    return { outcome: "rolled_back", message: `snapshot ${name} was never taken; its record is removed` };
  }
  const snapstate = (await backend.getConfig(holder, { snapshot: name })).snapstate;
  if (snapstate === undefined) {
    settle(core, op, () => {
      const createdAt = taken.snaptime !== undefined ? new Date(taken.snaptime * 1000) : undefined;
      if (store.workspaceSnapshots.get(ws.id, name))
        store.workspaceSnapshots.markReady(ws.id, name, createdAt);
      else
        store.workspaceSnapshots.insert({
          workspace_id: ws.id,
          name,
          state: "ready",
          kind: "user",
          ...(createdAt ? { created_at: createdAt } : {}),
        });
      unbreak(core, ws.id);
      core.event(
        ws,
        "workspace.snapshot.created",
        `snapshot ${name} of workspace ${ws.name} created (finished after a restart)`,
        {
          snapshot: name,
          holder_vmid: holder.vmid,
        },
      );
    });
    return {
      outcome: "committed",
      message: `snapshot ${name} exists on holder VM ${holder.vmid}; recorded as ready`,
    };
  }
  // Half made (snapstate prepare): the worker died. Snapshot creation does not write the volume.
  if (vm.status.lock) {
    return lockedHolder(
      core,
      ws,
      op,
      holder,
      vm.status.lock,
      `snapshot ${name}`,
      ` and the snapshot half made (snapstate ${String(snapstate)})`,
    );
  }
  try {
    // Forced (design §10.2): a half-made snapshot may lack its storage part, which a plain delete
    // would fail on; force drops the config entry anyway, and it never touches the volume's data.
    await backend.snapshotDelete(holder, name, { signal: operation.signal }, { force: true });
  } catch (error) {
    return broken(
      core,
      ws,
      op,
      `snapshot ${name} was interrupted and is left half made (snapstate ${String(snapstate)}) on holder VM ${holder.vmid}; removing it failed: ${describe(error).trim()}`,
      `qm delsnapshot ${holder.vmid} ${name} --force 1 (agentlab then finishes by itself)`,
      true,
    );
  }
  settle(core, op, () => {
    dropRow();
    unbreak(core, ws.id);
    core.event(
      ws,
      "workspace.snapshot.create_failed",
      `snapshot ${name} of workspace ${ws.name} was interrupted by a restart and removed`,
      {
        snapshot: name,
      },
    );
  });
  return { outcome: "rolled_back", message: `the half-made snapshot ${name} was removed` };
}

export async function recoverRestore(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { backend } = core.ctx;
  const name = String(op.params.name);
  const holder = holderRef(core, ws, op);
  const failed = (why: string): RecoveryResult => {
    settle(core, op, () => {
      unbreak(core, ws.id);
      core.event(
        ws,
        "workspace.snapshot.restore_failed",
        `restore of workspace ${ws.name} to ${name} was interrupted by a restart: ${why}`,
        {
          snapshot: name,
          error: why,
        },
      );
    });
    return { outcome: "closed", message: `the restore to ${name} was not repeated: ${why}` };
  };
  if (!holder) return failed("the workspace has no holder VM");
  await scope.waitForTasks(holder);
  const vm = await readVm(core, holder);
  if (!vm) return failed(`holder VM ${holder.vmid} does not exist`);
  if (vm.status.lock) {
    const lvm =
      ws.storage_type === "lvmthin"
        ? `; if ${ws.volid} is missing afterwards, the snapshot LV snap_vm-${holder.vmid}-disk-0_${name} still holds the data`
        : "";
    return lockedHolder(core, ws, op, holder, vm.status.lock, `restore to ${name}`, lvm);
  }
  if (vm.status.state !== "stopped") {
    return broken(
      core,
      ws,
      op,
      `restore to ${name} was interrupted and holder VM ${holder.vmid} is ${vm.status.state}`,
      `qm stop ${holder.vmid} (first make sure no sandbox uses the disk; agentlab then repeats the restore by itself)`,
      true,
    );
  }
  if (!(await backend.snapshotList(holder)).some((s) => s.name === name))
    return failed(`snapshot ${name} no longer exists`);
  // Idempotent: the volume is detached and leased, so nothing wrote to it since (design §10.2).
  try {
    await backend.snapshotRollback(holder, name, { signal: operation.signal });
  } catch (error) {
    if (error instanceof AgentlabError && error.code === "PROXMOX_TASK_FAILED")
      return failed(describe(error).trim());
    throw error;
  }
  settle(core, op, () => {
    unbreak(core, ws.id);
    core.event(
      ws,
      "workspace.snapshot.restored",
      `workspace ${ws.name} restored to snapshot ${name} (repeated after a restart)`,
      {
        snapshot: name,
        holder_vmid: holder.vmid,
      },
    );
  });
  return { outcome: "committed", message: `workspace restored to ${name}` };
}
