/**
 * Recovery of an interrupted `sandbox stop` (or one sandbox of `stop --all`): the row says STOPPED once
 * the VM is stopped. A stop the user asked for is finished: a VM still running is stopped again.
 */
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  settleIntent,
  settleVmGone,
} from "./common.js";

export async function recoverStop(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm, op } = scope;
  if (!(await liveStatus(ctx, vm))) return settleVmGone(ctx, row, "found by start-up recovery", "stop");
  await scope.waitForTasks();
  const status = await liveStatus(ctx, vm);
  if (!status) return settleVmGone(ctx, row, "found by start-up recovery", "stop");
  // Read after the dead daemon's task ended: a stop sent now is the only one, and a VM that already
  // stopped needs none. Stopping is safe to repeat either way.
  if (status.state !== "stopped") await ctx.backend.stop(vm, { signal: op.signal });
  return settleIntent(scope, "STOPPED", {
    outcome: "finished",
    message: `the stop a daemon restart interrupted was finished: VM ${vm.vmid} is stopped`,
  });
}
