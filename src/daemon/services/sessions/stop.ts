/**
 * `session stop` (design §12): destroy the session's sandbox; the workspace and the session stay. The
 * sandbox's DESTROYED transaction records the workspace detached, releases `session:<id>` and clears
 * current_vmid, which is what lets `workspace snapshot restore` (or fsck, or fork) run next, as the
 * troubleshooting guide's "session stop → snapshot restore → session resume" sequence expects.
 *
 * Intent first (design §10.1): a `session_stop` row on the workspace names the sandbox before it is
 * touched. A daemon killed mid-destroy leaves the row, and start-up recovery finishes the stop the user
 * asked for (recoverSessionStop), instead of leaving a session "running" on a half-destroyed sandbox and
 * a workspace recorded on a VM that no longer references it.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import { sessionLeaseOwner } from "../../store/leases.js";
import type { Session } from "../../store/sessions.js";
import type { WorkspaceOp } from "../../store/workspace-ops.js";
import { isProvisioning } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import type { RecoveryResult } from "../workspaces/recovery/index.js";
import { exclusiveSession, releaseSessionLease, type SessionDeps, sessionJson } from "./common.js";

export interface SessionStopped {
  session: SessionJson;
  destroyed_vmid?: number;
}

export function stopSession(deps: SessionDeps, ref: string, op: Operation): Promise<SessionStopped> {
  const { store } = deps.ctx;
  return exclusiveSession(deps, ref, async (session) => {
    const vmid = session.current_vmid;
    let destroyed: number | undefined;
    if (vmid !== null) {
      const sandbox = store.sandboxes.get(vmid);
      if (sandbox && sandbox.state !== "DESTROYED") {
        if (isProvisioning(sandbox.state)) {
          throw new AgentlabError(
            "CONFLICT",
            `session ${session.name} is starting: sandbox ${vmid} is ${sandbox.state}`,
            {
              hint: `wait until it is RUNNING or FAILED (agentlab sandbox show ${vmid}), then stop the session again`,
              details: { session: session.name, vmid, state: sandbox.state },
            },
          );
        }
        const intent = store.workspaceOps.begin({
          workspace_id: session.workspace_id,
          kind: "session_stop",
          step: "destroy-sandbox",
          params: { vmid },
          session_id: session.id,
        });
        op.step("destroy", `destroying sandbox ${vmid} of session ${session.name}`);
        try {
          // Forced: whatever state the sandbox is in (FAILED, TIMEOUT, its VM already gone), the session
          // wants it gone; the workspace is safe either way because the sandbox never owns its volume.
          await deps.sandboxes.destroy(vmid, true, op);
        } catch (error) {
          // Nothing to finish later: the sandbox is still there and the session still on it.
          store.workspaceOps.finish(intent.id);
          throw error;
        }
        destroyed = vmid;
        finishStop(deps, session, vmid, intent);
      } else {
        finishStop(deps, session, vmid);
      }
    } else {
      releaseSessionLease(deps, session);
    }
    store.events.append({
      kind: "session.stopped",
      workspace_id: session.workspace_id,
      ...(destroyed !== undefined ? { sandbox_vmid: destroyed } : {}),
      msg: `session ${session.name} stopped${destroyed !== undefined ? `: sandbox ${destroyed} destroyed` : ""}`,
      payload: { session: session.name, session_id: session.id },
    });
    return {
      session: sessionJson(deps, store.sessions.require(session.id)),
      ...(destroyed !== undefined ? { destroyed_vmid: destroyed } : {}),
    };
  });
}

/** The final transaction: the session forgets the sandbox, lets go of its lease, and the intent goes. */
function finishStop(deps: SessionDeps, session: Session, vmid: number, intent?: WorkspaceOp): void {
  const { store } = deps.ctx;
  store.tx(() => {
    store.sessions.update(session.id, { current_vmid: null }, { expectCurrentVmid: vmid });
    releaseSessionLease(deps, session);
    if (intent) store.workspaceOps.finish(intent.id);
  });
}

/**
 * Recovery of a `session_stop` a restart interrupted (registered with the workspace recovery, which runs
 * after sandbox recovery and holds the workspace's mutex): the user asked for the stop, so it is rolled
 * forward. Proxmox tasks the dead daemon left (a stop, a destroy) are waited for, the sandbox is
 * destroyed by force (a VM already gone is fine), and the session is recorded stopped.
 */
export async function recoverSessionStop(
  deps: SessionDeps,
  op: WorkspaceOp,
  operation: Operation,
): Promise<RecoveryResult> {
  const { store, config } = deps.ctx;
  const vmid = op.params.vmid;
  if (typeof vmid !== "number") return deps.workspaces.recovery.abandon(op);
  const session = op.session_id ? store.sessions.get(op.session_id) : undefined;
  const sandbox = store.sandboxes.get(vmid);
  if (sandbox && sandbox.state !== "DESTROYED") {
    await deps.workspaces.recovery.waitForTasks(
      { vmid, node: sandbox.node ?? config.proxmox_node },
      operation,
    );
    operation.step("destroy", `destroying sandbox ${vmid} to finish stopping a session (after a restart)`);
    await deps.sandboxes.destroy(vmid, true, operation);
  }
  store.tx(() => {
    if (session) {
      if (session.current_vmid === vmid)
        store.sessions.update(session.id, { current_vmid: null }, { expectCurrentVmid: vmid });
      const ws = store.workspaces.get(op.workspace_id);
      const owner = sessionLeaseOwner(session.id);
      if (ws?.lease_owner === owner && ws.lease_nonce && ws.attached_vmid === null)
        store.workspaceLeases.release(ws.id, owner, ws.lease_nonce);
      store.events.append({
        kind: "session.stopped",
        workspace_id: op.workspace_id,
        sandbox_vmid: vmid,
        msg: `session ${session.name} stopped: sandbox ${vmid} destroyed (finished after a restart)`,
        payload: { session: session.name, session_id: session.id },
      });
    }
    store.workspaceOps.finish(op.id);
  });
  return {
    outcome: "committed",
    message: `sandbox ${vmid} is destroyed${session ? ` and session ${session.name} is stopped` : ""}`,
  };
}
