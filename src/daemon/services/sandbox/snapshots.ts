/**
 * Named snapshots a user takes and goes back to (`sandbox snapshot save|list|restore`, spec 5.5).
 * Revert to `clean` is its own command (revert.ts).
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson, SandboxSnapshot } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import type { SnapshotInfo, VmConfig, VmRef } from "../../proxmox/types.js";
import { canTransition, transitionSandbox } from "../../state/sandbox.js";
import type { Sandbox } from "../../store/sandboxes.js";
import { describe, vmRefOf } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import {
  getSandbox,
  requireState,
  requireVm,
  type SandboxScope,
  SETTLED_STATES,
  withSandbox,
} from "./guards.js";
import { waitForIp } from "./guest-address.js";
import { recordEvent, reportStep } from "./journal.js";
import { sandboxJson, snapshotJson } from "./json.js";
import { isSnapshotMissing, reapplySettings, requireRollbackable } from "./snapshot-rollback.js";
import { nonRootDisks } from "./vm-config.js";
import { foreignVolumes, workspaceSnapshotRefusal } from "./workspace.js";

/** How long a snapshot restore that leaves the VM running waits for the guest to report its address. */
const RESTORE_IP_BUDGET_MS = 2000;

function snapshotMissing(vmid: number, name: string, cause?: unknown): AgentlabError {
  return new AgentlabError("SNAPSHOT_NOT_FOUND", `snapshot "${name}" not found`, {
    hint: `list the sandbox's snapshots: agentlab sandbox snapshot list ${vmid}`,
    details: { vmid, snapshot: name },
    ...(cause !== undefined ? { cause } : {}),
  });
}

/** The hint for a sandbox outside the settled states: gone for good, or not provisioned yet. */
function unsettledHint(row: Sandbox): string {
  return row.state === "DESTROYED"
    ? "its VM is gone, and its snapshots with it"
    : `wait until provisioning ends (agentlab sandbox show ${row.vmid})`;
}

/**
 * The guards of snapshot save and restore (spec 5.5): never while provisioning or DESTROYED; never,
 * not even with force, while the sandbox's config (or, for a restore, the snapshot's config) references
 * a volume another VM owns, such as a workspace (design §5.5, invariant I4): the snapshot or rollback
 * would cover that disk too. Without force only a STOPPED sandbox whose VM is really stopped and has no
 * disk besides its root disk. Gives back what it read (the VM's config; for a restore its snapshots),
 * so the operation does not ask Proxmox again under the same lock.
 */
async function snapshotGuard(
  ctx: DaemonContext,
  row: Sandbox,
  verb: "snapshot" | "restore",
  force: boolean,
  snapshot?: string,
): Promise<{ config: VmConfig; snapshots?: SnapshotInfo[] }> {
  requireState(row, verb, ["STOPPED"], { accepted: SETTLED_STATES, hint: unsettledHint(row) });
  requireVm(row, verb);
  const vm = vmRefOf(ctx, row);
  const config = await ctx.backend.getConfig(vm);
  const attached = ctx.store.workspaces.byAttachedVmid(row.vmid);
  const foreign = foreignVolumes(ctx, config, row.vmid);
  if (attached && !foreign.some((f) => f.volid === attached.volid)) {
    // The database says attached even if the config was changed behind its back: refuse as well.
    foreign.unshift({
      key: "scsi1",
      volid: attached.volid,
      owner: attached.holder_vmid ?? 0,
      workspace: attached,
    });
  }
  if (foreign.length > 0) throw workspaceSnapshotRefusal(ctx, row.vmid, foreign, "config");
  // A snapshot that does not exist is reported by the restore itself, in its own words.
  const snapshots = snapshot !== undefined ? await ctx.backend.snapshotList(vm) : undefined;
  if (snapshot !== undefined && snapshots?.some((s) => s.name === snapshot)) {
    const inSnapshot = foreignVolumes(ctx, await ctx.backend.getConfig(vm, { snapshot }), row.vmid);
    if (inSnapshot.length > 0) throw workspaceSnapshotRefusal(ctx, row.vmid, inSnapshot, { snapshot });
  }
  const read = snapshots ? { config, snapshots } : { config };
  if (force) return read;
  const mustStop = () =>
    new AgentlabError("INVALID_STATE", "sandbox must be stopped for snapshots", {
      hint: `stop it first (agentlab sandbox stop ${row.vmid}), or use --force`,
      details: { vmid: row.vmid, state: row.state },
    });
  if (row.state !== "STOPPED") throw mustStop();
  const status = await ctx.backend.status(vm);
  if (status.state !== "stopped") throw mustStop();
  const extra = nonRootDisks(config);
  if (extra.length > 0) {
    throw new AgentlabError(
      "CONFLICT",
      `sandbox ${row.vmid} has disks besides its root disk (${extra.join(", ")}); a snapshot would cover them too`,
      {
        hint: "detach them first, or use --force to include them",
        details: { vmid: row.vmid, disks: extra },
      },
    );
  }
  return read;
}

