/**
 * Recovery of an interrupted `workspace destroy` (design §5.6): rolled forward, the user confirmed.
 */
import type { Workspace } from "../../../store/workspaces.js";
import { isVmNotFound } from "../../maintenance-steps.js";
import { holderRef, lockedHolder, type RecoveryResult, type RecoveryScope, readVm } from "./common.js";

export async function recoverDestroy(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  const holder = holderRef(core, ws, op);
  if (holder) {
    await scope.waitForTasks(holder);
    const vm = await readVm(core, holder);
    if (vm?.status.lock) return lockedHolder(core, ws, op, holder, vm.status.lock, "destroy");
    if (vm) {
      try {
        await backend.setConfig(holder, {}, ["protection"]);
        await backend.destroy(holder, { purge: true }, { signal: operation.signal });
      } catch (error) {
        if (!isVmNotFound(error)) throw error;
      }
    }
  }
  let volumeLeft = false;
  if (holder) {
    try {
      await backend.volumeInfo(holder.node, ws.volid);
      volumeLeft = true;
    } catch {
      volumeLeft = false;
    }
  }
  if (volumeLeft) {
    const fix = `check for clones (zfs list -t all -o name,origin), then pvesm free ${ws.volid}`;
    store.tx(() => {
      store.workspaces.update(ws.id, {
        state: "broken",
        broken_reason: "volume left behind after holder destroy",
        meta: { ...ws.meta, broken_fix: fix },
      });
      core.event(ws, "workspace.broken", `volume ${ws.volid} was left behind after the holder was destroyed`);
      core.endOp(op);
    });
    return { outcome: "broken", message: `volume left behind after holder destroy; fix: ${fix}` };
  }
  const sessions = store.sessions.byWorkspace(ws.id);
  store.tx(() => {
    for (const session of sessions) store.sessions.delete(session.id);
    store.workspaces.delete(ws.id);
    core.event(ws, "workspace.destroyed", `workspace ${ws.name} destroyed (finished after a restart)`, {
      holder_vmid: ws.holder_vmid,
      volid: ws.volid,
      deleted_sessions: sessions.map((s) => s.name),
    });
  });
  return {
    outcome: "committed",
    message: `holder VM ${holder?.vmid ?? "-"} and volume ${ws.volid} are gone; workspace ${ws.name} is destroyed`,
  };
}
