import { AgentlabError } from "../../../protocol/errors.js";
import { isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { WorkspaceCore } from "./core.js";

export interface DestroyResult {
  id: string;
  name: string;
  deleted_sessions: string[];
}

/**
 * `workspace destroy` (design §5.6): only a detached workspace that no running session uses and no ZFS
 * fork depends on. The holder goes with its disk and snapshots; the volume's absence is verified,
 * because Proxmox only warns when it cannot free a disk.
 */
export async function destroyWorkspace(
  core: WorkspaceCore,
  ref: string,
  op: Operation,
): Promise<DestroyResult> {
  const { ctx } = core;
  const { store, backend } = ctx;
  const initial = core.require(ref);
  return core.exclusive(initial, async () => {
    const ws = core.reload(initial.id);
    if (ws.state === "creating" || ws.state === "destroying") core.requireReady(ws);
    core.requireDetached(ws, "destroy");
    const sessions = store.sessions.byWorkspace(ws.id);
    const running = sessions.filter((s) => s.current_vmid !== null);
    if (running.length > 0) {
      throw new AgentlabError(
        "CONFLICT",
        `workspace ${ws.name} is used by running session ${running.map((s) => s.name).join(", ")}`,
        {
          hint: `stop it first: agentlab session stop ${running[0]!.name}`,
          details: { sessions: running.map((s) => s.name) },
        },
      );
    }
    const dependents = store.workspaces
      .listForks(ws.id)
      .filter((f) => f.copy_mode === "cow" && ws.storage_type === "zfspool");
    if (dependents.length > 0) {
      throw new AgentlabError(
        "CONFLICT",
        `workspace ${ws.name} cannot be destroyed: ZFS fork${dependents.length === 1 ? "" : "s"} ${dependents.map((f) => f.name).join(", ")} depend${dependents.length === 1 ? "s" : ""} on its snapshot`,
        {
          hint: `a ZFS clone keeps its origin alive; destroy the fork first: agentlab workspace destroy ${dependents[0]!.name}`,
          details: { forks: dependents.map((f) => f.name) },
        },
      );
    }
    const intent = store.tx(() => {
      store.workspaces.update(ws.id, { state: "destroying" });
      return core.beginOp(ws, "destroy", {}, { lease: "destroy" });
    });
    let volumeLeft = false;
    return core
      .withOp(
        intent,
        async () => {
          if (ws.holder_vmid !== null && ws.node !== null) {
            const holder = core.holder(ws);
            try {
              core.step(op, ws, "unprotect", `clearing protection of holder VM ${holder.vmid}`);
              await backend.setConfig(holder, {}, ["protection"]);
              core.step(
                op,
                ws,
                "destroy-holder",
                `destroying holder VM ${holder.vmid} with its disk and snapshots`,
              );
              await backend.destroy(holder, { purge: true }, { signal: op.signal });
            } catch (error) {
              if (!isVmNotFound(error)) throw error;
            }
            core.setStep(intent, "verify");
            try {
              await backend.volumeInfo(ws.node, ws.volid);
              volumeLeft = true;
            } catch {
              volumeLeft = false;
            }
          }
          return { id: ws.id, name: ws.name, deleted_sessions: sessions.map((s) => s.name) };
        },
        {
          commit: (result) => {
            if (volumeLeft) {
              store.workspaces.update(ws.id, {
                state: "broken",
                broken_reason: "volume left behind after holder destroy",
              });
              core.event(
                ws,
                "workspace.broken",
                `volume ${ws.volid} was left behind after the holder was destroyed`,
              );
              return;
            }
            for (const session of sessions) store.sessions.delete(session.id);
            store.workspaces.delete(ws.id);
            core.event(ws, "workspace.destroyed", `workspace ${ws.name} destroyed`, {
              holder_vmid: ws.holder_vmid,
              volid: ws.volid,
              deleted_sessions: result.deleted_sessions,
            });
          },
          undo: async () => {
            // The destroy did not happen: the holder keeps its disk and gets its protection back.
            store.workspaces.update(ws.id, { state: ws.state });
            if (ws.holder_vmid === null || ws.node === null) return;
            try {
              await backend.setConfig(core.holder(ws), { protection: 1 });
            } catch (error) {
              op.log.warn(
                { err: error, workspace: ws.name },
                "could not re-protect the holder after a failed destroy",
              );
            }
          },
        },
      )
      .then((result) => {
        if (volumeLeft) {
          throw new AgentlabError(
            "PROXMOX_ERROR",
            `holder VM destroyed, but volume ${ws.volid} is still on ${ws.storage}`,
            {
              hint: `check for clones (zfs list -t all -o name,origin) and then free it: pvesm free ${ws.volid}`,
              details: { volid: ws.volid, workspace: ws.name },
            },
          );
        }
        return result;
      });
  });
}
