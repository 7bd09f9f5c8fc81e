/**
 * Recovery of an interrupted `sandbox snapshot save` and `snapshot restore`, from the VM's snapshot list:
 * - save: the snapshot is listed (Proxmox finished it) → recorded as taken; not listed → not taken.
 *   The row's state never depended on it. A snapshot Proxmox left half-made (`lock: snapshot` with no
 *   task running: its worker died) is named with the fix, since only Proxmox can clean it up.
 * - restore: redone when the snapshot exists: rolling back to the same snapshot again ends in the same
 *   disk (and RAM) state, so it is safe to repeat; the row then follows the VM (restore.ts's rule).
 */
import { recordEvent } from "../journal.js";
import { reapplySettings } from "../snapshot-rollback.js";
import { settleAfterRollback } from "../snapshots.js";
import { foreignVolumes } from "../workspace.js";
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  RECOVERED_EVENT,
  recoveredPayload,
  settleIntent,
  settleVmGone,
} from "./common.js";

function snapshotName(scope: OpRecoveryScope): string {
  return String(scope.intent.params.name ?? "");
}

export async function recoverSnapshotSave(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm } = scope;
  const name = snapshotName(scope);
  if (!(await liveStatus(ctx, vm)))
    return settleVmGone(ctx, row, "found by start-up recovery", "snapshot_save");
  await scope.waitForTasks();
  const [snapshots, config] = await Promise.all([ctx.backend.snapshotList(vm), ctx.backend.getConfig(vm)]);
  if (config.lock === "snapshot") {
    return settleIntent(scope, undefined, {
      outcome: "undone",
      message: `snapshot "${name}" was left half-made by Proxmox (lock: snapshot, no task running); remove it with qm unlock ${row.vmid} && qm delsnapshot ${row.vmid} ${name} --force, then take it again`,
    });
  }
  if (snapshots.some((s) => s.name === name)) {
    recordEvent(ctx, row.vmid, "sandbox.snapshot.created", `snapshot "${name}" taken`, { name });
    return settleIntent(scope, undefined, {
      outcome: "finished",
      message: `snapshot "${name}" was taken before the daemon restart`,
    });
  }
  return settleIntent(scope, undefined, {
    outcome: "undone",
    message: `snapshot "${name}" was not taken (the daemon restarted first); take it again`,
  });
}

export async function recoverSnapshotRestore(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm, op } = scope;
  const name = snapshotName(scope);
  if (!(await liveStatus(ctx, vm))) {
    return settleVmGone(ctx, row, "found by start-up recovery", "snapshot_restore");
  }
  await scope.waitForTasks();
  const [snapshots, config] = await Promise.all([ctx.backend.snapshotList(vm), ctx.backend.getConfig(vm)]);
  const redo = snapshots.some((s) => s.name === name) && foreignVolumes(ctx, config, row.vmid).length === 0;
  if (redo) {
    await ctx.backend.snapshotRollback(vm, name, { signal: op.signal });
    await reapplySettings(ctx, vm, undefined, row.tags);
  }
  const message = redo
    ? `the restore of snapshot "${name}" a daemon restart interrupted was finished`
    : `the restore of snapshot "${name}" a daemon restart interrupted was not redone (the snapshot is gone or another VM's volume is in the config); the sandbox follows its VM`;
  await settleAfterRollback(ctx, vm, op, () =>
    recordEvent(
      ctx,
      row.vmid,
      RECOVERED_EVENT,
      message,
      recoveredPayload("snapshot_restore", redo ? "finished" : "undone"),
    ),
  );
  return { outcome: redo ? "finished" : "undone", message };
}
