/**
 * Recovery of an interrupted rebind (design §5.7, §10.2). A rebind's row exists from the attach to the
 * new sandbox S2 until the end (the attach's and the detach's own rows cover those steps). Sandbox recovery ran first, so S2 is settled: RUNNING with the
 * workspace → continue (destroy the old sandbox S1 unless keep_old); rolled back, the workspace
 * detached → put it back on S1, which the detach left stopped, as rebind's own undo does.
 */
import { AgentlabError } from "../../../../protocol/errors.js";
import type { VmRef } from "../../../proxmox/types.js";
import { leaseHeldError, sandboxLeaseOwner, sessionLeaseOwner } from "../../../store/leases.js";
import type { Workspace } from "../../../store/workspaces.js";
import { describe } from "../../maintenance-steps.js";
import { workspaceDrive } from "../attachment.js";
import { referencingKeys, WORKSPACE_SLOT } from "../core.js";
import { abandon, holderStopped, type RecoveryResult, type RecoveryScope, readVm, settle } from "./common.js";

export async function recoverRebind(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op, operation } = scope;
  const { store, backend } = core.ctx;
  const { old, new: next } = op.params;
  if (typeof old !== "number" || typeof next !== "number") return abandon(core, op);
  const session = op.session_id ? store.sessions.get(op.session_id) : undefined;
  const s2 = store.sandboxes.get(next);
  if (ws.attached_vmid === next) {
    if (!s2 || !["READY", "RUNNING"].includes(s2.state)) {
      throw new AgentlabError(
        "CONFLICT",
        `sandbox ${next} of the interrupted rebind is ${s2?.state ?? "gone"} with the workspace attached`,
        { hint: "sandbox recovery settles it first; the next maintenance pass retries" },
      );
    }
    let left = "";
    if (op.params.keep_old !== true && store.sandboxes.get(old)?.state !== "DESTROYED") {
      operation.step(
        "destroy-old",
        `destroying the old sandbox ${old} to finish the rebind (after a restart)`,
      );
      try {
        await scope.sandboxes.destroy(old, true, operation);
      } catch (error) {
        left = `; the old sandbox ${old} could not be destroyed: ${describe(error)}`;
      }
    }
    settle(core, op, () => {
      if (session) store.sessions.update(session.id, { current_vmid: next });
      core.event(ws, "workspace.rebound", `moved to sandbox ${next} from ${old} (finished after a restart)`, {
        vmid: next,
        old_vmid: old,
      });
    });
    return { outcome: "committed", message: `sandbox ${next} runs with the workspace${left}` };
  }
  const s1 = store.sandboxes.get(old);
  if (ws.attached_vmid !== null || !s1 || s1.state === "DESTROYED" || !s1.vm_created) {
    settle(core, op);
    return {
      outcome: "closed",
      message:
        ws.attached_vmid !== null
          ? `the workspace is attached to sandbox ${ws.attached_vmid}; nothing to finish`
          : `sandbox ${next} did not come up and the old sandbox ${old} is gone; the workspace is left detached`,
    };
  }
  const vm: VmRef = { vmid: old, node: s1.node ?? ws.node ?? core.ctx.config.proxmox_node };
  return scope.sandboxes.withVmLock(old, async () => {
    await scope.waitForTasks(vm);
    const view = await readVm(core, vm);
    const free = view !== undefined && view.config[WORKSPACE_SLOT] === undefined;
    if (!view || !free || view.status.state !== "stopped" || !(await holderStopped(core, ws, op))) {
      settle(core, op);
      return {
        outcome: "rolled_back",
        message: `sandbox ${next} did not come up; the workspace is left detached (sandbox ${old} ${!view ? "is gone" : !free ? `has ${WORKSPACE_SLOT} taken` : "or the holder is not stopped"}): agentlab workspace attach ${ws.name} <vmid>`,
      };
    }
    operation.step("reattach", `putting workspace ${ws.name} back on sandbox ${old} (after a restart)`);
    await backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) });
    if (!referencingKeys(await backend.getConfig(vm), ws.volid).includes(WORKSPACE_SLOT)) {
      throw new AgentlabError(
        "PROXMOX_ERROR",
        `sandbox ${old}'s config does not show the workspace after the change`,
        {
          details: { vmid: old, volid: ws.volid },
        },
      );
    }
    settle(core, op, () => {
      // The new sandbox's rollback released the lease and the session's current sandbox.
      if (session) store.sessions.update(session.id, { current_vmid: old }, { expectCurrentVmid: null });
      const owner = session ? sessionLeaseOwner(session.id) : sandboxLeaseOwner(old);
      const got = store.workspaceLeases.acquire(
        ws.id,
        owner,
        core.ctx.config.workspace_lease_ttl_ms,
        core.now(),
      );
      if (!got.ok) throw leaseHeldError(ws, got, core.describeOwner(got.lease_owner));
      store.workspaces.attach(ws.id, old);
      core.event(
        ws,
        "workspace.attached",
        `back on sandbox ${old}: the rebind to ${next} was interrupted and ${next} did not come up`,
        {
          vmid: old,
        },
      );
    });
    return {
      outcome: "rolled_back",
      message: `sandbox ${next} did not come up; the workspace is back on sandbox ${old} (stopped: agentlab sandbox start ${old})`,
    };
  });
}
