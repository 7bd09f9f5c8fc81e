import type { WorkspaceDetail, Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import { describe } from "../maintenance-steps.js";
import { type WorkspaceCore, workspaceJson } from "./core.js";
import { workspaceSnapshots } from "./snapshot-list.js";

export function listWorkspaces(core: WorkspaceCore): { workspaces: WorkspaceJson[] } {
  return { workspaces: core.ctx.store.workspaces.list().map(workspaceJson) };
}

/**
 * One workspace with what Proxmox says about it now. Live parts that cannot be read are reported in
 * place (holder.error), so show works when Proxmox is down or the holder is gone.
 */
export async function showWorkspace(core: WorkspaceCore, ref: string): Promise<WorkspaceDetail> {
  const { store, backend } = core.ctx;
  const ws = core.require(ref);
  const detail: WorkspaceDetail = {
    ...workspaceJson(ws),
    holder: { found: false },
    snapshots: [],
    forks: store.workspaces.listForks(ws.id).map((f) => ({ id: f.id, name: f.name })),
    sessions: store.sessions.byWorkspace(ws.id).map((s) => ({ id: s.id, name: s.name })),
    ...(ws.meta.last_fsck !== undefined ? { last_fsck: ws.meta.last_fsck } : {}),
  };
  const op = store.workspaceOps.getByWorkspace(ws.id);
  if (op) detail.operation = { kind: op.kind, step: op.step, started_at: op.created_at.toISOString() };
  if (ws.holder_vmid === null || ws.node === null) {
    detail.holder = { found: false, error: "no holder VM recorded" };
    return detail;
  }
  const holder = core.holder(ws);
  try {
    const [status, config] = await Promise.all([backend.status(holder), backend.getConfig(holder)]);
    detail.holder = {
      found: true,
      status: status.state,
      ...(status.lock ? { lock: status.lock } : {}),
      protected: String(config.protection ?? "0") === "1",
    };
  } catch (error) {
    detail.holder = { found: false, error: describe(error) };
    return detail;
  }
  try {
    detail.path = (await backend.volumeInfo(holder.node, ws.volid)).path;
  } catch {
    // A missing volume is workspace check's finding; show just leaves the path out.
  }
  try {
    detail.snapshots = (await workspaceSnapshots(core, ws)).snapshots;
  } catch {
    // Same: the record is still worth showing.
  }
  return detail;
}

/** Admin clear: whoever held the lease loses it; returns who that was. */
export function clearWorkspaceLease(
  core: WorkspaceCore,
  ref: string,
): { workspace: WorkspaceJson; previous_owner?: string } {
  const { store } = core.ctx;
  const ws = core.require(ref);
  const cleared = store.tx(() => {
    const result = store.workspaceLeases.clear(ws.id);
    if (result.previous_owner) {
      core.event(ws, "workspace.lease.cleared", `lease of ${result.previous_owner} cleared by an operator`, {
        previous_owner: result.previous_owner,
      });
    }
    return result;
  });
  return {
    workspace: workspaceJson(core.reload(ws.id)),
    ...(cleared.previous_owner ? { previous_owner: cleared.previous_owner } : {}),
  };
}
