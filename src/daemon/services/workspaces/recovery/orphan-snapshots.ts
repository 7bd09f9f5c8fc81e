/**
 * Snapshot records (design §5.4 snapshot_record_orphan), a maintenance step recovery runs.
 *
 * Drop `ready` snapshot rows whose snapshot is no longer on the holder (deleted by hand): Proxmox is
 * the truth for existence (design §6.2), and a stale row would keep the name taken. Workspaces with
 * an operation in flight are left for the next pass. Event workspace.snapshot.dropped per row.
 */
import { isVmNotFound } from "../../maintenance-steps.js";
import type { Operation } from "../../operation.js";
import type { WorkspaceCore } from "../core.js";

export async function dropOrphanSnapshotRecords(
  core: WorkspaceCore,
  operation: Operation,
  isRecovering: (workspaceId: string) => boolean,
): Promise<number> {
  const { store, backend } = core.ctx;
  let dropped = 0;
  for (const ws of store.workspaces.list({ state: "ready" })) {
    if (operation.signal.aborted) break;
    if (ws.holder_vmid === null || ws.node === null || isRecovering(ws.id)) continue;
    if (store.workspaceOps.getByWorkspace(ws.id)) continue;
    const records = store.workspaceSnapshots.list(ws.id).filter((r) => r.state === "ready");
    if (records.length === 0) continue;
    let names: Set<string>;
    try {
      names = new Set(
        (await backend.snapshotList({ vmid: ws.holder_vmid, node: ws.node })).map((s) => s.name),
      );
    } catch (error) {
      // A missing holder is check's finding; anything else is retried next pass.
      if (!isVmNotFound(error))
        operation.log.warn({ err: error, workspace: ws.name }, "could not list the holder's snapshots");
      continue;
    }
    await core.locks.run(core.lockKey(ws.id), async () => {
      if (store.workspaceOps.getByWorkspace(ws.id)) return;
      for (const record of records) {
        if (names.has(record.name)) continue;
        store.tx(() => {
          if (!store.workspaceSnapshots.delete(ws.id, record.name)) return;
          dropped++;
          core.event(
            ws,
            "workspace.snapshot.dropped",
            `snapshot ${record.name} is no longer on holder VM ${ws.holder_vmid}; its record is dropped`,
            {
              snapshot: record.name,
              kind: record.kind,
            },
          );
        });
      }
    });
  }
  return dropped;
}
