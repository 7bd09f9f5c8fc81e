/**
 * `workspace fork <ws> --name N [--from-snapshot S]` (design §7): a new workspace, with its own holder VM
 * F from the daemon's one VMID allocator, holding a copy of the source's current state or of one of its
 * snapshots. Copy-on-write where stock Proxmox allows it safely (lvmthin linked clone; zfs clone on the
 * host), a full copy otherwise; the result says which in copy_mode. No step writes the source's data,
 * and a failure removes only what this fork created.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import { type HostTools, resolveProgram } from "../../host/host-tools.js";
import type { VmRef } from "../../proxmox/types.js";
import type { WorkspaceOp } from "../../store/workspace-ops.js";
import type { CopyMode, Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { VmidAllocator } from "../sandbox/vmid-allocator.js";
import { driveVolid, HOLDER_TAG, type WorkspaceCore, workspaceJson } from "./core.js";
import { holderDescription } from "./create.js";
import { hostToolsFor } from "./host.js";
import {
  beginLeased,
  prechecked,
  RESERVED_SNAPSHOT_PREFIX,
  requireHolderSnapshot,
  requireHolderStopped,
} from "./snapshots.js";
import { expectedVolid, requireSnapshotCapable } from "./storage.js";
import { volumeName } from "./volume.js";

export interface ForkParams {
  name: string;
  from_snapshot?: string | undefined;
}

/** How this fork copies, decided from the storage type and the host tools before anything changes. */
type ForkPlan =
  | { path: "linked-clone"; copy_mode: "cow" }
  | { path: "zfs-clone"; copy_mode: "cow"; tools: HostTools }
  | { path: "full-clone"; copy_mode: "full"; format?: "qcow2" };

/** The internal snapshot a fork of the current state is made from (design §7.2, §7.3). */
export function forkBaseSnapshot(forkVmid: number): string {
  return `${RESERVED_SNAPSHOT_PREFIX}fork-${forkVmid}`;
}

/**
 * Which path stock Proxmox offers for this storage (design §7): lvmthin clones linked from a snapshot;
 * zfspool needs `zfs clone` on the host for copy-on-write and has no API path at all from a snapshot;
 * dir (qcow2) copies in full, from a snapshot too.
 */
async function planFork(
  core: WorkspaceCore,
  src: Workspace,
  fromSnapshot: string | undefined,
): Promise<ForkPlan> {
  switch (src.storage_type) {
    case "lvmthin":
      return { path: "linked-clone", copy_mode: "cow" };
    case "dir":
      return { path: "full-clone", copy_mode: "full", format: "qcow2" };
    case "zfspool": {
      const node = core.holder(src).node;
      const access = await hostToolsFor(core.ctx, node);
      let reason = access.tools ? undefined : access.reason;
      if (access.tools && resolveProgram("zfs", process.env.PATH) === undefined) {
        reason = "zfs is not installed on this host (apt install zfsutils-linux)";
      }
      if (access.tools && reason === undefined)
        return { path: "zfs-clone", copy_mode: "cow", tools: access.tools };
      if (fromSnapshot === undefined) return { path: "full-clone", copy_mode: "full" };
      throw new AgentlabError(
        "HOST_TOOLS_UNAVAILABLE",
        `fork from a snapshot on zfspool storage needs zfs on node ${node}; run agentlabd on ${node}, or fork without --from-snapshot (full copy of the current state)`,
        {
          hint: `host tools are unavailable here: ${reason}`,
          details: { workspace_id: src.id, storage: src.storage, node, reason },
        },
      );
    }
    default:
      // requireSnapshotCapable has refused every other type already.
      throw new AgentlabError("INTERNAL", `no fork path for storage type ${src.storage_type ?? "unknown"}`);
  }
}

function workspaceExists(name: string): AgentlabError {
  return new AgentlabError("CONFLICT", "workspace already exists", {
    hint: `pick another name for the fork, or use the existing one: agentlab workspace show ${name}`,
    details: { name },
  });
}

/** What the fork has made so far, so a failure removes exactly that. */
interface Made {
  /** The internal snapshot on the source's holder, when this fork took one. */
  baseSnapshot?: string;
  /** Our createVm/clone of F returned: F is ours to remove. */
  holder: boolean;
  /** The lvmthin internal snapshot is gone again. */
  baseDropped: boolean;
  /** zfspool: `zfs clone` made vm-F-disk-0, which F owns by name before its config references it. */
  dataset: boolean;
}

