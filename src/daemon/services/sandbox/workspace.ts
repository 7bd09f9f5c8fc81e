/**
 * What sandbox operations must know about workspaces (docs/workspaces-design.md §5.5): a sandbox only
 * ever references a workspace volume that its holder VM owns, so destroying the sandbox can never free
 * it; these helpers keep the references and the records tidy around that rule.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { VmConfig, VmRef } from "../../proxmox/types.js";
import { sandboxLeaseOwner, sessionLeaseOwner } from "../../store/leases.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { RevertGuard } from "../workspaces/across-revert.js";
import { isVolumeKey, referencingKeys } from "../workspaces/core.js";

/** What provisioning needs from the workspace service (bound once both services exist). */
export interface SandboxWorkspaces {
  /** attachWorkspace: scsi1 → the holder's volume, with the attachment lease under `leaseOwner`. */
  attach(
    ref: string,
    vmid: number,
    op: Operation,
    options: { leaseOwner?: string; sessionId?: string },
  ): Promise<unknown>;
  /** "session s1", "sandbox 1012", ... for the WORKSPACE_LEASE_HELD hint. */
  describeOwner(owner: string | null): string | undefined;
  /** Run a revert holding the sandbox's workspace, if it has one (workspaces/across-revert.ts). */
  acrossRevert<T>(vmid: number, work: (guard: RevertGuard | undefined) => Promise<T>): Promise<T>;
}

/** A drive of a sandbox's config whose volume another VM owns. */
export interface ForeignVolume {
  key: string;
  volid: string;
  /** The VMID that owns it, from its name. */
  owner: number;
  /** The workspace it belongs to, when agentlab knows it. */
  workspace?: Workspace;
}

/**
 * The VMID that owns a volume, read from its name the way Proxmox does: `vm-<N>-…` or `base-<N>-…` as
 * the last path element (`local:1005/vm-1005-disk-0.qcow2`, `local-zfs:base-9000-disk-0/vm-1012-disk-0`).
 */
export function volumeOwner(volid: string): number | undefined {
  const name = volid.slice(volid.indexOf(":") + 1);
  const match = /(?:^|\/)(?:vm|base)-(\d+)-[^/]*$/.exec(name);
  return match ? Number(match[1]) : undefined;
}

/**
 * Drives in `config` that reference a volume owned by a VM other than `vmid` (a workspace, or anything
 * an operator attached by hand). A VM snapshot would cover them too (design F4, invariant I4).
 */
export function foreignVolumes(ctx: DaemonContext, config: VmConfig, vmid: number): ForeignVolume[] {
  const found: ForeignVolume[] = [];
  let workspaces: Workspace[] | undefined;
  for (const key of Object.keys(config).sort()) {
    if (!isVolumeKey(key)) continue;
    const value = String(config[key]);
    if (/(^|,)media=cdrom(,|$)/.test(value)) continue;
    const volid = value.split(",")[0]?.trim() ?? "";
    if (!volid.includes(":")) continue;
    const owner = volumeOwner(volid);
    if (owner === undefined || owner === vmid) continue;
    workspaces ??= ctx.store.workspaces.list();
    const workspace = workspaces.find((ws) => ws.volid === volid);
    found.push({ key, volid, owner, ...(workspace ? { workspace } : {}) });
  }
  return found;
}

/**
 * The refusal of a VM snapshot (save or restore) of a sandbox whose config, or whose snapshot's config,
 * references a workspace: refused even with --force, because rolling back would roll the workspace back
 * too (or drop scsi1 behind the database's back).
 */
