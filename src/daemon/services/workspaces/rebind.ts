/**
 * `workspace rebind <ws> --profile P [--ttl] [--keep-old]` (design §5.7, upstream §5.7): move a
 * workspace to a new sandbox. The new sandbox S2 is cloned, configured and given its `clean` snapshot
 * first; only then is the workspace detached from the old sandbox S1 (which is shut down so /work is
 * unmounted cleanly), attached to S2, and S2 started. Detach always comes before attach, so no two
 * configs ever reference the volume (I5). If S2 fails after the detach, the workspace goes back to S1
 * (stopped). S1 is destroyed at the end unless keep_old.
 */
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import { sessionLeaseOwner } from "../../store/leases.js";
import type { WorkspaceOp } from "../../store/workspace-ops.js";
import { describe } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { CreateParams, WorkspacePlan } from "../sandbox/provision.js";
import type { AttachResult, DetachResult, SandboxPort } from "./attachment.js";
import { type WorkspaceCore, workspaceJson } from "./core.js";

/** What rebind needs from the sandbox service besides attach/detach's port. */
export interface RebindSandboxes extends SandboxPort {
  create(params: CreateParams, op: Operation, plan?: WorkspacePlan): Promise<SandboxJson>;
  destroy(vmid: number, force: boolean, op: Operation): Promise<SandboxJson>;
}

export interface RebindParams {
  profile: string;
  ttl_minutes?: number | undefined;
  keep_old?: boolean | undefined;
}

export interface RebindResult {
  workspace: WorkspaceJson;
  sandbox: SandboxJson;
  old_vmid?: number;
}

/** What rebind needs of the workspace service (its attach and detach, recovery-guarded), not the class. */
export interface RebindWorkspaces {
  readonly core: WorkspaceCore;
  attach(
    ref: string,
    vmid: number,
    op: Operation,
    options?: { leaseOwner?: string; sessionId?: string },
  ): Promise<AttachResult>;
  detach(ref: string, hot: boolean, op: Operation): Promise<DetachResult>;
}

export async function rebindWorkspace(
  service: RebindWorkspaces,
  sandboxes: RebindSandboxes,
  ref: string,
  params: RebindParams,
  op: Operation,
): Promise<RebindResult> {
  const { core } = service;
  const { store } = core.ctx;
  const ws = core.require(ref);
  core.requireReady(ws);
  const old = ws.attached_vmid ?? undefined;
  // A session's workspace stays the session's: its lease moves along and the session follows it.
  const session =
    old !== undefined ? store.sessions.byWorkspace(ws.id).find((s) => s.current_vmid === old) : undefined;
  const leaseOwner = session ? sessionLeaseOwner(session.id) : undefined;
  const attachOptions = session ? { leaseOwner: sessionLeaseOwner(session.id), sessionId: session.id } : {};
  // The session follows the workspace: it points at the new sandbox from just before the detach, so
  // whatever happens to S2 after that (its rollback, a crash) lets go of the session with it.
  const follow = (from: number | null, to: number | null) => {
    if (session) store.sessions.update(session.id, { current_vmid: to }, { expectCurrentVmid: from });
  };
  // Intent (design §10.2 rebind rows) from the attach to S2 until the end: the detach and the attach
  // record their own rows, and the table holds one per workspace, so this one starts where theirs end.
  let intent: WorkspaceOp | undefined;
  const endIntent = () => {
    if (intent) store.workspaceOps.finish(intent.id);
    intent = undefined;
  };
  const plan: WorkspacePlan =
    old === undefined
      ? { ref: ws.id }
      : {
          ref: ws.id,
          ...(leaseOwner ? { leaseOwner, sessionId: session!.id } : {}),
          // The old sandbox holds the lease until it lets go of the workspace.
          reserveLease: false,
          attachedTo: old,
          beforeAttach: async (vmid, stepOp) => {
            core.step(stepOp, ws, "detach", `detaching workspace ${ws.name} from sandbox ${old}`);
            follow(old, vmid);
            try {
              await service.detach(ws.id, false, stepOp);
            } catch (error) {
              follow(vmid, old);
              throw error;
            }
          },
          afterAttach: (vmid) => {
            intent = store.workspaceOps.begin({
              workspace_id: ws.id,
              kind: "rebind",
              step: "attached",
              params: { old, new: vmid, keep_old: params.keep_old === true },
              ...(session ? { session_id: session.id } : {}),
            });
          },
          undoBeforeAttach: async (stepOp) => {
            endIntent();
            // The new sandbox's rollback cleared the session's current sandbox.
            follow(null, old);
            core.step(stepOp, ws, "reattach", `putting workspace ${ws.name} back on sandbox ${old}`);
            await service.attach(ws.id, old, stepOp, attachOptions);
          },
        };
  let sandbox: SandboxJson;
  try {
    sandbox = await sandboxes.create(
      {
        profile: params.profile,
        ...(params.ttl_minutes !== undefined ? { ttl_minutes: params.ttl_minutes } : {}),
      },
      op,
      plan,
    );
  } catch (error) {
    endIntent();
    throw error;
  }
  core.event(
    ws,
    "workspace.rebound",
    `moved to sandbox ${sandbox.vmid}${old !== undefined ? ` from ${old}` : ""}`,
    {
      vmid: sandbox.vmid,
      ...(old !== undefined ? { old_vmid: old } : {}),
    },
  );
  if (old !== undefined && params.keep_old !== true) {
    core.step(op, ws, "destroy-old", `destroying the old sandbox ${old}`);
    try {
      await sandboxes.destroy(old, true, op);
    } catch (error) {
      // The workspace is already on the new sandbox; the old one is only left over.
      op.log.warn({ vmid: old, err: error }, `could not destroy the old sandbox ${old}: ${describe(error)}`);
      core.event(
        ws,
        "workspace.rebind.old_left",
        `old sandbox ${old} could not be destroyed: ${describe(error)}`,
        {
          old_vmid: old,
        },
      );
    }
  }
  endIntent();
  return {
    workspace: workspaceJson(core.reload(ws.id)),
    sandbox,
    ...(old !== undefined ? { old_vmid: old } : {}),
  };
}
