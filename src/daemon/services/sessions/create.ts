/**
 * `session create` (design §12): the session row, then a sandbox with the workspace attached before its
 * first boot. With workspace_create the workspace is made first; if the session then fails, the new
 * workspace is kept (it may already be worth something) and the error names it.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import { SESSION_ID_RE } from "../../store/sessions.js";
import type { Operation } from "../operation.js";
import { workspaceJson } from "../workspaces/core.js";
import {
  DEFAULT_SESSION_WORKSPACE_GB,
  releaseSessionLease,
  requireProfile,
  type SessionDeps,
  sessionJson,
  startSessionSandbox,
} from "./common.js";

export interface CreateSessionParams {
  name: string;
  profile: string;
  workspace?: string | undefined;
  workspace_create?: string | undefined;
  workspace_size_gb?: number | undefined;
  workspace_storage?: string | undefined;
  branch?: string | undefined;
  ttl_minutes?: number | undefined;
}

export interface SessionStarted {
  session: SessionJson;
  workspace: WorkspaceJson;
  sandbox: SandboxJson;
}

/** The refusals that need no Proxmox call: made before a workspace is created or a VM cloned. */
export function requireNewSessionName(deps: SessionDeps, name: string): void {
  if (SESSION_ID_RE.test(name)) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `invalid session name "${name}": it looks like a session id (session_<16 hex>)`,
      {
        hint: "choose a name that does not start with session_ followed by 16 hex digits",
      },
    );
  }
  if (deps.ctx.store.sessions.getByName(name)) {
    throw new AgentlabError("CONFLICT", "session already exists", {
      hint: `choose another name, or resume it: agentlab session resume ${name}`,
      details: { session_name: name },
    });
  }
}

export async function createSession(
  deps: SessionDeps,
  params: CreateSessionParams,
  op: Operation,
): Promise<SessionStarted> {
  const { ctx, workspaces } = deps;
  if ((params.workspace === undefined) === (params.workspace_create === undefined)) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      "give exactly one of workspace (existing) or workspace_create (new)",
    );
  }
  requireNewSessionName(deps, params.name);
  requireProfile(deps, params.profile);
  if (params.workspace !== undefined) {
    const ws = ctx.store.workspaces.require(params.workspace);
    return startNewSession(deps, { ...params, workspace: ws.id }, op);
  }
  const wsName = params.workspace_create!;
  if (ctx.store.workspaces.getByName(wsName)) {
    throw new AgentlabError("CONFLICT", "workspace already exists", {
      hint: `use it: agentlab session create --name ${params.name} --profile ${params.profile} --workspace ${wsName}`,
      details: { name: wsName },
    });
  }
  op.step("workspace", `creating workspace ${wsName}`);
  const created = await workspaces.create(
    {
      name: wsName,
      size_gb: params.workspace_size_gb ?? DEFAULT_SESSION_WORKSPACE_GB,
      storage: params.workspace_storage ?? ctx.config.workspace_storage,
    },
    op,
  );
  try {
    return await startNewSession(deps, { ...params, workspace: created.id }, op);
  } catch (error) {
    throw keptWorkspace(error, created.name, params);
  }
}

/** The session failed after its new workspace was made: same error, plus where the workspace is. */
export function keptWorkspace(
  error: unknown,
  workspace: string,
  params: { name: string; profile: string },
): AgentlabError {
  const base =
    error instanceof AgentlabError
      ? error
      : new AgentlabError("INTERNAL", error instanceof Error ? error.message : String(error));
  return new AgentlabError(
    base.code,
    `${base.message}; the new workspace ${workspace} was kept: reuse it: --workspace ${workspace}`,
    {
      hint: `agentlab session create --name ${params.name} --profile ${params.profile} --workspace ${workspace}`,
      details: { ...base.details, workspace },
      cause: error,
    },
  );
}

/**
 * Insert the session and start its sandbox. A start that fails deletes the session again, so a failed
 * create leaves nothing but (with workspace_create) the workspace.
 */
async function startNewSession(
  deps: SessionDeps,
  params: CreateSessionParams & { workspace: string },
  op: Operation,
): Promise<SessionStarted> {
  const { store } = deps.ctx;
  const session = store.sessions.insert({
    name: params.name,
    workspace_id: params.workspace,
    profile: params.profile,
    branch: params.branch ?? null,
  });
  return deps.locks.run(`session:${session.id}`, async () => {
    let sandbox: SandboxJson;
    try {
      sandbox = await startSessionSandbox(deps, session, params.ttl_minutes, op);
    } catch (error) {
      releaseSessionLease(deps, session);
      store.sessions.delete(session.id);
      throw error;
    }
    store.events.append({
      kind: "session.created",
      workspace_id: session.workspace_id,
      sandbox_vmid: sandbox.vmid,
      msg: `session ${session.name} created on sandbox ${sandbox.vmid}`,
      payload: { session: session.name, session_id: session.id },
    });
    const row = store.sessions.require(session.id);
    return {
      session: sessionJson(deps, row),
      workspace: workspaceJson(store.workspaces.require(row.workspace_id)),
      sandbox,
    };
  });
}