export function workspaceSnapshotRefusal(
  ctx: DaemonContext,
  vmid: number,
  foreign: ForeignVolume[],
  where: "config" | { snapshot: string },
): AgentlabError {
  const first = foreign[0]!;
  const named = first.workspace ? `workspace ${first.workspace.name}` : `a disk of VM ${first.owner}`;
  const list = foreign.map((f) => `${f.key}: ${f.volid}`).join(", ");
  const session = first.workspace ? ctx.store.sessions.byCurrentVmid(vmid) : undefined;
  const message =
    where === "config"
      ? `sandbox ${vmid} has ${named} attached (${list}); a VM snapshot would cover it too, so snapshots are refused even with --force`
      : `snapshot "${where.snapshot}" of sandbox ${vmid} includes ${named} (${list}); rolling back to it would roll that disk back too, so it is refused even with --force`;
  const fix = first.workspace
    ? session
      ? `stop the session first: agentlab session stop ${session.name} (or agentlab workspace detach ${first.workspace.name}); workspaces have their own snapshots: agentlab workspace snapshot create ${first.workspace.name} <name>`
      : `detach it first: agentlab workspace detach ${first.workspace.name}; workspaces have their own snapshots: agentlab workspace snapshot create ${first.workspace.name} <name>`
    : `detach it first: qm set ${vmid} --delete ${first.key} (the volume belongs to VM ${first.owner})`;
  return new AgentlabError("WORKSPACE_ATTACHED", message, {
    hint:
      where === "config" ? fix : `restore another snapshot; this one was taken while the disk was attached`,
    details: {
      vmid,
      disks: foreign.map((f) => ({
        key: f.key,
        volid: f.volid,
        owner_vmid: f.owner,
        ...(f.workspace ? { workspace: f.workspace.name, workspace_id: f.workspace.id } : {}),
      })),
      ...(typeof where === "object" ? { snapshot: where.snapshot } : {}),
    },
  });
}

/**
 * Drop every reference the sandbox's VM holds to a workspace volume (`delete=<key>`, never force=1:
 * invariant I3), before the VM is destroyed. Not needed for safety (the sandbox never owns the volume,
 * design F1), so a failure is only logged. Returns true when no reference is left (or the VM is gone).
 */
export async function unplugWorkspaces(ctx: DaemonContext, vm: VmRef): Promise<boolean> {
  const volids = new Set<string>();
  const attached = ctx.store.workspaces.byAttachedVmid(vm.vmid);
  if (attached) volids.add(attached.volid);
  try {
    const config = await ctx.backend.getConfig(vm);
    for (const f of foreignVolumes(ctx, config, vm.vmid)) if (f.workspace) volids.add(f.volid);
    const keys = [...volids].flatMap((volid) => referencingKeys(config, volid));
    if (keys.length === 0) return true;
    await ctx.backend.setConfig(vm, {}, keys);
    const after = await ctx.backend.getConfig(vm);
    return [...volids].every((volid) => referencingKeys(after, volid).length === 0);
  } catch (error) {
    if (isVmNotFound(error)) return true;
    ctx.log.warn(
      { vmid: vm.vmid, err: error },
      `could not drop the workspace reference from VM ${vm.vmid} before destroying it: ${describe(error)}; the workspace is safe (the sandbox does not own its volume)`,
    );
    return false;
  }
}

/**
 * The records side of a sandbox leaving service (DESTROYED, or its provisioning rolled back): its
 * workspace is recorded detached (last_attached_vmid = vmid), the attachment lease is released
 * (`sandbox:<vmid>`, or the session's whose sandbox it was, plus `alsoRelease`), and the session forgets
 * it (current_vmid = NULL). Call inside the transaction that moves the sandbox. Returns the workspace
 * that was detached, if any.
 */
export function releaseSandboxWorkspace(
  ctx: DaemonContext,
  vmid: number,
  options: { alsoRelease?: string } = {},
): Workspace | undefined {
  const { store } = ctx;
  return store.tx(() => {
    const session = store.sessions.byCurrentVmid(vmid);
    const owners = new Set([sandboxLeaseOwner(vmid)]);
    if (session) owners.add(sessionLeaseOwner(session.id));
    if (options.alsoRelease) owners.add(options.alsoRelease);
    const attached = store.workspaces.byAttachedVmid(vmid);
    let detached: Workspace | undefined;
    if (attached) {
      detached = store.workspaces.detach(attached.id, vmid);
      store.events.append({
        kind: "workspace.detached",
        workspace_id: attached.id,
        sandbox_vmid: vmid,
        msg: `detached from sandbox ${vmid}, which left service`,
        payload: { vmid },
      });
    }
    for (const ws of store.workspaces.listLeased()) {
      // Only this sandbox's attachment leases: a session's counts only while this is its sandbox.
      if (!ws.lease_owner || !ws.lease_nonce || !owners.has(ws.lease_owner)) continue;
      store.workspaceLeases.release(ws.id, ws.lease_owner, ws.lease_nonce);
      store.events.append({
        kind: "workspace.lease.released",
        workspace_id: ws.id,
        msg: `lease ${ws.lease_owner} released: sandbox ${vmid} left service`,
        payload: { owner: ws.lease_owner, vmid },
      });
    }
    store.sessions.clearCurrentVmid(vmid);
    return detached;
  });
}
