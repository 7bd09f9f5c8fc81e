/**
 * `sandbox revert`: back to the `clean` snapshot provisioning takes, root disk only (spec 5.4).
 */
import { AgentlabError } from "../../../protocol/errors.js";
import { CLEAN_SNAPSHOT_NAME, type Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import { transitionSandbox } from "../../state/sandbox.js";
import type { SandboxState } from "../../store/sandboxes.js";
import { describe, vmRefOf } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { RevertGuard } from "../workspaces/across-revert.js";
import { WORKSPACE_SHUTDOWN_SECONDS } from "./destroy.js";
import { getSandbox, requireState, requireVm, type SandboxScope, withSandbox } from "./guards.js";
import { recordEvent, reportStep } from "./journal.js";
import { sandboxJson } from "./json.js";
import { bootSandbox, powerCall } from "./power.js";
import { isSnapshotMissing, reapplySettings, requireRollbackable } from "./snapshot-rollback.js";
import { nonRootDisks } from "./vm-config.js";
import { foreignVolumes, type SandboxWorkspaces, workspaceSnapshotRefusal } from "./workspace.js";

/** Name of the snapshot `sandbox revert` goes back to. */
export const CLEAN_SNAPSHOT = CLEAN_SNAPSHOT_NAME;

/** States `sandbox revert` names as valid (upstream's wording); SUSPENDED is accepted too and stopped first. */
const REVERT_STATES: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "STOPPED",
  "COMPLETED",
  "FAILED",
  "TIMEOUT",
];

export interface RevertResult {
  sandbox: SandboxJson;
  snapshot: string;
  was_running: boolean;
  restarted: boolean;
}

/** `cause` set: the rollback itself said so, after the VM had been stopped. */
function cleanSnapshotMissing(vmid: number, cause?: unknown): AgentlabError {
  return new AgentlabError(
    "SNAPSHOT_NOT_FOUND",
    `snapshot "${CLEAN_SNAPSHOT}" not found; reprovision the sandbox or create it via Proxmox (qm snapshot ${vmid} ${CLEAN_SNAPSHOT})`,
    {
      hint: `${cause === undefined ? "nothing was changed" : "the VM was stopped, its disk was not rolled back"}; to reprovision: agentlab sandbox destroy ${vmid}, then agentlab sandbox new`,
      details: { vmid, snapshot: CLEAN_SNAPSHOT },
      ...(cause !== undefined ? { cause } : {}),
    },
  );
}

/**
 * Roll the root disk back to the `clean` snapshot (spec 5.4), fixing upstream's order: the snapshot's
 * existence is checked before anything is stopped, so a missing `clean` leaves the sandbox as it was.
 *
 * Only the root disk is rolled back. `clean` is taken at provisioning, before a workspace is attached,
 * so it holds the root disk alone. The sandbox's workspace stays attached: the VM is shut down cleanly
 * (/work is unmounted), its drive taken out, the root disk rolled back and the drive put back
 * (workspaces/across-revert.ts), so revert does not touch /work. Any other disk (one agentlab does
 * not know) is refused: a rollback would turn it into an unused entry.
 *
 * Without force it refuses while the sandbox's job is QUEUED or RUNNING (spec 5.4): rolling the disk
 * back under a working agent loses its work and the runner's state. That check comes first, so the
 * answer does not depend on whether the sandbox has reached RUNNING yet (a runner may already be
 * working while the daemon still records the sandbox BOOTING or READY).
 */
export function revertSandbox(
  scope: SandboxScope,
  workspaces: SandboxWorkspaces | undefined,
  vmid: number,
  options: { force?: boolean | undefined; restart?: boolean | undefined },
  op: Operation,
): Promise<RevertResult> {
  if (!workspaces) return revertHolding(scope, undefined, vmid, options, op);
  return workspaces.acrossRevert(vmid, (guard) => revertHolding(scope, guard, vmid, options, op));
}

