/**
 * `workspace check <ws>` (design §5.4): a read-only drift report between the database, the holder VM,
 * the volume and every VM config on the workspace's node that references the volume. Facts are read
 * first (gatherCheckFacts); the findings are a pure function of them (workspaceFindings), each with its
 * severity and the command that fixes it. Nothing is changed.
 */
import type { WorkspaceFinding } from "../../../protocol/workspace.js";
import type { ClusterVm, SnapshotInfo, StorageInfo, VmConfig, VmStatus } from "../../proxmox/types.js";
import type { Sandbox } from "../../store/sandboxes.js";
import type { WorkspaceOp } from "../../store/workspace-ops.js";
import type { WorkspaceSnapshotRecord } from "../../store/workspace-snapshots.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import { mapLimit } from "../map-limit.js";
import {
  DISK_KEY,
  driveVolid,
  HOLDER_TAG,
  isVolumeKey,
  UNUSED_KEY,
  WORKSPACE_SLOT,
  type WorkspaceCore,
  workspaceJson,
} from "./core.js";
import { type LeaseLiveness, leaseLiveness } from "./lease-keeper.js";
import { volumeName } from "./volume.js";

/** Config keys through which a VM uses a disk (unusedN only lists it). */
/** How many VM configs the reference scan reads at once (the shell backend spawns one pvesh each). */
const SCAN_CONCURRENCY = 8;

/** One VM config key whose first comma field is the workspace's volid. */
export interface VolumeReference {
  vmid: number;
  name?: string;
  /** running, stopped, ... as the cluster list says. */
  state: string;
  key: string;
}

export interface CheckFacts {
  ws: Workspace;
  now: Date;
  /** The op row, and whether this daemon is running it (or recovering it) right now. */
  op?: { kind: string; step: string; created_at: Date; running: boolean };
  lease: LeaseLiveness;
  /** undefined: the storage is not configured on the node. */
  storage?: StorageInfo;
  /** undefined when the workspace has no holder VMID recorded. */
  holder?: { found: false } | { found: true; config: VmConfig; status: VmStatus; activeTasks: number };
  volume: { found: true } | { found: false; error: string };
  holderSnapshots: SnapshotInfo[];
  snapshotRecords: WorkspaceSnapshotRecord[];
  /** References from VMs other than the holder, from the scan of every VM on the node. */
  references: VolumeReference[];
  /** VMs whose config could not be read during the scan. */
  unreadable: Array<{ vmid: number; error: string }>;
  /** The DB-attached VM: whether it exists in the cluster (its references are among `references`). */
  attached?: { vmid: number; exists: boolean; node?: string };
  /** The sandbox row of attached_vmid, if any. */
  attachedSandbox?: Sandbox;
  /** Sandbox rows whose workspace_id names this workspace. */
  claimingSandboxes: Sandbox[];
  /** VMIDs of the sandboxes agentlab has a live (not DESTROYED) record of: only those can be attached. */
  liveSandboxes: number[];
  /** ZFS: volumes cloned from a snapshot of this workspace's volume. */
  forkDependents: Array<{ volid: string; parent: string; vmid?: number; workspace?: string }>;
  /** Shell commands need the database path for the one record no CLI command repairs. */
  dbPath: string;
}

function finding(
  code: string,
  severity: WorkspaceFinding["severity"],
  message: string,
  fix?: string,
): WorkspaceFinding {
  return { code, severity, message, ...(fix ? { fix } : {}) };
}

function vmLabel(ref: { vmid: number; name?: string }): string {
  return `VM ${ref.vmid}${ref.name ? ` (${ref.name})` : ""}`;
}

/** `qm shutdown V && ` for a VM that runs: removing a disk from a running guest unplugs a mounted filesystem. */
function shutdownFirst(ref: VolumeReference): string {
  return ref.state === "stopped" ? "" : `qm shutdown ${ref.vmid} && `;
}

/**
 * The findings of design §5.4, in the table's order, from facts alone. Every `fix` is a command that
 * works as printed (or says plainly that none is needed or none exists).
 */
