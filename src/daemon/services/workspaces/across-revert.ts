/**
 * The workspace side of `sandbox revert` (spec: a revert resets the root disk and does not touch /work).
 *
 * A Proxmox rollback replaces the VM's config by the snapshot's (AbstractConfig::snapshot_rollback):
 * a drive the `clean` snapshot lacks, which a workspace attached after provisioning always is, would
 * leave the config and come back as `unusedN` (__snapshot_rollback_get_unused, add_unused_volume), so
 * the sandbox would boot without /work while agentlab records it attached. Instead the revert takes
 * scsi1 out after the VM is down and puts it back after the rollback, under the workspace's mutex and a
 * `revert` intent. The records never change: the workspace stays attached to the sandbox, its lease and
 * its data untouched. A daemon killed in between finds the intent at start-up and puts the disk back.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { VmRef } from "../../proxmox/types.js";
import type { WorkspaceOp } from "../../store/workspace-ops.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { recordDetached, workspaceDrive } from "./attachment.js";
import { referencingKeys, WORKSPACE_SLOT, type WorkspaceCore } from "./core.js";
import type { RecoveryResult, WorkspaceRecovery } from "./recovery/index.js";

/** What a revert holds while it rolls the root disk back under an attached workspace. */
export interface RevertGuard {
  readonly workspace: Workspace;
  /** The keys of `config` that hold this workspace (scsi1, normally). */
  keysIn(config: Record<string, string | number>): string[];
  /** With the VM down: record the intent, then drop the workspace's drive (never force: I3). */
  unplug(vm: VmRef, op: Operation): Promise<void>;
  /** After the rollback: the drive goes back as scsi1 and the intent is closed. */
  replug(vm: VmRef, op: Operation): Promise<void>;
}

/**
 * Run a sandbox revert with the sandbox's workspace held: `work` gets a guard when one is attached
 * (under the workspace's mutex, taken before the sandbox's lock as everywhere else), none otherwise.
 * If `work` fails after the unplug, the drive is put back before the error goes on.
 */
export function acrossRevert<T>(
  core: WorkspaceCore,
  recovery: WorkspaceRecovery,
  vmid: number,
  work: (guard: RevertGuard | undefined) => Promise<T>,
): Promise<T> {
  const attached = core.ctx.store.workspaces.byAttachedVmid(vmid);
  if (!attached) return work(undefined);
  recovery.guard(attached.id);
  return core.exclusive(attached, async () => {
    const ws = core.reload(attached.id);
    if (ws.attached_vmid !== vmid) return work(undefined); // detached while we waited
    core.requireReady(ws);
    const guard = new Guard(core, ws);
    try {
      return await work(guard);
    } catch (error) {
      await guard.putBack(error);
      throw error;
    }
  });
}

class Guard implements RevertGuard {
  private intent: WorkspaceOp | undefined;
  private vm: VmRef | undefined;

  constructor(
    private readonly core: WorkspaceCore,
    readonly workspace: Workspace,
  ) {}

  keysIn(config: Record<string, string | number>): string[] {
    return referencingKeys(config, this.workspace.volid);
  }

  async unplug(vm: VmRef, op: Operation): Promise<void> {
    const { backend, store } = this.core.ctx;
    const ws = this.workspace;
    this.vm = vm;
    this.intent = store.workspaceOps.begin({
      workspace_id: ws.id,
      kind: "revert",
      step: "unplug",
      params: { vmid: vm.vmid, node: vm.node },
    });
    const keys = this.keysIn(await backend.getConfig(vm));
    this.core.step(
      op,
      ws,
      "unplug",
      `taking workspace ${ws.name} out of sandbox ${vm.vmid} for the rollback`,
    );
    if (keys.length > 0) await backend.setConfig(vm, {}, keys);
    const left = this.keysIn(await backend.getConfig(vm));
    if (left.length > 0) {
      throw new AgentlabError(
        "PROXMOX_ERROR",
        `sandbox ${vm.vmid}'s config still holds workspace ${ws.name} (${left.join(", ")}) after removing it`,
        { details: { vmid: vm.vmid, keys: left, volid: ws.volid } },
      );
    }
  }

