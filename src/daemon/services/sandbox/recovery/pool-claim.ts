/**
 * Recovery of a warm pool claim (pool/claim.ts) a crash interrupted: the claim's transaction had made
 * the sandbox the user's, and the VM's name and tags in Proxmox may still be the pool member's. They
 * are set again (setting them twice is harmless); a VM that is gone settles the sandbox DESTROYED.
 */
import { applyClaimedIdentity } from "../../pool/claim.js";
import {
  liveStatus,
  type OpRecoveryResult,
  type OpRecoveryScope,
  settleIntent,
  settleVmGone,
} from "./common.js";

export async function recoverPoolClaim(scope: OpRecoveryScope): Promise<OpRecoveryResult> {
  const { ctx, row, vm, op } = scope;
  if (!(await liveStatus(ctx, vm))) return settleVmGone(ctx, row, "found by start-up recovery", "pool_claim");
  await applyClaimedIdentity(ctx, row, op);
  return settleIntent(scope, undefined, {
    outcome: "finished",
    message: `the warm pool claim a daemon restart interrupted was finished: VM ${vm.vmid} is named ${row.name} in Proxmox`,
  });
}