export function workspaceFindings(facts: CheckFacts): WorkspaceFinding[] {
  const { ws } = facts;
  const n = ws.name;
  const H = ws.holder_vmid;
  const out: WorkspaceFinding[] = [];

  if (ws.state === "broken") {
    const fix = typeof ws.meta.broken_fix === "string" ? ws.meta.broken_fix : undefined;
    out.push(
      finding(
        "workspace_broken",
        "error",
        `workspace ${n} is broken: ${ws.broken_reason ?? "no reason recorded"}`,
        fix,
      ),
    );
  }

  // The holder.
  if (H === null || facts.holder === undefined) {
    out.push(
      finding(
        "holder_missing",
        "error",
        `workspace ${n} has no holder VM recorded (it predates holder VMs), so nothing in Proxmox owns its volume ${ws.volid}`,
        `none automatic: pvesm list ${ws.storage} and qm config of the VMID in the volume name (${volumeName(ws.volid)})`,
      ),
    );
  } else if (!facts.holder.found) {
    out.push(
      finding(
        "holder_missing",
        "error",
        `holder VM ${H} of workspace ${n} does not exist in Proxmox`,
        `qm create ${H} --name ws-${n} --scsi0 ${ws.volid} --protection 1 --tags ${HOLDER_TAG}`,
      ),
    );
  } else {
    const { config, status, activeTasks } = facts.holder;
    if (status.state !== "stopped") {
      out.push(
        finding(
          "holder_running",
          "error",
          `holder VM ${H} is ${status.state}: a holder never runs, and two VMs using one disk corrupt it`,
          `qm stop ${H} (first make sure no sandbox uses the disk)`,
        ),
      );
    }
    const scsi0 = driveVolid(config.scsi0);
    if (scsi0 !== ws.volid) {
      out.push(
        finding(
          "holder_disk_mismatch",
          "error",
          `holder VM ${H} has scsi0 ${scsi0 ?? "(none)"}, but workspace ${n}'s volume is ${ws.volid}`,
          `qm set ${H} --scsi0 ${ws.volid}, only after checking pvesm list ${ws.storage} --vmid ${H}`,
        ),
      );
    }
    if (String(config.protection ?? "0") !== "1") {
      out.push(
        finding(
          "holder_not_protected",
          "warning",
          `holder VM ${H} is not protected: a qm destroy of it would delete the workspace`,
          `qm set ${H} --protection 1`,
        ),
      );
    }
    if (status.lock && activeTasks === 0) {
      out.push(
        finding(
          "holder_locked",
          "warning",
          `holder VM ${H} is locked (${status.lock}) and no task is running on it`,
          `qm unlock ${H}`,
        ),
      );
    }
  }

  if (!facts.volume.found) {
    out.push(
      finding(
        "volume_missing",
        "error",
        `volume ${ws.volid} cannot be found on storage ${ws.storage}: ${facts.volume.error}`,
        `none automatic: pvesm list ${ws.storage}${H !== null ? ` --vmid ${H}` : ""}; restore from backup`,
      ),
    );
  }

  // References from VMs other than the holder.
  const drives = facts.references.filter((r) => DISK_KEY.test(r.key));
  const byVm = new Map<number, VolumeReference[]>();
  for (const ref of drives) byVm.set(ref.vmid, [...(byVm.get(ref.vmid) ?? []), ref]);
  const attachedVmid = ws.attached_vmid;

  if (attachedVmid !== null && !byVm.has(attachedVmid)) {
    const gone = facts.attached !== undefined && !facts.attached.exists;
    out.push(
      finding(
        "attached_vmid_stale",
        "warning",
        gone
          ? `the database says workspace ${n} is attached to sandbox ${attachedVmid}, but that VM no longer exists`
          : `the database says workspace ${n} is attached to sandbox ${attachedVmid}, but VM ${attachedVmid} does not reference ${ws.volid}`,
        `agentlab workspace detach ${n}${gone ? " (DB-only: the VM is gone)" : ""}`,
      ),
    );
  }

  for (const [vmid, refs] of byVm) {
    if (vmid === attachedVmid) continue;
    const first = refs[0]!;
    const keys = refs.map((r) => r.key).join(", ");
    const dropAll = refs.map((r) => `qm set ${vmid} --delete ${r.key}`).join(" && ");
    const isSandbox = facts.liveSandboxes.includes(vmid);
    const recorded =
      attachedVmid === null
        ? "the database says it is detached"
        : `the database records sandbox ${attachedVmid}`;
    out.push(
      finding(
        "attached_not_recorded",
        "error",
        `${vmLabel(first)} references workspace ${n}'s volume as ${keys}, but ${recorded}`,
        attachedVmid === null
          ? `${shutdownFirst(first)}${dropAll}${isSandbox ? `, then to keep using it there: agentlab workspace attach ${n} ${vmid}` : ""}`
          : `${shutdownFirst(first)}${dropAll} (only one VM may use the disk)`,
      ),
    );
  }

  if (byVm.size > 1) {
    const vmids = [...byVm.keys()].sort((a, b) => a - b);
    const keep = attachedVmid !== null && byVm.has(attachedVmid) ? attachedVmid : vmids[0]!;
    const drop = vmids
      .filter((v) => v !== keep)
      .map((v) => {
        const refs = byVm.get(v)!;
        return `${shutdownFirst(refs[0]!)}${refs.map((r) => `qm set ${v} --delete ${r.key}`).join(" && ")}`;
      });
    out.push(
      finding(
        "workspace_multi_attach",
        "error",
        `workspace ${n}'s volume is referenced by ${vmids.length} VMs (${vmids.join(", ")}): two VMs writing one disk corrupt it; keep ${keep}`,
        drop.join("; "),
      ),
    );
  }

  for (const ref of drives) {
    if (ref.key === WORKSPACE_SLOT) continue;
    out.push(
      finding(
        "volume_wrong_slot",
        "warning",
        `${vmLabel(ref)} references workspace ${n}'s volume as ${ref.key}, not ${WORKSPACE_SLOT}`,
        `agentlab workspace detach ${n}, then agentlab workspace attach ${n} ${ref.vmid}`,
      ),
    );
  }

  for (const ref of facts.references.filter((r) => UNUSED_KEY.test(r.key))) {
    out.push(
      finding(
        "volume_unused_entry",
        "warning",
        `${vmLabel(ref)} lists workspace ${n}'s volume as ${ref.key}; removing that entry is safe only because VM ${ref.vmid} does not own the volume`,
        `qm set ${ref.vmid} --delete ${ref.key}`,
      ),
    );
  }

  // The two records of an attachment.
  if (attachedVmid !== null && facts.attachedSandbox && facts.attachedSandbox.workspace_id !== ws.id) {
    out.push(
      finding(
        "sandbox_record_drift",
        "warning",
        `workspace ${n} records sandbox ${attachedVmid}, but sandbox ${attachedVmid}'s record names ${facts.attachedSandbox.workspace_id ? `workspace ${facts.attachedSandbox.workspace_id}` : "no workspace"}`,
        `agentlab workspace detach ${n}`,
      ),
    );
  }
  for (const row of facts.claimingSandboxes) {
    if (row.vmid === attachedVmid) continue;
    out.push(
      finding(
        "sandbox_record_drift",
        "warning",
        `sandbox ${row.vmid}'s record names workspace ${n}, but the workspace records ${attachedVmid === null ? "no sandbox" : `sandbox ${attachedVmid}`}`,
        `no agentlab command repairs this record; clear it by hand: sqlite3 ${facts.dbPath} "UPDATE sandboxes SET workspace_id = NULL WHERE vmid = ${row.vmid}"`,
      ),
    );
  }

  // Snapshots.
  if (facts.holder?.found) {
    const onHolder = new Set(facts.holderSnapshots.map((s) => s.name));
    const recorded = new Set(facts.snapshotRecords.map((r) => r.name));
    for (const record of facts.snapshotRecords) {
      if (onHolder.has(record.name)) continue;
      // A row still being made or removed belongs to the operation in flight.
      if (record.state !== "ready" && facts.op !== undefined) continue;
      out.push(
        finding(
          "snapshot_record_orphan",
          "warning",
          `the database records snapshot "${record.name}" (${record.kind}), but holder VM ${H} has no such snapshot`,
          "none needed: the next reconciler pass drops the row (event workspace.snapshot.dropped)",
        ),
      );
    }
    for (const snap of facts.holderSnapshots) {
      if (recorded.has(snap.name)) continue;
      out.push(
        finding(
          "snapshot_untracked",
          "info",
          `holder VM ${H} has snapshot "${snap.name}", which agentlab did not take`,
          `none needed: agentlab workspace snapshot list ${n} shows it as external, and it blocks ZFS restores like any other (qm delsnapshot ${H} ${snap.name} removes it if nobody needs it)`,
        ),
      );
    }
  }

  for (const dep of facts.forkDependents) {
    const owner = dep.workspace
      ? `workspace ${dep.workspace}`
      : dep.vmid !== undefined
        ? `VM ${dep.vmid}`
        : "an unknown VM";
    out.push(
      finding(
        "fork_dependency",
        "info",
        `volume ${dep.volid} (${owner}) is a ZFS clone of ${dep.parent}: workspace ${n} cannot be destroyed while it exists`,
        dep.workspace
          ? `destroy that fork first: agentlab workspace destroy ${dep.workspace}`
          : `destroy that clone first (check it with qm config ${dep.vmid ?? "<vmid>"})`,
      ),
    );
  }

  if (
    facts.lease.state === "gone" &&
    ws.lease_owner &&
    ws.lease_expires_at &&
    ws.lease_expires_at > facts.now
  ) {
    out.push(
      finding(
        "lease_owner_gone",
        "warning",
        `the lease is held by ${ws.lease_owner} until ${ws.lease_expires_at.toISOString()}, but ${facts.lease.reason}`,
        `agentlab workspace lease clear ${n}`,
      ),
    );
  }

  if (facts.op && !facts.op.running) {
    out.push(
      finding(
        "op_unfinished",
        "warning",
        `a ${facts.op.kind} operation (step ${facts.op.step}, since ${facts.op.created_at.toISOString()}) was left unfinished, and this daemon is not running it`,
        "systemctl restart agentlabd (recovery finishes it)",
      ),
    );
  }

  const storage = facts.storage;
  if (!storage?.active || !storage.enabled) {
    const what = !storage ? "not configured" : !storage.enabled ? "disabled" : "not active";
    out.push(
      finding(
        "storage_inactive",
        "error",
        `storage ${ws.storage} is ${what} on node ${ws.node ?? "?"}`,
        `pvesm status --storage ${ws.storage}`,
      ),
    );
  }

  if (facts.unreadable.length > 0) {
    out.push(
      finding(
        "reference_scan_incomplete",
        "warning",
        `the configs of ${facts.unreadable.map((u) => `VM ${u.vmid} (${u.error})`).join(", ")} could not be read, so references from them are unknown`,
        `agentlab workspace check ${n} again; qm config <vmid> shows what failed`,
      ),
    );
  }
  return out;
}