export function saveSnapshot(
  { ctx, locks }: SandboxScope,
  vmid: number,
  name: string,
  force: boolean,
  op: Operation,
): Promise<{ vmid: number; name: string; created_at: string }> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    await snapshotGuard(ctx, row, "snapshot", force);
    const vm = vmRefOf(ctx, row);
    const existing = await ctx.backend.snapshotList(vm);
    if (existing.some((snapshot) => snapshot.name === name)) {
      throw new AgentlabError("CONFLICT", `snapshot "${name}" already exists`, {
        hint: `choose another name; agentlab sandbox snapshot list ${vmid} shows the taken ones`,
        details: { vmid, name },
      });
    }
    reportStep(op, vmid, "snapshot", `taking snapshot "${name}" of VM ${vmid}`);
    // Intent first: a kill -9 during the snapshot leaves a row recovery settles from the snapshot list.
    ctx.store.sandboxOps.begin(vmid, "snapshot_save", { name });
    try {
      await ctx.backend.snapshotCreate(vm, name, undefined, { signal: op.signal });
    } catch (error) {
      ctx.store.tx(() => {
        ctx.store.sandboxOps.finish(vmid);
        recordEvent(ctx, vmid, "sandbox.snapshot.failed", describe(error), { name, error: describe(error) });
      });
      throw error;
    }
    ctx.store.tx(() => {
      ctx.store.sandboxOps.finish(vmid);
      recordEvent(ctx, vmid, "sandbox.snapshot.created", `snapshot "${name}" taken`, { name, force });
    });
    return { vmid, name, created_at: ctx.clock.now().toISOString() };
  });
}

/** The VM's snapshots, without Proxmox's `current` pseudo-entry. Takes no lock: it only reads. */
export async function listSnapshots(
  ctx: DaemonContext,
  vmid: number,
): Promise<{ vmid: number; snapshots: SandboxSnapshot[] }> {
  const row = getSandbox(ctx, vmid);
  requireState(row, "list snapshots of", SETTLED_STATES, { hint: unsettledHint(row) });
  requireVm(row, "list snapshots of");
  const snapshots = await ctx.backend.snapshotList(vmRefOf(ctx, row));
  return { vmid, snapshots: snapshots.filter((s) => s.name !== "current").map(snapshotJson) };
}

/**
 * Roll back to a named snapshot. The VM is then as the snapshot left it: a disk-only snapshot leaves
 * it stopped (STOPPED, address cleared), one with RAM resumes it (RUNNING, address asked again).
 */
export function restoreSnapshot(
  { ctx, locks }: SandboxScope,
  vmid: number,
  name: string,
  force: boolean,
  op: Operation,
): Promise<{ sandbox: SandboxJson; snapshot: string }> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    const { config, snapshots = [] } = await snapshotGuard(ctx, row, "restore", force, name);
    const vm = vmRefOf(ctx, row);
    const { backend } = ctx;
    if (!snapshots.some((snapshot) => snapshot.name === name)) throw snapshotMissing(vmid, name);
    await requireRollbackable(ctx, vm, config, snapshots, name);
    reportStep(op, vmid, "rollback", `rolling VM ${vmid} back to snapshot "${name}"`, "info");
    // Intent first: a kill -9 from here leaves a row recovery finishes (the rollback is redone).
    ctx.store.sandboxOps.begin(vmid, "snapshot_restore", { name });
    // Every failure from here closes the intent, including one after the rollback (reading the VM's
    // status to settle the row): an intent left open would hold the sandbox until a daemon restart.
    try {
      await backend.snapshotRollback(vm, name, { signal: op.signal });
      await reapplySettings(ctx, vm, undefined, row.tags);
      const sandbox = await settleAfterRollback(ctx, vm, op, (settled) =>
        recordEvent(ctx, vmid, "sandbox.snapshot.restored", `restored snapshot "${name}"`, {
          name,
          force,
          running: settled.state === "RUNNING",
        }),
      );
      return { sandbox: sandboxJson(sandbox), snapshot: name };
    } catch (error) {
      ctx.store.tx(() => {
        ctx.store.sandboxOps.finish(vmid);
        recordEvent(ctx, vmid, "sandbox.snapshot.restore_failed", describe(error), {
          name,
          error: describe(error),
        });
      });
      throw isSnapshotMissing(error) ? snapshotMissing(vmid, name, error) : error;
    }
  });
}

/**
 * After a snapshot rollback the VM is as the snapshot left it: a disk-only snapshot leaves it stopped
 * (STOPPED, address cleared), one with RAM resumes it (RUNNING, address asked again). The row moves,
 * `record` runs and the restore's intent closes in one transaction. Start-up recovery of an interrupted
 * restore ends with it too.
 */
export async function settleAfterRollback(
  ctx: DaemonContext,
  vm: VmRef,
  op: Operation,
  record: (settled: Sandbox) => void,
): Promise<Sandbox> {
  const { vmid } = vm;
  const status = await ctx.backend.status(vm);
  let ip: string | null = null;
  const running = status.state === "running" || status.state === "paused";
  if (running) {
    try {
      ip = await waitForIp(ctx, vm, ctx.clock.now().getTime() + RESTORE_IP_BUDGET_MS, op);
    } catch (error) {
      op.log.info({ vmid, err: error }, "no guest address yet after the restore");
    }
  }
  return ctx.store.tx(() => {
    let settled: Sandbox;
    if (running) {
      if (!canTransition(getSandbox(ctx, vmid).state, "RUNNING"))
        transitionSandbox(ctx.store, vmid, "STOPPED");
      settled = transitionSandbox(ctx.store, vmid, "RUNNING", { patch: { ip, failure_reason: null } });
    } else {
      settled = transitionSandbox(ctx.store, vmid, "STOPPED", { patch: { ip: null, failure_reason: null } });
    }
    record(settled);
    ctx.store.sandboxOps.finish(vmid);
    return settled;
  });
}
