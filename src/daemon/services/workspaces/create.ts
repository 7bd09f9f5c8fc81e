import { AgentlabError } from "../../../protocol/errors.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import { WORKSPACE_LABEL } from "../../guest/cloud-init.js";
import type { VmRef } from "../../proxmox/types.js";
import type { Workspace } from "../../store/workspaces.js";
import type { Operation } from "../operation.js";
import type { VmidAllocator } from "../sandbox/vmid-allocator.js";
import { driveVolid, HOLDER_TAG, type WorkspaceCore, workspaceJson } from "./core.js";
import { hostToolsFor } from "./host.js";
import { expectedVolid, requireWorkspaceStorage } from "./storage.js";
import { openVolume, workspaceNode } from "./volume.js";

/** The label the guest mounts at /work (src/daemon/guest/cloud-init.ts): one constant for both sides. */
export const WORKSPACE_FS_LABEL = WORKSPACE_LABEL;

export interface CreateWorkspaceParams {
  name: string;
  size_gb: number;
  storage?: string | undefined;
}

/** What the holder VM's description says, so nobody destroys it by hand thinking it is junk. */
export function holderDescription(name: string): string {
  return `agentlab workspace holder for "${name}": owns the workspace disk. Do not start or destroy it; use agentlab workspace destroy ${name}.`;
}

/** The holder VM's config (design §3.2): one disk, never started, protected, tagged agentlab-ws. */
export function holderParams(name: string): Record<string, string | number> {
  return {
    name: `ws-${name}`,
    onboot: 0,
    protection: 1,
    tags: HOLDER_TAG,
    description: holderDescription(name),
  };
}

/**
 * Best-effort removal of a holder this operation created: protection off, then destroy with purge.
 * Used only when the holder is provably ours (its create task succeeded for this row).
 */
export async function removeHolder(core: WorkspaceCore, vm: VmRef): Promise<void> {
  const { backend } = core.ctx;
  await backend.setConfig(vm, {}, ["protection"]);
  await backend.destroy(vm, { purge: true });
}

/**
 * `workspace create` (design §5.1): the row and the holder VMID are reserved first, then the holder VM is
 * created with its one disk, the disk is formatted when host tools can reach it, and the row is committed.
 */
export async function createWorkspace(
  core: WorkspaceCore,
  allocator: VmidAllocator,
  params: CreateWorkspaceParams,
  op: Operation,
): Promise<WorkspaceJson> {
  const { ctx } = core;
  const { store, backend } = ctx;
  if (store.workspaces.getByName(params.name)) {
    throw new AgentlabError("CONFLICT", "workspace already exists", {
      hint: `pick another name, or use it: agentlab workspace show ${params.name}`,
      details: { name: params.name },
    });
  }
  const storage = params.storage ?? ctx.config.workspace_storage;
  const node = await workspaceNode(ctx);
  const info = await requireWorkspaceStorage(ctx, node, storage);
  const cluster = await backend.listVms();
  const { row, intent } = await allocator.reserve(undefined, cluster, (vmid) =>
    store.tx(() => {
      const inserted = store.workspaces.insert({
        name: params.name,
        node,
        storage,
        storage_type: info.type,
        volid: expectedVolid(storage, info.type, vmid),
        format: info.type === "dir" ? "qcow2" : "raw",
        size_gb: params.size_gb,
        holder_vmid: vmid,
        state: "creating",
      });
      return {
        row: inserted,
        intent: core.beginOp(inserted, "create", { holder_vmid: vmid }, { lease: "create" }),
      };
    }),
  );
  const holder: VmRef = { vmid: row.holder_vmid!, node };
  let holderCreated = false;
  core.step(
    op,
    row,
    "reserve",
    `reserved holder VM ${holder.vmid} on node ${node} for workspace ${row.name}`,
  );
  return core
    .withOp(
      intent,
      async () => {
        core.step(
          op,
          row,
          "create-holder",
          `creating holder VM ${holder.vmid} with a ${params.size_gb}G disk on ${storage}`,
        );
        await backend.createVm(
          node,
          holder.vmid,
          {
            ...holderParams(row.name),
            scsihw: "virtio-scsi-pci",
            scsi0: `${storage}:${params.size_gb}${info.type === "dir" ? ",format=qcow2" : ""}`,
          },
          { signal: op.signal },
        );
        holderCreated = true;
        core.setStep(intent, "created");
        const config = await backend.getConfig(holder);
        const volid = driveVolid(config.scsi0);
        if (!volid)
          throw new AgentlabError("INTERNAL", `holder VM ${holder.vmid} has no scsi0 after its creation`);
        const volume = await backend.volumeInfo(node, volid);
        const formatted = await formatIfPossible(core, { ...row, volid });
        return { volid, format: volume.format ?? row.format, formatted };
      },
      {
        commit: (done) => {
          store.workspaces.update(row.id, { state: "ready", volid: done.volid, format: done.format ?? null });
          core.event(
            row,
            "workspace.created",
            `workspace ${row.name} created on ${storage} (holder VM ${holder.vmid})`,
            {
              holder_vmid: holder.vmid,
              volid: done.volid,
              size_gb: params.size_gb,
              formatted: done.formatted,
            },
          );
          core.step(op, row, "ready", `workspace ${row.name} is ready (${done.volid})`);
        },
        undo: async (error) => {
          op.log.warn(
            { err: error, workspace: row.name, holder_created: holderCreated },
            "workspace create failed",
          );
          if (holderCreated) {
            try {
              await removeHolder(core, holder);
            } catch (cleanup) {
              // The row stays, broken, naming the VM: deleting it would orphan a VM that owns a disk.
              store.workspaces.update(row.id, {
                state: "broken",
                broken_reason: `create failed and holder VM ${holder.vmid} could not be removed: ${(cleanup as Error).message}`,
              });
              return;
            }
          }
          store.workspaces.delete(row.id);
        },
      },
    )
    .then(() => workspaceJson(core.reload(row.id)));
}

/**
 * Put an ext4 filesystem labelled AGENTLAB_WORK on a brand-new volume when this host can reach it, so
 * the guest finds /work ready; otherwise the guest's first boot formats the blank disk (design §12.2).
 * Never called on a volume that may hold data. qcow2 files need an nbd export, which is not set up here.
 */
export async function formatIfPossible(core: WorkspaceCore, ws: Workspace): Promise<boolean> {
  if (ws.storage_type === "dir" || ws.node === null) return false;
  const access = await hostToolsFor(core.ctx, ws.node);
  if (!access.tools) return false;
  const device = await openVolume(core.ctx, ws, access.tools);
  try {
    await access.tools.mkfsExt4(device.device, WORKSPACE_FS_LABEL);
  } finally {
    await device.undo();
  }
  return true;
}