/** The name part of a ZFS parent (`local-zfs:vm-H-disk-0@s`, `rpool/data/vm-H-disk-0@s`) before the `@`. */
function parentVolume(parent: string): { volume: string; snapshot: string } | undefined {
  const at = parent.lastIndexOf("@");
  if (at < 0) return undefined;
  const base = parent.slice(0, at);
  return {
    volume: base.slice(Math.max(base.lastIndexOf("/"), base.lastIndexOf(":")) + 1),
    snapshot: parent.slice(at + 1),
  };
}

export interface CheckOptions {
  /** Whether this daemon is running (or recovering) the op row right now. */
  opRunning(op: WorkspaceOp): boolean;
}

/**
 * Read everything check needs. Proxmox answers that mean "it is not there" become facts (missing
 * holder, missing volume, gone VM); any other failure (Proxmox unreachable, permission) fails the
 * check with that error, because findings made from half the facts would mislead.
 */
export async function gatherCheckFacts(
  core: WorkspaceCore,
  ws: Workspace,
  options: CheckOptions,
): Promise<CheckFacts> {
  const { store, backend, config } = core.ctx;
  const node = ws.node ?? config.proxmox_node;
  const op = store.workspaceOps.getByWorkspace(ws.id);
  const sandboxes = store.sandboxes.list({ includeDestroyed: true });
  const vms: ClusterVm[] = await backend.listVms();
  const storages = await backend.listStorages(node);
  const facts: CheckFacts = {
    ws,
    now: core.now(),
    ...(op
      ? { op: { kind: op.kind, step: op.step, created_at: op.created_at, running: options.opRunning(op) } }
      : {}),
    lease: leaseLiveness(store, ws),
    ...(() => {
      const storage = storages.find((s) => s.storage === ws.storage);
      return storage ? { storage } : {};
    })(),
    volume: { found: true },
    holderSnapshots: [],
    snapshotRecords: store.workspaceSnapshots.list(ws.id),
    references: [],
    unreadable: [],
    claimingSandboxes: sandboxes.filter((s) => s.workspace_id === ws.id),
    liveSandboxes: sandboxes.filter((s) => s.state !== "DESTROYED").map((s) => s.vmid),
    forkDependents: [],
    dbPath: config.db_path,
  };

  if (ws.holder_vmid !== null) {
    const holder = { vmid: ws.holder_vmid, node };
    try {
      const [holderConfig, status] = await Promise.all([backend.getConfig(holder), backend.status(holder)]);
      const activeTasks = status.lock
        ? (await backend.listTasks(node, { vmid: holder.vmid, source: "active" })).filter((t) => t.running)
            .length
        : 0;
      facts.holder = { found: true, config: holderConfig, status, activeTasks };
      facts.holderSnapshots = await backend.snapshotList(holder);
    } catch (error) {
      if (!isVmNotFound(error)) throw error;
      facts.holder = { found: false };
    }
  }

  try {
    await backend.volumeInfo(node, ws.volid);
  } catch (error) {
    facts.volume = { found: false, error: describe(error).trim() };
  }

  // The reference scan: every VM on the workspace's node but the holder (design §5.4).
  const onNode = vms.filter((vm) => vm.node === node && vm.vmid !== ws.holder_vmid);
  const configs = await mapLimit(onNode, SCAN_CONCURRENCY, async (vm) => {
    try {
      return { vm, config: await backend.getConfig({ vmid: vm.vmid, node }) };
    } catch (error) {
      // A VM removed between the list and its config read references nothing any more.
      if (isVmNotFound(error)) return { vm, config: undefined };
      facts.unreadable.push({ vmid: vm.vmid, error: describe(error).trim() });
      return { vm, config: undefined };
    }
  });
  for (const { vm, config: vmConfig } of configs) {
    if (!vmConfig) continue;
    for (const key of Object.keys(vmConfig).sort()) {
      if (!isVolumeKey(key)) continue;
      if (driveVolid(vmConfig[key]) !== ws.volid) continue;
      facts.references.push({ vmid: vm.vmid, ...(vm.name ? { name: vm.name } : {}), state: vm.state, key });
    }
  }
  facts.unreadable.sort((a, b) => a.vmid - b.vmid);

  if (ws.attached_vmid !== null) {
    const vm = vms.find((v) => v.vmid === ws.attached_vmid);
    facts.attached = { vmid: ws.attached_vmid, exists: vm !== undefined, ...(vm ? { node: vm.node } : {}) };
    const row = store.sandboxes.get(ws.attached_vmid);
    if (row) facts.attachedSandbox = row;
  }

  if (ws.storage_type === "zfspool" && facts.storage) {
    const own = volumeName(ws.volid);
    const holders = new Map(store.workspaces.list().map((w) => [w.holder_vmid, w.name]));
    for (const entry of await backend.storageContent(node, ws.storage)) {
      const parent = entry.parent ? parentVolume(entry.parent) : undefined;
      if (!parent || parent.volume !== own || parent.snapshot === "__base__") continue;
      const workspace = entry.vmid !== undefined ? holders.get(entry.vmid) : undefined;
      facts.forkDependents.push({
        volid: entry.volid,
        parent: entry.parent!,
        ...(entry.vmid !== undefined ? { vmid: entry.vmid } : {}),
        ...(workspace ? { workspace } : {}),
      });
    }
  }
  return facts;
}

export interface CheckResult {
  workspace: ReturnType<typeof workspaceJson>;
  ok: boolean;
  findings: WorkspaceFinding[];
}

export async function checkWorkspace(
  core: WorkspaceCore,
  ref: string,
  options: CheckOptions,
): Promise<CheckResult> {
  const ws = core.require(ref);
  const findings = workspaceFindings(await gatherCheckFacts(core, ws, options));
  return { workspace: workspaceJson(ws), ok: !findings.some((f) => f.severity === "error"), findings };
}
