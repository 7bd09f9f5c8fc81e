/**
 * `session resume` (design §12): a new sandbox of the session's profile, its workspace attached before
 * the first boot. A running session is refused; a session whose sandbox is gone is stopped.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { SandboxState } from "../../store/sandboxes.js";
import type { Session } from "../../store/sessions.js";
import type { Operation } from "../operation.js";
import { workspaceJson } from "../workspaces/core.js";
import {
  currentSandbox,
  exclusiveSession,
  type SessionDeps,
  sessionJson,
  startSessionSandbox,
} from "./common.js";
import type { SessionStarted } from "./create.js";

export function sessionRunning(session: Session, vmid: number, state?: SandboxState): AgentlabError {
  const startOver = `agentlab session stop ${session.name}, then agentlab session resume ${session.name}`;
  return new AgentlabError("CONFLICT", `session is running (sandbox ${vmid})`, {
    // A session runs while it has a sandbox, also a stopped one (sandbox stop, idle stop): starting
    // that one again is what the user most likely wants, and keeps its root disk.
    hint:
      state === "STOPPED"
        ? `its sandbox ${vmid} is stopped: agentlab sandbox start ${vmid}; to start over instead: ${startOver}`
        : `it already has a sandbox; to start over: ${startOver}`,
    details: { session: session.name, vmid, ...(state ? { state } : {}) },
  });
}

export function resumeSession(
  deps: SessionDeps,
  ref: string,
  ttlMinutes: number | undefined,
  op: Operation,
): Promise<SessionStarted> {
  return exclusiveSession(deps, ref, (session) => resumeLocked(deps, session, ttlMinutes, op));
}

/** Resume with the session's mutex held (branch resumes through here too). */
export async function resumeLocked(
  deps: SessionDeps,
  session: Session,
  ttlMinutes: number | undefined,
  op: Operation,
): Promise<SessionStarted> {
  const { store } = deps.ctx;
  const running = currentSandbox(deps, session);
  if (running !== undefined)
    throw sessionRunning(session, running, deps.ctx.store.sandboxes.get(running)?.state);
  if (session.current_vmid !== null) {
    // Its sandbox was destroyed meanwhile (reaper, sandbox destroy): forget it before starting anew.
    store.sessions.update(session.id, { current_vmid: null }, { expectCurrentVmid: session.current_vmid });
  }
  const sandbox = await startSessionSandbox(deps, session, ttlMinutes, op);
  store.events.append({
    kind: "session.resumed",
    workspace_id: session.workspace_id,
    sandbox_vmid: sandbox.vmid,
    msg: `session ${session.name} resumed on sandbox ${sandbox.vmid}`,
    payload: { session: session.name, session_id: session.id },
  });
  const row = store.sessions.require(session.id);
  return {
    session: sessionJson(deps, row),
    workspace: workspaceJson(store.workspaces.require(row.workspace_id)),
    sandbox,
  };
}
