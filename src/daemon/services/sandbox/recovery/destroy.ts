/**
 * Recovery of an interrupted `sandbox destroy`: the user asked for it and the intent says so, so it is
 * finished (never undone, which would leave a VM nobody wants, stopped or half-purged).
 */
import { recordDestroyed, removeVm } from "../destroy.js";
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  RECOVERED_EVENT,
  recoveredPayload,
} from "./common.js";

export async function recoverDestroy(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm } = scope;
  if (await liveStatus(ctx, vm)) {
    // The dead daemon's stop or destroy task may still run; after it, each step is safe to repeat:
    // stopping a stopped VM does nothing, and removeVm takes a VM that is already gone as removed.
    await scope.waitForTasks();
    await removeVm(ctx, vm);
  }
  const message = "the destroy a daemon restart interrupted was finished: VM removed, sandbox DESTROYED";
  await recordDestroyed(ctx, row, message, RECOVERED_EVENT, {
    payload: recoveredPayload("destroy", "finished"),
  });
  return { outcome: "finished", message };
}
