/**
 * `session stop` (design §12): destroy the session's sandbox; the workspace and the session stay. The
 * sandbox's DESTROYED transaction records the workspace detached, releases `session:<id>` and clears
 * current_vmid, which is what lets `workspace snapshot restore` (or fsck, or fork) run next, as the
 * troubleshooting guide's "session stop → snapshot restore → session resume" sequence expects.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import { isProvisioning } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
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
        op.step("destroy", `destroying sandbox ${vmid} of session ${session.name}`);
        // Forced: whatever state the sandbox is in (FAILED, TIMEOUT, its VM already gone), the session
        // wants it gone; the workspace is safe either way because the sandbox never owns its volume.
        await deps.sandboxes.destroy(vmid, true, op);
        destroyed = vmid;
      }
      store.sessions.update(session.id, { current_vmid: null }, { expectCurrentVmid: vmid });
    }
    releaseSessionLease(deps, session);
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