export async function forkWorkspace(
  core: WorkspaceCore,
  allocator: VmidAllocator,
  ref: string,
  params: ForkParams,
  op: Operation,
): Promise<WorkspaceJson> {
  const { ctx } = core;
  const { store, backend } = ctx;
  const fromSnapshot = params.from_snapshot;
  if (store.workspaces.getByName(params.name)) throw workspaceExists(params.name);
  const initial = core.require(ref);
  core.requireDetached(initial, "fork");
  core.requireReady(initial);
  requireSnapshotCapable(initial);
  const plan = await planFork(core, initial, fromSnapshot);

  const { ws: src, intent } = beginLeased(core, initial.id, {
    verb: "fork",
    kind: "fork",
    lease: "fork",
    check: requireSnapshotCapable,
    params: () => ({ name: params.name, from_snapshot: fromSnapshot ?? null, path: plan.path }),
  });
  const holder = core.holder(src);
  const node = holder.node;
  return core.exclusive(src, async () => {
    let fork!: Workspace;
    let forkOp!: WorkspaceOp;
    let pool: string | undefined;
    await prechecked(core, intent, async () => {
      await requireHolderStopped(core, src, holder);
      if (fromSnapshot !== undefined) await requireHolderSnapshot(core, src, fromSnapshot);
      if (plan.path === "zfs-clone") pool = await zfsPool(core, src);
      const cluster = await backend.listVms();
      ({ fork, forkOp } = await allocator.reserve(undefined, cluster, (vmid) =>
        store.tx(() => {
          const row = store.workspaces.insert({
            name: params.name,
            node,
            storage: src.storage,
            storage_type: src.storage_type,
            volid: expectedVolid(src.storage, src.storage_type ?? "", vmid),
            format: src.format,
            size_gb: src.size_gb,
            holder_vmid: vmid,
            state: "creating",
            forked_from: src.id,
            fork_origin_snapshot: fromSnapshot ?? null,
            copy_mode: plan.copy_mode,
          });
          // The fork's own intent, naming the source's, so recovery can finish or undo it from either row.
          const begun = store.workspaceOps.begin({
            workspace_id: row.id,
            kind: "fork",
            step: "begin",
            params: {
              source_id: src.id,
              source_op_id: intent.id,
              source_lease_owner: intent.lease_owner,
              from_snapshot: fromSnapshot ?? null,
              path: plan.path,
            },
          });
          core.setStep(intent, "reserved", { fork_id: row.id, fork_holder_vmid: vmid });
          return { fork: row, forkOp: begun };
        }),
      ));
    });
    const target: VmRef = { vmid: fork.holder_vmid!, node };
    const made: Made = { holder: false, baseDropped: false, dataset: false };
    core.step(
      op,
      fork,
      "reserve",
      `reserved holder VM ${target.vmid} for fork ${fork.name} of workspace ${src.name}`,
    );

    const result = await core
      .withOp(
        intent,
        async () => {
          const origin =
            fromSnapshot ?? (plan.path === "full-clone" ? undefined : forkBaseSnapshot(target.vmid));
          if (origin !== undefined && fromSnapshot === undefined)
            await takeBaseSnapshot(core, src, holder, origin, made, intent, op);
          const description = holderDescription(fork.name);
          if (plan.path === "linked-clone") {
            core.step(
              op,
              fork,
              "clone",
              `linked clone of holder VM ${holder.vmid} at snapshot ${origin} as VM ${target.vmid}`,
            );
            await backend.clone(
              holder,
              target.vmid,
              { name: `ws-${fork.name}`, full: false, snapname: origin!, description },
              { signal: op.signal },
            );
            made.holder = true;
            core.setStep(intent, "cloned");
            await backend.setConfig(target, { protection: 1, tags: HOLDER_TAG, onboot: 0 });
            if (fromSnapshot === undefined) await dropBaseSnapshot(core, src, holder, origin!, made, op);
          } else if (plan.path === "zfs-clone") {
            core.step(op, fork, "create-holder", `creating holder VM ${target.vmid} without a disk`);
            await backend.createVm(
              node,
              target.vmid,
              {
                name: `ws-${fork.name}`,
                onboot: 0,
                tags: HOLDER_TAG,
                description,
                scsihw: "virtio-scsi-pci",
              },
              { signal: op.signal },
            );
            made.holder = true;
            const originDataset = `${pool}/${volumeName(src.volid)}@${origin}`;
            const dataset = `${pool}/vm-${target.vmid}-disk-0`;
            core.setStep(intent, "zfs-clone", { dataset, origin: originDataset });
            core.step(op, fork, "zfs-clone", `zfs clone ${originDataset} ${dataset}`);
            await plan.tools.zfsClone(originDataset, dataset);
            made.dataset = true;
            await backend.setConfig(target, {
              scsi0: `${src.storage}:vm-${target.vmid}-disk-0`,
              protection: 1,
            });
          } else {
            const from = fromSnapshot !== undefined ? ` at snapshot ${fromSnapshot}` : "";
            core.step(op, fork, "clone", `full copy of holder VM ${holder.vmid}${from} as VM ${target.vmid}`);
            await backend.clone(
              holder,
              target.vmid,
              {
                name: `ws-${fork.name}`,
                full: true,
                description,
                ...(plan.format ? { format: plan.format } : {}),
                ...(fromSnapshot !== undefined ? { snapname: fromSnapshot } : {}),
              },
              { signal: op.signal },
            );
            made.holder = true;
            core.setStep(intent, "cloned");
            await backend.setConfig(target, { protection: 1, tags: HOLDER_TAG, onboot: 0 });
          }
          const config = await backend.getConfig(target);
          const volid = driveVolid(config.scsi0);
          if (!volid)
            throw new AgentlabError("INTERNAL", `fork holder VM ${target.vmid} has no scsi0 after the copy`);
          const volume = await backend.volumeInfo(node, volid);
          return {
            volid,
            format: volume.format ?? fork.format,
            origin: plan.path === "zfs-clone" ? origin : fromSnapshot,
          };
        },
        {
          commit: (done) => {
            store.workspaces.update(fork.id, {
              state: "ready",
              volid: done.volid,
              format: done.format ?? null,
              copy_mode: plan.copy_mode as CopyMode,
              fork_origin_snapshot: done.origin ?? null,
            });
            store.workspaceOps.finish(forkOp.id);
            if (made.baseSnapshot && made.baseDropped)
              store.workspaceSnapshots.delete(src.id, made.baseSnapshot);
            const how = plan.copy_mode === "cow" ? "copy-on-write" : "full copy";
            const from = done.origin ? ` at snapshot ${done.origin}` : "";
            const payload = {
              source_id: src.id,
              fork_id: fork.id,
              holder_vmid: target.vmid,
              copy_mode: plan.copy_mode,
              from_snapshot: done.origin ?? null,
            };
            core.event(
              fork,
              "workspace.fork.completed",
              `workspace ${fork.name} forked from ${src.name}${from} (${how})`,
              payload,
            );
            core.event(
              src,
              "workspace.fork.completed",
              `workspace ${src.name} forked as ${fork.name}${from} (${how})`,
              payload,
            );
            core.step(op, fork, "ready", `workspace ${fork.name} is ready (${done.volid}, ${how})`);
          },
          undo: (error) => undoFork(core, src, holder, fork, forkOp, target, made, error, op),
        },
      )
      .then(() => workspaceJson(core.reload(fork.id)));
    return result;
  });
}

