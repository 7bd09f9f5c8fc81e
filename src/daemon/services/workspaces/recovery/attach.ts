/**
 * Recovery of an interrupted `workspace attach` (design §5.2): finished when the sandbox is live, its
 * slot free (or already the workspace's) and the holder stopped; otherwise undone, taking the drive
 * back only from a stopped VM.
 */
import type { VmRef } from "../../../proxmox/types.js";
import { sandboxLeaseOwner } from "../../../store/leases.js";
import type { Workspace } from "../../../store/workspaces.js";
import { workspaceDrive } from "../attachment.js";
import { referencingKeys, WORKSPACE_SLOT } from "../core.js";
import { holderStopped, type RecoveryResult, type RecoveryScope, readVm, settle } from "./common.js";

export async function recoverAttach(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  const vmid = Number(op.params.vmid);
  const vm: VmRef = {
    vmid,
    node: typeof op.params.node === "string" ? op.params.node : (ws.node ?? core.ctx.config.proxmox_node),
  };
  return scope.sandboxes.withVmLock(vmid, async () => {
    await scope.waitForTasks(vm);
    let view = await readVm(core, vm);
    let keys = view ? referencingKeys(view.config, ws.volid) : [];
    const sandbox = store.sandboxes.get(vmid);
    const live =
      sandbox !== undefined &&
      sandbox.state !== "DESTROYED" &&
      sandbox.vm_created &&
      ws.attached_vmid === null;
    if (view && live && view.config[WORKSPACE_SLOT] === undefined && (await holderStopped(core, ws, op))) {
      // Finish the attach rather than undo it: a synchronous config change the dead daemon sent may
      // still be queued behind the VM's lock and land after this look; writing the same value first
      // makes that late write harmless, where undoing would leave an unrecorded reference behind.
      operation.step(
        "attach",
        `attaching workspace ${ws.name} to sandbox ${vmid} as ${WORKSPACE_SLOT} (after a restart)`,
      );
      await backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) });
      view = await readVm(core, vm);
      keys = view ? referencingKeys(view.config, ws.volid) : [];
    }
    if (keys.includes(WORKSPACE_SLOT) && live) {
      settle(core, op, () => {
        store.workspaces.attach(ws.id, vmid);
        core.event(
          ws,
          "workspace.attached",
          `attached to sandbox ${vmid} as ${WORKSPACE_SLOT} (finished after a restart)`,
          { vmid },
        );
      });
      return {
        outcome: "committed",
        message: `sandbox ${vmid}'s config has the workspace as ${WORKSPACE_SLOT}; recorded as attached`,
      };
    }
    let left = "";
    if (view && keys.length > 0) {
      // The change landed on a VM the attach cannot be recorded for: take it back, never by force
      // (I3), and only from a stopped VM (unplugging a running guest's disk is what corrupts it).
      if (view.status.state === "stopped") await backend.setConfig(vm, {}, keys);
      else
        left = `; VM ${vmid} runs and still has it as ${keys.join(", ")} (agentlab workspace check ${ws.name} shows the fix)`;
    }
    settle(core, op, () => {
      const current = store.workspaces.get(ws.id);
      const owner = sandboxLeaseOwner(vmid);
      if (current?.lease_owner === owner && current.lease_nonce && current.attached_vmid !== vmid) {
        store.workspaceLeases.release(ws.id, owner, current.lease_nonce);
      }
    });
    const why = !view
      ? `VM ${vmid} is gone`
      : !live
        ? `sandbox ${vmid} is not a live sandbox the workspace can be attached to`
        : `the attach cannot be finished (${WORKSPACE_SLOT} of VM ${vmid} holds ${String(view.config[WORKSPACE_SLOT] ?? "nothing")}, or the holder VM is not stopped)`;
    return { outcome: "rolled_back", message: `${why}; the attach is undone${left}` };
  });
}
