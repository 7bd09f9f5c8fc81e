/**
 * Recovery of an interrupted `workspace detach` (design §5.3): always rolled forward, the safe
 * direction the user asked for (the sandbox stopped as the detach would have, the drive taken out).
 */
import { AgentlabError } from "../../../../protocol/errors.js";
import type { VmRef } from "../../../proxmox/types.js";
import type { Workspace } from "../../../store/workspaces.js";
import { recordDetached } from "../attachment.js";
import { referencingKeys } from "../core.js";
import { type RecoveryResult, type RecoveryScope, readVm, settle } from "./common.js";

export async function recoverDetach(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  const vmid = Number(op.params.vmid);
  if (ws.attached_vmid !== vmid) {
    settle(core, op);
    return {
      outcome: "closed",
      message: `the workspace is no longer recorded as attached to sandbox ${vmid}`,
    };
  }
  const sandbox = store.sandboxes.get(vmid);
  const vm: VmRef = { vmid, node: sandbox?.node ?? ws.node ?? core.ctx.config.proxmox_node };
  await scope.waitForTasks(vm);
  let view = await readVm(core, vm);
  const inUse = sandbox !== undefined && ["READY", "RUNNING", "SUSPENDED"].includes(sandbox.state);
  if (view && (view.status.state !== "stopped" || (inUse && op.params.hot !== true))) {
    // The detach stopped the sandbox (or was about to): finish that the same way, so the sandbox's
    // record says STOPPED too. A hot detach whose unplug did not finish gets the safe path as well.
    operation.step("shutdown", `stopping sandbox ${vmid} to finish detaching workspace ${ws.name}`);
    if (inUse) await scope.sandboxes.stop(vmid, operation);
    else await backend.shutdown(vm, { timeoutSeconds: 120, forceStop: true }, { signal: operation.signal });
    view = await readVm(core, vm);
  }
  if (view) {
    await scope.sandboxes.withVmLock(vmid, async () => {
      const keys = referencingKeys(await backend.getConfig(vm), ws.volid);
      if (keys.length > 0) await backend.setConfig(vm, {}, keys);
      const left = referencingKeys(await backend.getConfig(vm), ws.volid);
      if (left.length > 0) {
        throw new AgentlabError(
          "PROXMOX_ERROR",
          `VM ${vmid} still references ${ws.volid} as ${left.join(", ")} after the change`,
          {
            details: { vmid, keys: left },
          },
        );
      }
    });
  }
  settle(core, op, () => {
    recordDetached(core, ws, vmid);
  });
  return {
    outcome: "committed",
    message: view
      ? `sandbox ${vmid} no longer references the workspace; recorded as detached`
      : `VM ${vmid} is gone; recorded as detached`,
  };
}
