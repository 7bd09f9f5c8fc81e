/**
 * `session fork` (design §12): a new session on a fork of a stopped session's workspace. The data is
 * copied (copy-on-write where the storage allows, workspace fork says which), then the new session
 * starts like `session create --workspace <fork>`.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import { WorkspaceName } from "../../../protocol/workspace.js";
import type { Operation } from "../operation.js";
import { requireProfile, type SessionDeps } from "./common.js";
import { createSession, keptWorkspace, requireNewSessionName, type SessionStarted } from "./create.js";

export interface ForkSessionParams {
  name: string;
  profile?: string | undefined;
  branch?: string | undefined;
}

/**
 * The fork's workspace is named after the new session. Session names may hold `.` and `_`, which a
 * workspace name (the holder VM's DNS name) may not: those become `-`.
 */
export function workspaceNameFor(session: string): string {
  return session
    .replace(/[._]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 60)
    .replace(/-+$/, "");
}

export async function forkSession(
  deps: SessionDeps,
  ref: string,
  params: ForkSessionParams,
  op: Operation,
): Promise<SessionStarted> {
  const { ctx, workspaces } = deps;
  const source = ctx.store.sessions.require(ref);
  const profile = params.profile ?? source.profile;
  requireProfile(deps, profile);
  requireNewSessionName(deps, params.name);
  const wsName = workspaceNameFor(params.name);
  if (!WorkspaceName.safeParse(wsName).success) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `session name "${params.name}" does not give a usable workspace name ("${wsName}")`,
      { hint: "use lower-case letters, digits and - in the new session's name" },
    );
  }
  if (ctx.store.workspaces.getByName(wsName)) {
    throw new AgentlabError("CONFLICT", "workspace already exists", {
      hint: `the fork's workspace is named after the new session; choose another session name than ${params.name}`,
      details: { name: wsName },
    });
  }
  const ws = ctx.store.workspaces.require(source.workspace_id);
  // The troubleshooting guide's refusal, naming the session to stop (design §12).
  workspaces.core.requireDetached(ws, "fork");
  op.step("fork", `forking workspace ${ws.name} into ${wsName}`);
  const forked = await workspaces.fork(ws.id, { name: wsName }, op);
  const branch = params.branch ?? source.branch ?? undefined;
  try {
    return await createSession(
      deps,
      { name: params.name, profile, workspace: forked.id, ...(branch !== undefined ? { branch } : {}) },
      op,
    );
  } catch (error) {
    throw keptWorkspace(error, forked.name, { name: params.name, profile });
  }
}
