/**
 * Taking sandboxes out of the world: removing a VM, `sandbox destroy` and `sandbox prune`.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import { removeSnippet } from "../../guest/cloud-init.js";
import type { VmRef } from "../../proxmox/types.js";
import { transitionSandbox } from "../../state/sandbox.js";
import type { Sandbox, SandboxState } from "../../store/sandboxes.js";
import {
  describe,
  finalizeJobs,
  isProvisioning,
  isVmNotFound,
  locateVm,
  vmRefOf,
} from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { type SandboxScope, withSandbox } from "./guards.js";
import { recordEvent, reportStep } from "./journal.js";
import { sandboxJson } from "./json.js";
import { releaseSandboxWorkspace, unplugWorkspaces } from "./workspace.js";

/**
 * Stop and destroy with purge; a VM that is already gone is fine. The stop is sent even when the
 * VM reads stopped: a start still in flight (cancelled mid-boot) would otherwise finish after the
 * check and make the destroy fail; Proxmox queues the stop behind it. Between the two, a workspace
 * reference is dropped (best effort: the sandbox never owns the workspace volume, so the destroy
 * cannot free it either way). Provisioning rollback, destroy --force and maintenance use it (the
 * caller holds the sandbox's lock). The VM is looked up cluster-wide first, so a recorded node that a
 * migration made stale does not turn a living VM into "already gone".
 */
export async function removeVm(ctx: DaemonContext, recorded: VmRef): Promise<void> {
  const { backend } = ctx;
  const vm = await locateVm(ctx, recorded);
  try {
    await shutDownForWorkspace(ctx, vm);
    await backend.stop(vm);
    await unplugWorkspaces(ctx, vm);
    await backend.destroy(vm, { purge: true });
  } catch (error) {
    if (isVmNotFound(error)) return;
    throw error;
  }
}

/** States whose VM runs: a failed destroy that stopped it moves such a row to STOPPED. */
const IN_USE: readonly SandboxState[] = ["READY", "RUNNING", "SUSPENDED"];

/** Why a job ends when its sandbox's VM disappeared from Proxmox behind agentlab's back. */
export const JOB_VM_MISSING_REASON = "its sandbox's VM disappeared from Proxmox";

/** How long a sandbox with a workspace gets to shut down cleanly before it is stopped hard. */
export const WORKSPACE_SHUTDOWN_SECONDS = 120;

/**
 * A running sandbox with a workspace attached is shut down cleanly before it goes, so its guest writes
 * /work back and unmounts it (as workspace detach does): a hard stop loses what the agent wrote in its
 * last seconds (seen on a real guest: a job's last file was not on the workspace after its sandbox was
 * destroyed). Proxmox stops it hard only if the shutdown does not finish in time (forceStop).
 */
async function shutDownForWorkspace(ctx: DaemonContext, vm: VmRef, signal?: AbortSignal): Promise<void> {
  if (!ctx.store.workspaces.byAttachedVmid(vm.vmid)) return;
  const status = await ctx.backend.status(vm);
  if (status.state !== "running") return;
  await ctx.backend.shutdown(
    vm,
    { timeoutSeconds: WORKSPACE_SHUTDOWN_SECONDS, forceStop: true },
    signal ? { signal } : undefined,
  );
}

/**
 * Destroy: stop, destroy with purge, DESTROYED. A normal destroy refuses sandboxes still being
 * provisioned and TIMEOUT ones, and fails on any Proxmox error; --force takes any state and treats a
 * VM that is already gone as destroyed. A VM that still exists is never forgotten.
 */
export function destroySandbox(
  { ctx, locks }: SandboxScope,
  vmid: number,
  force: boolean,
  op: Operation,
): Promise<SandboxJson> {
  return withSandbox(ctx, locks, vmid, (row) => destroyHeld(ctx, row, force, op));
}

/** The event a destroy ends with, when it is not a user's `sandbox destroy` (e.g. a warm pool removal). */
export interface DestroyRecord {
  kind: string;
  message: string;
  payload?: Record<string, unknown>;
}

/**
 * destroySandbox for a destroy the daemon decided on from a row read before it held the lock (a warm
 * pool member found surplus or dead): `ifStill` is asked again on the row read under the lock, so a
 * sandbox that changed meanwhile (claimed by a user) is left alone and undefined returned.
 */