  async replug(vm: VmRef, op: Operation): Promise<void> {
    const intent = this.intent;
    if (!intent) return;
    const ws = this.workspace;
    this.core.setStep(intent, "replug");
    this.core.step(
      op,
      ws,
      "replug",
      `putting workspace ${ws.name} back into sandbox ${vm.vmid} as ${WORKSPACE_SLOT}`,
    );
    await plugBack(this.core, ws, vm);
    this.intent = undefined;
    this.core.ctx.store.tx(() => {
      this.core.event(
        ws,
        "workspace.kept_across_revert",
        `stayed attached to sandbox ${vm.vmid} while its root disk was rolled back`,
        { vmid: vm.vmid },
      );
      this.core.endOp(intent);
    });
  }

  /** After a failed revert: the drive goes back if it was taken out; the intent is closed either way. */
  async putBack(cause: unknown): Promise<void> {
    const intent = this.intent;
    if (!intent || !this.vm) return;
    const ws = this.workspace;
    this.intent = undefined;
    try {
      await plugBack(this.core, ws, this.vm);
    } catch (error) {
      this.core.ctx.log.error(
        { err: error, vmid: this.vm.vmid, workspace: ws.name },
        `revert of sandbox ${this.vm.vmid} failed (${describe(cause)}) and workspace ${ws.name} could not be put back: ${describe(error)}; fix: agentlab workspace detach ${ws.name}, then agentlab workspace attach ${ws.name} ${this.vm.vmid}`,
      );
    } finally {
      this.core.ctx.store.tx(() => this.core.endOp(intent));
    }
  }
}

/**
 * scsi1 = the workspace's volume again, unless it is there already; an `unusedN` entry a rollback made
 * of it goes (a volume is referenced once). Verified by reading the config back.
 */
async function plugBack(core: WorkspaceCore, ws: Workspace, vm: VmRef): Promise<void> {
  const { backend } = core.ctx;
  const config = await backend.getConfig(vm);
  const keys = referencingKeys(config, ws.volid);
  if (keys.includes(WORKSPACE_SLOT)) return;
  const occupied = config[WORKSPACE_SLOT];
  if (occupied !== undefined) {
    throw new AgentlabError(
      "CONFLICT",
      `sandbox ${vm.vmid} has another disk in ${WORKSPACE_SLOT} (${occupied}); workspace ${ws.name} cannot go back there`,
      { details: { vmid: vm.vmid, slot: WORKSPACE_SLOT, value: String(occupied) } },
    );
  }
  await backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) }, keys);
  if (!referencingKeys(await backend.getConfig(vm), ws.volid).includes(WORKSPACE_SLOT)) {
    throw new AgentlabError(
      "PROXMOX_ERROR",
      `sandbox ${vm.vmid}'s config does not show workspace ${ws.name} after putting it back`,
      { details: { vmid: vm.vmid, volid: ws.volid } },
    );
  }
}

/**
 * Start-up recovery of a revert the daemon did not finish: the workspace is still recorded attached,
 * so its drive goes back into the sandbox (after any task the dead daemon left running). A VM that is
 * gone leaves only the record to fix.
 */
export async function recoverRevert(
  core: WorkspaceCore,
  recovery: WorkspaceRecovery,
  op: WorkspaceOp,
  operation: Operation,
): Promise<RecoveryResult> {
  const { store, config } = core.ctx;
  const close = (commit?: () => void) =>
    store.tx(() => {
      commit?.();
      core.endOp(op);
    });
  const ws = store.workspaces.get(op.workspace_id);
  if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
  const vmid = Number(op.params.vmid);
  if (ws.attached_vmid !== vmid) {
    close();
    return {
      outcome: "closed",
      message: `the workspace is no longer recorded as attached to sandbox ${vmid}`,
    };
  }
  const vm: VmRef = {
    vmid,
    node: typeof op.params.node === "string" ? op.params.node : (ws.node ?? config.proxmox_node),
  };
  await recovery.waitForTasks(vm, operation);
  try {
    await plugBack(core, ws, vm);
  } catch (error) {
    if (!isVmNotFound(error)) throw error;
    close(() => recordDetached(core, ws, vmid));
    return { outcome: "closed", message: `sandbox ${vmid}'s VM is gone; the workspace is recorded detached` };
  }
  close(() =>
    core.event(
      ws,
      "workspace.kept_across_revert",
      `put back into sandbox ${vmid} after an interrupted revert`,
      {
        vmid,
      },
    ),
  );
  return { outcome: "committed", message: `workspace put back into sandbox ${vmid} as ${WORKSPACE_SLOT}` };
}
