/**
 * What revert and snapshot restore share around a Proxmox snapshot rollback: the check that it can
 * work before anything is stopped, recognising "no such snapshot" in its failure, and putting back
 * afterwards the settings the sandbox owns. Workspace restore uses snapshotsAfter too.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { SnapshotInfo, VmConfig, VmRef } from "../../proxmox/types.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import { rootDisk, vmTags } from "./vm-config.js";

/** Whether a failed rollback says that its snapshot does not exist (upstream's detection, any backend). */
export function isSnapshotMissing(error: unknown): boolean {
  if (isVmNotFound(error)) return false;
  const text = [
    describe(error),
    ...(error instanceof AgentlabError && Array.isArray(error.details.chain) ? error.details.chain : []),
    error instanceof AgentlabError ? String(error.details.exitstatus ?? error.details.reason ?? "") : "",
  ].join(" ");
  return (
    /snapshot/i.test(text) &&
    /not found|does not exist|no such snapshot|cannot find snapshot|can't find snapshot/i.test(text)
  );
}

/**
 * The snapshots taken after `name`: those whose parent chain leads back to it, in Proxmox's list
 * order. A parent loop in a damaged list ends the walk instead of hanging it.
 */
export function snapshotsAfter(snapshots: readonly SnapshotInfo[], name: string): string[] {
  const parents = new Map(snapshots.map((snapshot) => [snapshot.name, snapshot.parent]));
  const descends = (snapshot: string): boolean => {
    const seen = new Set<string>();
    for (let at = parents.get(snapshot); at !== undefined && !seen.has(at); at = parents.get(at)) {
      if (at === name) return true;
      seen.add(at);
    }
    return false;
  };
  return snapshots.map((snapshot) => snapshot.name).filter(descends);
}

/**
 * ZFS rolls a volume back only to its most recent snapshot (`zfs rollback` without -r, as Proxmox
 * runs it), so with the root disk on a zfspool storage a snapshot taken after `name` makes the
 * rollback fail. Checked before anything is stopped, so the refusal leaves the sandbox as it was.
 */
export async function requireRollbackable(
  ctx: DaemonContext,
  vm: VmRef,
  config: VmConfig,
  snapshots: SnapshotInfo[],
  name: string,
): Promise<void> {
  const later = snapshotsAfter(snapshots, name);
  if (later.length === 0) return;
  const disk = rootDisk(config);
  const storageId = disk ? /^([^:,]+):/.exec(String(config[disk]))?.[1] : undefined;
  if (!storageId) return;
  const storage = (await ctx.backend.listStorages(vm.node)).find((s) => s.storage === storageId);
  if (storage?.type !== "zfspool") return;
  throw new AgentlabError(
    "CONFLICT",
    `cannot roll back to snapshot "${name}": the root disk is on ZFS storage ${storageId}, which rolls back only to the most recent snapshot, and ${later.map((n) => `"${n}"`).join(", ")} ${later.length === 1 ? "was" : "were"} taken after it`,
    {
      hint: `nothing was changed; delete the later snapshot${later.length === 1 ? "" : "s"} first: ${later.map((n) => `qm delsnapshot ${vm.vmid} ${n}`).join("; ")}`,
      details: { vmid: vm.vmid, snapshot: name, later, storage: storageId },
    },
  );
}

/**
 * A rollback restores the VM's whole config from the snapshot. Put back what the sandbox owns: its
 * tags (with the managed tag) always, and for revert, which is about the root disk only, the cores
 * and memory it had before (`before`, pending changes included), so a `sandbox update` survives it.
 */
export async function reapplySettings(
  ctx: DaemonContext,
  vm: VmRef,
  before: VmConfig | undefined,
  tags: readonly string[],
): Promise<void> {
  const after = await ctx.backend.getConfig(vm);
  const changes: Record<string, string | number> = {};
  for (const key of ["cores", "memory"]) {
    const value = before?.[key];
    if (value !== undefined && String(value) !== String(after[key])) changes[key] = value;
  }
  const tagSet = (value: string | number | undefined) =>
    String(value ?? "")
      .split(/[;, ]+/)
      .filter((tag) => tag !== "")
      .sort()
      .join(";");
  const wanted = vmTags(tags);
  if (tagSet(after.tags) !== tagSet(wanted)) changes.tags = wanted;
  await ctx.backend.setConfig(vm, changes);
}