export function destroySandboxIf(
  { ctx, locks }: SandboxScope,
  vmid: number,
  force: boolean,
  op: Operation,
  options: { ifStill: (row: Sandbox) => boolean; record: DestroyRecord },
): Promise<SandboxJson | undefined> {
  return withSandbox(ctx, locks, vmid, async (row) =>
    options.ifStill(row) ? destroyHeld(ctx, row, force, op, options.record) : undefined,
  );
}

/** The destroy itself, holding the sandbox's lock, on the row read under it. */
async function destroyHeld(
  ctx: DaemonContext,
  row: Sandbox,
  force: boolean,
  op: Operation,
  record?: DestroyRecord,
): Promise<SandboxJson> {
  const { vmid } = row;
  if (row.state === "DESTROYED") return sandboxJson(row);
  const refused: SandboxState[] = ["REQUESTED", "PROVISIONING", "BOOTING", "TIMEOUT"];
  if (!force && refused.includes(row.state)) {
    throw new AgentlabError(
      "DESTROY_FAILED",
      `failed to destroy sandbox: sandbox ${vmid} is in ${row.state} state`,
      {
        hint: `use --force: agentlab sandbox destroy --force ${vmid}`,
        details: { vmid, state: row.state },
      },
    );
  }
  if (row.vm_created) {
    // Intent first (one commit): a kill -9 from here on leaves a row start-up recovery finishes from.
    ctx.store.sandboxOps.begin(vmid, "destroy", { force });
    reportStep(op, vmid, "destroy", `destroying VM ${vmid}`, "info");
    try {
      if (force) await removeVm(ctx, vmRefOf(ctx, row));
      else {
        const vm = await locateVm(ctx, vmRefOf(ctx, row));
        await shutDownForWorkspace(ctx, vm, op.signal);
        const status = await ctx.backend.status(vm);
        if (status.state !== "stopped") await ctx.backend.stop(vm, { signal: op.signal });
        await unplugWorkspaces(ctx, vm);
        await ctx.backend.destroy(vm, { purge: true }, { signal: op.signal });
      }
    } catch (error) {
      // A destroy that failed after its stop (the DELETE refused, its task failed) leaves the VM
      // stopped: the row says so, or it would claim a running sandbox until the reconciler FAILED it
      // as "stopped outside agentlab". The user can start it again or retry the destroy.
      const now = IN_USE.includes(row.state)
        ? await ctx.backend.status(vmRefOf(ctx, row)).catch(() => undefined)
        : undefined;
      // The caller sees the failure and decides; a later restart must not finish it behind their back.
      ctx.store.tx(() => {
        if (now?.state === "stopped") transitionSandbox(ctx.store, vmid, "STOPPED", { patch: { ip: null } });
        ctx.store.sandboxOps.finish(vmid);
        recordEvent(ctx, vmid, "sandbox.destroy.failed", describe(error));
      });
      throw new AgentlabError("DESTROY_FAILED", `failed to destroy sandbox: ${describe(error)}`, {
        hint: isVmNotFound(error)
          ? `the VM is already gone; clear the entry with agentlab sandbox destroy --force ${vmid} (or agentlab sandbox prune)`
          : force
            ? // --force already failed: repeating it is no advice. What blocks Proxmox must be looked at.
              `Proxmox refused to remove VM ${vmid}: see why with qm status ${vmid} --verbose and qm config ${vmid} on the Proxmox host (qm unlock ${vmid} if a dead task left a lock), then run agentlab sandbox destroy --force ${vmid} again`
            : `use --force: agentlab sandbox destroy --force ${vmid}; if that fails too, qm destroy ${vmid} on the Proxmox host`,
        details: {
          vmid,
          state: row.state,
          ...(error instanceof AgentlabError ? { cause_code: error.code } : {}),
        },
        cause: error,
      });
    }
  }
  return sandboxJson(
    await recordDestroyed(
      ctx,
      row,
      record?.message ?? (force ? "destroyed (forced)" : "destroyed"),
      record?.kind ?? "sandbox.destroy.completed",
      record?.payload ? { payload: record.payload } : {},
    ),
  );
}

