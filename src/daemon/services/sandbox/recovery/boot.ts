/**
 * Recovery of an interrupted boot: `sandbox start`, or the restart at the end of `sandbox revert` (its
 * intent at step "booting"). The user asked for a running sandbox, so the boot is finished: the VM is
 * started if it does not run, the guest asked for its address, READY -> RUNNING. No address within
 * provisioning_timeout leaves it FAILED with the reason, as a failed start does. Before step "booting"
 * nothing was sent to Proxmox: the intent is closed and the row kept.
 */
import { transitionSandbox } from "../../../state/sandbox.js";
import { describe } from "../../maintenance-steps.js";
import { waitForIp } from "../guest-address.js";
import { bindDiscoveredAddress } from "../network-binding.js";
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  settleIntent,
  settleVmGone,
} from "./common.js";

export async function recoverBoot(scope: OpRecoveryScope, what: string): Promise<OpRecoveryResult> {
  const { ctx, row, vm, op, intent } = scope;
  if (intent.step !== "booting") {
    return settleIntent(scope, undefined, {
      outcome: "undone",
      message: `the ${what} a daemon restart interrupted had not reached Proxmox; the sandbox stays ${row.state}`,
    });
  }
  if (!(await liveStatus(ctx, vm))) return settleVmGone(ctx, row, "found by start-up recovery", intent.kind);
  await scope.waitForTasks();
  const status = await liveStatus(ctx, vm);
  if (!status) return settleVmGone(ctx, row, "found by start-up recovery", intent.kind);
  // Read after the dead daemon's start ended: a VM that is not running now needs this one start.
  if (status.state !== "running") {
    await ctx.network?.beforeStart(row.vmid);
    await ctx.backend.start(vm, { signal: op.signal });
  }
  let ip: string;
  try {
    ip = await waitForIp(ctx, vm, ctx.clock.now().getTime() + ctx.config.provisioning_timeout_ms, op);
  } catch (error) {
    const reason = `${what} failed: interrupted by daemon restart, then ${describe(error)}`;
    return settleIntent(scope, "FAILED", { outcome: "undone", message: reason }, { reason });
  }
  transitionSandbox(ctx.store, row.vmid, "READY", { patch: { ip } });
  await bindDiscoveredAddress(ctx, row, ip);
  return settleIntent(scope, "RUNNING", {
    outcome: "finished",
    message: `the ${what} a daemon restart interrupted was finished: running at ${ip}`,
  });
}