function revertHolding(
  { ctx, locks }: SandboxScope,
  guard: RevertGuard | undefined,
  vmid: number,
  options: { force?: boolean | undefined; restart?: boolean | undefined },
  op: Operation,
): Promise<RevertResult> {
  return withSandbox(ctx, locks, vmid, async (row) => {
    const job = ctx.store.jobs.latestForSandbox(vmid);
    if (options.force !== true && job && (job.status === "QUEUED" || job.status === "RUNNING")) {
      throw new AgentlabError("CONFLICT", `sandbox has running job ${job.id}; use --force to revert`, {
        hint: `wait for it (agentlab job show ${job.id} --wait), or revert anyway: agentlab sandbox revert --force ${vmid}`,
        details: { vmid, job_id: job.id, job_status: job.status },
      });
    }
    requireState(row, "revert", REVERT_STATES, {
      accepted: [...REVERT_STATES, "SUSPENDED"],
      ...(row.state === "DESTROYED"
        ? { hint: `its VM is gone; create a new sandbox: agentlab sandbox new --profile ${row.profile}` }
        : { hint: `wait until provisioning ends (agentlab sandbox show ${vmid}), then revert` }),
    });
    requireVm(row, "revert");
    const vm = vmRefOf(ctx, row);
    const { backend } = ctx;

    reportStep(op, vmid, "check", `checking the "${CLEAN_SNAPSHOT}" snapshot and the disks of VM ${vmid}`);
    const [snapshots, config, status] = await Promise.all([
      backend.snapshotList(vm),
      backend.getConfig(vm),
      backend.status(vm),
    ]);
    if (!snapshots.some((snapshot) => snapshot.name === CLEAN_SNAPSHOT)) throw cleanSnapshotMissing(vmid);
    await requireRollbackable(ctx, vm, config, snapshots, CLEAN_SNAPSHOT);
    if (guard) {
      // A `clean` taken with the workspace attached (upstream did so) would roll /work back too.
      const inClean = foreignVolumes(ctx, await backend.getConfig(vm, { snapshot: CLEAN_SNAPSHOT }), vmid);
      if (inClean.length > 0) {
        throw workspaceSnapshotRefusal(ctx, vmid, inClean, { snapshot: CLEAN_SNAPSHOT });
      }
    }
    const workspaceKeys = guard?.keysIn(config) ?? [];
    const extra = nonRootDisks(config).filter((key) => !workspaceKeys.includes(key));
    if (extra.length > 0) {
      // Not the sandbox's workspace: a disk added by hand, or another VM's.
      throw new AgentlabError(
        "CONFLICT",
        `sandbox ${vmid} has disks besides its root disk (${extra.join(", ")}); revert rolls back the root disk only`,
        {
          hint: `a rollback would drop them from the config; remove them first if they are not needed (qm set ${vmid} --delete ${extra.join(",")}), then revert`,
          details: { vmid, disks: extra },
        },
      );
    }

    const wasRunning =
      row.state === "READY" ||
      row.state === "RUNNING" ||
      row.state === "SUSPENDED" ||
      status.state === "running" ||
      status.state === "paused";
    const restart = options.restart ?? wasRunning;
    const force = options.force === true;
    const payload = { snapshot: CLEAN_SNAPSHOT, was_running: wasRunning, force, restart };
    // Intent first, in the commit that records the start: from here a kill -9 leaves a row start-up
    // recovery finishes (the rollback is redone, which is safe: the VM has not run since any earlier one).
    ctx.store.tx(() => {
      ctx.store.sandboxOps.begin(vmid, "revert", {
        restart,
        guarded: guard !== undefined,
        // What reapplySettings puts back after the rollback, kept for a recovery that redoes it.
        cores: config.cores ?? null,
        memory: config.memory ?? null,
      });
      recordEvent(ctx, vmid, "sandbox.revert.started", `reverting to "${CLEAN_SNAPSHOT}"`, payload);
    });
    const started = ctx.clock.now().getTime();
    const failed = (error: unknown, what = "") => {
      ctx.store.tx(() => {
        ctx.store.sandboxOps.finish(vmid);
        recordEvent(ctx, vmid, "sandbox.revert.failed", `${what}${describe(error)}`, {
          ...payload,
          error: `${what}${describe(error)}`,
          duration_ms: ctx.clock.now().getTime() - started,
        });
      });
    };
    try {
      if (status.state !== "stopped") {
        if (guard) {
          // /work is mounted: a clean shutdown writes it back; the root disk is rolled back anyway.
          reportStep(op, vmid, "stop", `shutting VM ${vmid} down so /work is unmounted cleanly`);
          await powerCall(ctx, vm, "stopped", () =>
            backend.shutdown(
              vm,
              { timeoutSeconds: WORKSPACE_SHUTDOWN_SECONDS, forceStop: true },
              { signal: op.signal },
            ),
          );
        } else {
          reportStep(op, vmid, "stop", `stopping VM ${vmid}`);
          await powerCall(ctx, vm, "stopped", () => backend.stop(vm, { signal: op.signal }));
        }
      }
      transitionSandbox(ctx.store, vmid, "STOPPED", { patch: { ip: null, failure_reason: null } });
      await guard?.unplug(vm, op);
      reportStep(op, vmid, "rollback", `rolling the root disk back to "${CLEAN_SNAPSHOT}"`, "info");
      await backend.snapshotRollback(vm, CLEAN_SNAPSHOT, { signal: op.signal });
      await reapplySettings(ctx, vm, config, row.tags);
      await guard?.replug(vm, op);
    } catch (error) {
      failed(error);
      throw isSnapshotMissing(error) ? cleanSnapshotMissing(vmid, error) : error;
    }
    let sandbox = getSandbox(ctx, vmid);
    if (restart) {
      try {
        sandbox = await bootSandbox(ctx, vmid, vm, op, "start after revert");
      } catch (error) {
        failed(error, "rolled back, but the restart failed: ");
        throw error;
      }
    }
    ctx.store.tx(() => {
      ctx.store.sandboxOps.finish(vmid); // already closed by the restart's RUNNING; without one, here
      recordEvent(ctx, vmid, "sandbox.revert.completed", `reverted to "${CLEAN_SNAPSHOT}"`, {
        ...payload,
        duration_ms: ctx.clock.now().getTime() - started,
      });
    });
    return {
      sandbox: sandboxJson(sandbox),
      snapshot: CLEAN_SNAPSHOT,
      was_running: wasRunning,
      restarted: restart,
    };
  });
}