/**
 * The database side of a destroy once the VM is gone: snippet, job token and network binding released,
 * then one transaction moves the row to DESTROYED, ends its jobs, lets its workspace go, closes the
 * destroy intent and records `kind` with `msg`. Safe to repeat: each release is idempotent and a row
 * already DESTROYED stays so. Start-up recovery finishes an interrupted destroy with it.
 */
export async function recordDestroyed(
  ctx: DaemonContext,
  row: Sandbox,
  msg: string,
  kind: string,
  options: { payload?: Record<string, unknown>; jobReason?: string } = {},
): Promise<Sandbox> {
  const { vmid } = row;
  removeSnippet(row.snippet_path);
  // A runner that never asked for its job must not get it from a VM that is gone.
  ctx.guestReady?.revokeJobToken(vmid);
  await ctx.network?.release(vmid, row.ip);
  // A job bound to a destroyed sandbox can never finish; end it in the same transaction
  // (upstream left such jobs RUNNING forever). The workspace, its lease and the session let go of the
  // sandbox in it too: the VM and every reference it held are gone.
  return ctx.store.tx(() => {
    const moved = transitionSandbox(ctx.store, vmid, "DESTROYED", { patch: { snippet_path: null } });
    finalizeJobs(
      ctx,
      vmid,
      row.state === "TIMEOUT" ? "TIMEOUT" : "FAILED",
      options.jobReason ?? `sandbox ${vmid} was destroyed`,
    );
    releaseSandboxWorkspace(ctx, vmid);
    ctx.store.sandboxOps.finish(vmid);
    recordEvent(ctx, vmid, kind, msg, options.payload);
    // Read again: the release cleared the row's workspace_id after the move.
    return ctx.store.sandboxes.get(vmid) ?? moved;
  });
}

/** A sandbox prune could not remove, and why (the error's message and hint). */
export interface PruneFailure {
  vmid: number;
  state: SandboxState;
  message: string;
  hint?: string;
}

/** Which rows prune takes, with the reason shown for each (exported for maintenance's dry run). */
export function pruneCandidates(
  ctx: DaemonContext,
  present: ReadonlySet<number>,
): Array<{ row: Sandbox; why: string }> {
  const out: Array<{ row: Sandbox; why: string }> = [];
  for (const row of ctx.store.sandboxes.list()) {
    if (row.state === "TIMEOUT") out.push({ row, why: "lease expired (TIMEOUT)" });
    else if (row.vm_created && !present.has(row.vmid) && !isProvisioning(row.state))
      out.push({ row, why: "its VM no longer exists in Proxmox" });
    // A provisioning that failed before its clone: nothing in Proxmox, nothing to keep for debugging.
    else if (row.state === "FAILED" && !row.vm_created)
      out.push({ row, why: "FAILED before its VM was created" });
  }
  return out;
}

/**
 * Remove orphaned entries in one pass over one cluster-wide VM list: TIMEOUT sandboxes, live rows whose
 * VM no longer exists in Proxmox, and FAILED rows whose VM was never created. Each goes through a forced
 * destroy, under its own lock. One that cannot be removed is reported with the reason (upstream counted
 * only the successes, so its weekly cron line never showed a failure).
 */
export async function pruneSandboxes(
  { ctx, locks }: SandboxScope,
  op: Operation,
): Promise<{ count: number; vmids: number[]; failed: PruneFailure[] }> {
  const present = new Set((await ctx.backend.listVms()).map((vm) => vm.vmid));
  const vmids: number[] = [];
  const failed: PruneFailure[] = [];
  for (const { row } of pruneCandidates(ctx, present)) {
    try {
      await destroySandbox({ ctx, locks }, row.vmid, true, op);
      vmids.push(row.vmid);
    } catch (error) {
      op.log.warn({ vmid: row.vmid, err: error }, `prune could not remove sandbox ${row.vmid}`);
      const hint = error instanceof AgentlabError ? error.hint : undefined;
      failed.push({ vmid: row.vmid, state: row.state, message: describe(error), ...(hint ? { hint } : {}) });
    }
  }
  return { count: vmids.length, vmids, failed };
}
