/**
 * Recovery of an interrupted `sandbox revert`, after reading the VM's status, config and snapshot list:
 * - step "booting": the rollback is done; the restart is finished (boot.ts);
 * - before it: whether the rollback ran is not known, and need not be. Redoing it is safe: the VM has
 *   not run since any earlier rollback (the restart comes after this step), so the disk ends as `clean`
 *   either way. It is redone when the VM is stopped (or can be stopped) and no other VM's volume is in
 *   its config; the cores, memory and tags the sandbox had are put back, as the revert does. A
 *   workspace still plugged in (the crash came before it was taken out) is not rolled over: the revert
 *   is undone instead, and workspace recovery keeps the workspace where it is.
 * Without a `restart`, or with a workspace (its drive goes back in workspace recovery, after this), the
 * sandbox ends STOPPED and the event says how to start it.
 */
import type { VmConfig } from "../../../proxmox/types.js";
import { transitionSandbox } from "../../../state/sandbox.js";
import { CLEAN_SNAPSHOT } from "../revert.js";
import { reapplySettings } from "../snapshot-rollback.js";
import { foreignVolumes } from "../workspace.js";
import { recoverBoot } from "./boot.js";
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  settleIntent,
  settleVmGone,
} from "./common.js";

export async function recoverRevert(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm, op, intent } = scope;
  if (intent.step === "booting") return recoverBoot(scope, "start after revert");
  if (!(await liveStatus(ctx, vm))) return settleVmGone(ctx, row, "found by start-up recovery", "revert");
  await scope.waitForTasks();
  const [status, config, snapshots] = await Promise.all([
    liveStatus(ctx, vm),
    ctx.backend.getConfig(vm),
    ctx.backend.snapshotList(vm),
  ]);
  if (!status) return settleVmGone(ctx, row, "found by start-up recovery", "revert");
  const running = status.state === "running" || status.state === "paused";
  const foreign = foreignVolumes(ctx, config, row.vmid);
  if (!snapshots.some((s) => s.name === CLEAN_SNAPSHOT) || foreign.length > 0) {
    const why =
      foreign.length > 0
        ? `${foreign.map((f) => f.key).join(", ")} (another VM's volume) is still in its config`
        : `the "${CLEAN_SNAPSHOT}" snapshot is gone`;
    return settleIntent(
      scope,
      running ? undefined : "STOPPED",
      {
        outcome: "undone",
        message: `the revert a daemon restart interrupted was not redone: ${why}; the disk was left as it is (run agentlab sandbox revert ${row.vmid} again)`,
      },
      running ? {} : { patch: { ip: null } },
    );
  }
  if (running) await ctx.backend.stop(vm, { signal: op.signal });
  if (row.state !== "STOPPED") transitionSandbox(ctx.store, row.vmid, "STOPPED", { patch: { ip: null } });
  await ctx.backend.snapshotRollback(vm, CLEAN_SNAPSHOT, { signal: op.signal });
  const before: VmConfig = {};
  for (const key of ["cores", "memory"] as const) {
    const value = intent.params[key];
    if (typeof value === "number" || typeof value === "string") before[key] = value;
  }
  await reapplySettings(ctx, vm, before, row.tags);
  if (intent.params.restart === true && intent.params.guarded !== true) {
    ctx.store.tx(() => {
      transitionSandbox(ctx.store, row.vmid, "BOOTING");
      ctx.store.sandboxOps.setStep(row.vmid, "booting");
    });
    return recoverBoot({ ...scope, intent: { ...intent, step: "booting" } }, "start after revert");
  }
  const startHint =
    intent.params.restart === true
      ? `; start it once its workspace is back: agentlab sandbox start ${row.vmid}`
      : "";
  return settleIntent(scope, "STOPPED", {
    outcome: "finished",
    message: `the revert a daemon restart interrupted was finished: rolled back to "${CLEAN_SNAPSHOT}"${startHint}`,
  });
}
