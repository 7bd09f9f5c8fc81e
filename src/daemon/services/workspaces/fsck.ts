/**
 * `workspace fsck <ws> [--repair]` (design §8): e2fsck on the host against the detached workspace's
 * volume. The volume is activated if it must be (what was done is recorded in the op, so a crash can
 * be undone), checked read-only or repairing, and put back; the result is kept in meta.last_fsck.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { FsckResult } from "../../../protocol/workspace.js";
import { type FsckRun, fsckRemediation, fsckUnsupportedError, runFsck } from "../../host/fsck.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { referencingKeys, type WorkspaceCore } from "./core.js";
import { hostToolsFor } from "./host.js";
import { beginLeased, prechecked, requireHolderStopped } from "./snapshots.js";
import { openVolume } from "./volume.js";

/**
 * Design §8.2: no VM may reference the volume. The DB says detached; the sandbox it was last attached
 * to is asked too, since a reference left behind there means a guest may still write to the disk.
 */
async function requireUnreferenced(core: WorkspaceCore, ws: Workspace): Promise<void> {
  if (ws.last_attached_vmid === null || ws.node === null) return;
  const vm = { vmid: ws.last_attached_vmid, node: ws.node };
  let config: Record<string, string | number>;
  try {
    config = await core.ctx.backend.getConfig(vm);
  } catch (error) {
    if (isVmNotFound(error)) return;
    throw error;
  }
  const keys = referencingKeys(config, ws.volid);
  if (keys.length === 0) return;
  throw new AgentlabError(
    "WORKSPACE_ATTACHED",
    `workspace must be detached for fsck: VM ${vm.vmid} still references its volume (${keys.join(", ")})`,
    {
      hint: `find out why with agentlab workspace check ${ws.name}; drop the reference only when that VM is stopped: qm set ${vm.vmid} --delete ${keys[0]}`,
      details: { workspace_id: ws.id, workspace_name: ws.name, vmid: vm.vmid, keys },
    },
  );
}

/** What meta.last_fsck keeps: enough for `workspace show`, without the whole output. */
function lastFsckRecord(run: FsckRun): Record<string, unknown> {
  return {
    status: run.status,
    mode: run.mode,
    ...(run.exit_code !== undefined ? { exit_code: run.exit_code } : {}),
    exit_summary: run.exit_summary,
    command: run.command,
    device: run.device,
    started_at: run.started_at,
    completed_at: run.completed_at,
  };
}

export async function fsckWorkspace(
  core: WorkspaceCore,
  ref: string,
  repair: boolean,
  op: Operation,
): Promise<FsckResult> {
  const { ctx } = core;
  const { store, backend } = ctx;
  const mode = repair ? "repair" : "check";
  const initial = core.require(ref);
  // Cheap refusals first, so an attached workspace is told so even where fsck could never run.
  core.requireDetached(initial, "fsck");
  core.requireReady(initial);
  const holder = core.holder(initial);
  const access = await hostToolsFor(ctx, holder.node);
  if (!access.tools) {
    const path = (await backend.volumeInfo(holder.node, initial.volid)).path;
    throw fsckUnsupportedError({ path, node: holder.node, reason: access.reason });
  }
  const tools = access.tools;
  const { ws, intent } = beginLeased(core, initial.id, {
    verb: "fsck",
    kind: "fsck",
    lease: "fsck",
    params: (row) => ({ mode, holder_vmid: row.holder_vmid }),
  });
  return core.exclusive(ws, async () => {
    await prechecked(core, intent, async () => {
      await requireHolderStopped(core, ws, holder);
      await requireUnreferenced(core, ws);
    });
    store.tx(() => {
      core.setStep(intent, "started");
      core.event(
        ws,
        "workspace.fsck.started",
        `fsck of workspace ${ws.name} started (${repair ? "repair" : "read-only"})`,
        {
          mode,
        },
      );
    });
    let path = "";
    const run = await core.withOp(
      intent,
      async () => {
        core.step(op, ws, "activate", `opening volume ${ws.volid} on this host`);
        const device = await openVolume(ctx, ws, tools);
        path = device.path;
        try {
          // Recorded before e2fsck runs, so recovery after a crash knows what to deactivate.
          core.setStep(intent, "check", { device: device.device, activations: device.activations });
          core.step(op, ws, "check", `running e2fsck ${repair ? "-f -y" : "-f -n"} on ${device.device}`);
          return await runFsck({ device: device.device, mode, tools, signal: op.signal, clock: ctx.clock });
        } finally {
          await device.undo();
        }
      },
      {
        commit: (done) => {
          const current = core.reload(ws.id);
          const meta: Record<string, unknown> = { ...current.meta, last_fsck: lastFsckRecord(done) };
          delete meta.fsck_interrupted;
          store.workspaces.update(ws.id, { meta });
          const kind = done.status === "failed" ? "workspace.fsck.failed" : "workspace.fsck.completed";
          core.event(ws, kind, `fsck of workspace ${ws.name}: ${done.status} (${done.exit_summary})`, {
            mode,
            status: done.status,
            ...(done.exit_code !== undefined ? { exit_code: done.exit_code } : {}),
          });
        },
        undo: (error) => {
          core.event(ws, "workspace.fsck.failed", `fsck of workspace ${ws.name} failed: ${describe(error)}`, {
            mode,
            error: describe(error),
          });
        },
      },
    );
    const remediation = fsckRemediation(run.status, mode, { workspace: ws.name, node: holder.node });
    return {
      workspace: ws.name,
      workspace_id: ws.id,
      volume: { volid: ws.volid, storage: ws.storage, path, device: run.device },
      mode: run.mode,
      status: run.status,
      ...(run.exit_code !== undefined ? { exit_code: run.exit_code } : {}),
      exit_summary: run.exit_summary,
      ...(remediation ? { remediation } : {}),
      command: run.command,
      output: run.output,
      started_at: run.started_at,
      completed_at: run.completed_at,
    };
  });
}