/** The dataset zfspool volumes live under: the storage's `pool`, else the `/dev/zvol/` prefix of the path. */
async function zfsPool(core: WorkspaceCore, ws: Workspace): Promise<string> {
  const config = await core.ctx.backend.storageConfig(ws.storage);
  if (config.pool) return config.pool;
  const path = (await core.ctx.backend.volumeInfo(core.holder(ws).node, ws.volid)).path;
  const at = path.lastIndexOf("/dev/zvol/");
  if (at >= 0) return path.slice(at + "/dev/zvol/".length, path.lastIndexOf("/"));
  throw new AgentlabError("PROXMOX_ERROR", `cannot tell the ZFS dataset of storage ${ws.storage}`, {
    hint: `check its pool: pvesh get /storage/${ws.storage}`,
    details: { storage: ws.storage, path },
  });
}

async function takeBaseSnapshot(
  core: WorkspaceCore,
  src: Workspace,
  holder: VmRef,
  name: string,
  made: Made,
  intent: WorkspaceOp,
  op: Operation,
): Promise<void> {
  const { store, backend } = core.ctx;
  store.workspaceSnapshots.insert({ workspace_id: src.id, name, state: "creating", kind: "fork-base" });
  made.baseSnapshot = name;
  core.setStep(intent, "base-snapshot", { base_snapshot: name });
  core.step(op, src, "base-snapshot", `snapshotting holder VM ${holder.vmid} as ${name} to fork from`);
  await backend.snapshotCreate(holder, name, `agentlab: base of a fork of ${src.name}`, {
    signal: op.signal,
  });
  const taken = (await backend.snapshotList(holder)).find((s) => s.name === name);
  store.workspaceSnapshots.markReady(
    src.id,
    name,
    taken?.snaptime !== undefined ? new Date(taken.snaptime * 1000) : undefined,
  );
}

