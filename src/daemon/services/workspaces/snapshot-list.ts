import type { WorkspaceSnapshot } from "../../../protocol/workspace.js";
import type { SnapshotInfo } from "../../proxmox/types.js";
import type { Workspace } from "../../store/workspaces.js";
import { snapshotsAfter } from "../sandbox/snapshot-rollback.js";
import type { WorkspaceCore } from "./core.js";

/** ZFS restores only the newest snapshot of a volume (design §4); other types restore any. */
export function restoreBlockers(
  ws: Pick<Workspace, "storage_type">,
  snapshots: SnapshotInfo[],
  name: string,
): string[] {
  return ws.storage_type === "zfspool" ? snapshotsAfter(snapshots, name) : [];
}

/**
 * The holder's snapshots as Proxmox lists them, oldest first, joined with agentlab's records: Proxmox is
 * the truth for existence, the database for the kind. A snapshot agentlab did not take is `external`.
 */
export async function workspaceSnapshots(
  core: WorkspaceCore,
  ws: Workspace,
): Promise<{ proxmox: SnapshotInfo[]; snapshots: WorkspaceSnapshot[] }> {
  const proxmox = await core.ctx.backend.snapshotList(core.holder(ws));
  const records = new Map(core.ctx.store.workspaceSnapshots.list(ws.id).map((r) => [r.name, r]));
  const snapshots = proxmox.map((snap): WorkspaceSnapshot => {
    const record = records.get(snap.name);
    const later = restoreBlockers(ws, proxmox, snap.name);
    return {
      name: snap.name,
      kind: record?.kind ?? "external",
      ...(record ? { state: record.state } : {}),
      ...(snap.snaptime !== undefined ? { created_at: new Date(snap.snaptime * 1000).toISOString() } : {}),
      ...(snap.description ? { description: snap.description.trim() } : {}),
      ...(snap.parent ? { parent: snap.parent } : {}),
      restorable: later.length === 0,
      ...(later.length > 0
        ? { reason: `ZFS restores only the newest snapshot; taken after it: ${later.join(", ")}` }
        : {}),
    };
  });
  return { proxmox, snapshots };
}