/**
 * lvmthin: the thin clone does not depend on the snapshot it came from, so the internal one goes
 * (design §7.2 step 4). If that fails the fork still stands; the snapshot stays listed as fork-base.
 */
async function dropBaseSnapshot(
  core: WorkspaceCore,
  src: Workspace,
  holder: VmRef,
  name: string,
  made: Made,
  op: Operation,
): Promise<void> {
  try {
    await core.ctx.backend.snapshotDelete(holder, name, { signal: op.signal });
    made.baseDropped = true;
  } catch (error) {
    op.log.warn(
      { err: error, workspace: src.name, snapshot: name },
      "could not delete the internal fork snapshot; it stays on the source",
    );
  }
}

/**
 * Undo a failed fork: remove the holder F this fork made (its destroy frees vm-F-disk-0, which F owns by
 * name, the zfs clone included), then the internal snapshot on the source, then the new row. What cannot
 * be removed is left in a `broken` row naming it, never silently orphaned. The source's data is never
 * touched: only F's volume and an internal snapshot this fork took are removed.
 */
async function undoFork(
  core: WorkspaceCore,
  src: Workspace,
  holder: VmRef,
  fork: Workspace,
  forkOp: WorkspaceOp,
  target: VmRef,
  made: Made,
  error: unknown,
  op: Operation,
): Promise<void> {
  const { store, backend } = core.ctx;
  op.log.warn({ err: error, workspace: src.name, fork: fork.name }, "workspace fork failed; rolling back");
  let leftover: string | undefined;
  if (made.holder) {
    try {
      // Proxmox frees the disks in F's config either way. Only a zfs clone that F's config does not
      // reference yet needs the unreferenced-disk scan, and only then is it run: the scan frees every
      // volume named for F, and a volume named so before this fork began is not this fork's to free.
      await backend.setConfig(target, {}, ["protection"]);
      await backend.destroy(target, { purge: made.dataset });
    } catch (cleanup) {
      if (!isVmNotFound(cleanup))
        leftover = `holder VM ${target.vmid} could not be removed: ${describe(cleanup)}`;
    }
  } else {
    // Our create/clone did not report success: a VM with this VMID may be half-made by Proxmox, or
    // someone else's. Either way it is not removed blindly.
    try {
      await backend.status(target);
      leftover = `VM ${target.vmid} exists after the failed copy; check it (qm config ${target.vmid}) before removing it`;
    } catch (probe) {
      if (!isVmNotFound(probe))
        leftover = `could not tell whether VM ${target.vmid} exists: ${describe(probe)}`;
    }
  }
  if (made.baseSnapshot && !made.baseDropped && leftover === undefined) {
    try {
      if ((await backend.snapshotList(holder)).some((s) => s.name === made.baseSnapshot)) {
        await backend.snapshotDelete(holder, made.baseSnapshot);
      }
      store.workspaceSnapshots.delete(src.id, made.baseSnapshot);
    } catch (cleanup) {
      op.log.warn(
        { err: cleanup, workspace: src.name, snapshot: made.baseSnapshot },
        "could not delete the internal fork snapshot",
      );
    }
  } else if (made.baseSnapshot && made.baseDropped) {
    store.workspaceSnapshots.delete(src.id, made.baseSnapshot);
  }
  const payload = {
    source_id: src.id,
    fork_name: fork.name,
    holder_vmid: target.vmid,
    error: describe(error),
  };
  store.tx(() => {
    core.event(
      src,
      "workspace.fork.failed",
      `fork ${fork.name} of workspace ${src.name} failed: ${describe(error)}`,
      payload,
    );
    if (leftover === undefined) {
      store.workspaces.delete(fork.id);
      return;
    }
    store.workspaceOps.finish(forkOp.id);
    store.workspaces.update(fork.id, { state: "broken", broken_reason: `fork failed and ${leftover}` });
    core.event(fork, "workspace.broken", `fork ${fork.name} failed and ${leftover}`, payload);
  });
}
