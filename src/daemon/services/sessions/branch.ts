/**
 * `session branch <branch>` (upstream §4.4, design §12): the session named `branch-<slug>`. Resumed if
 * it exists and is stopped, left alone if it runs, otherwise created with a new 80 GiB workspace of the
 * same name on the default workspace storage.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { Session } from "../../store/sessions.js";
import type { Operation } from "../operation.js";
import { sandboxJson } from "../sandbox/json.js";
import { workspaceJson } from "../workspaces/core.js";
import {
  currentSandbox,
  DEFAULT_SESSION_WORKSPACE_GB,
  exclusiveSession,
  requireProfile,
  type SessionDeps,
  sessionJson,
  startSessionSandbox,
} from "./common.js";
import { createSession, keptWorkspace } from "./create.js";
import { resumeLocked, sessionRunning } from "./resume.js";

export interface BranchResult {
  session: SessionJson;
  workspace: WorkspaceJson;
  sandbox?: SandboxJson;
  action: "created" | "resumed" | "running";
}

const PREFIX = "branch-";
/** The longest slug whose session and workspace names both stay legal (workspace names: 60). */
const MAX_SLUG = 60 - PREFIX.length;

/** `feature/Add-Login` → `feature-add-login`: lower case, every other run of characters one `-`. */
export function branchSlug(branch: string): string {
  const slug = branch
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, MAX_SLUG)
    .replace(/-+$/, "");
  if (slug === "") {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `branch "${branch}" has no letters or digits to name a session after`,
      {
        hint: "give the branch's name, e.g. agentlab session branch feature/login --profile <profile>",
      },
    );
  }
  return slug;
}

/** `branch-<slug>`: the name of the session of `branch`, and of the workspace it creates. */
export function branchSessionName(branch: string): string {
  return `${PREFIX}${branchSlug(branch)}`;
}

/** Two branches whose slugs agree name one session: the one that is not its label is refused. */
function requireBranchLabel(session: Session, branch: string, profile: string): void {
  if (session.branch === null || session.branch === branch) return;
  throw new AgentlabError(
    "CONFLICT",
    `session ${session.name} belongs to branch "${session.branch}", not "${branch}"`,
    {
      hint: `both branches name the same session; use agentlab session create --name <other> --profile ${profile} --workspace-create <other> --branch "${branch}"`,
      details: { session: session.name, branch: session.branch, requested: branch },
    },
  );
}

export async function branchSession(
  deps: SessionDeps,
  branch: string,
  profile: string,
  op: Operation,
): Promise<BranchResult> {
  const { store } = deps.ctx;
  const name = branchSessionName(branch);
  if (!store.sessions.getByName(name)) {
    const started = await createSession(
      deps,
      { name, profile, workspace_create: name, workspace_size_gb: DEFAULT_SESSION_WORKSPACE_GB, branch },
      op,
    );
    return { ...started, action: "created" };
  }
  return exclusiveSession(deps, name, async (session) => {
    requireBranchLabel(session, branch, profile);
    const running = currentSandbox(deps, session);
    if (running !== undefined) {
      return {
        session: sessionJson(deps, session),
        workspace: workspaceJson(store.workspaces.require(session.workspace_id)),
        sandbox: sandboxJson(store.sandboxes.get(running)!),
        action: "running" as const,
      };
    }
    const resumed = await resumeLocked(deps, session, undefined, op);
    return { ...resumed, action: "resumed" as const };
  });
}

/**
 * What `job run --branch` would find, checked without changing anything (job validate, and job run
 * before it creates anything): the session `branch-<slug>` if it exists, with its branch label and its
 * profile agreeing with the job's; otherwise the profile exists and the name of the workspace the session
 * would be created with is free.
 */
export function branchSessionForJobCheck(
  deps: SessionDeps,
  branch: string,
  profile: string,
): { name: string; session?: Session } {
  const { store } = deps.ctx;
  const name = branchSessionName(branch);
  requireProfile(deps, profile);
  const session = store.sessions.getByName(name);
  if (!session) {
    if (store.workspaces.getByName(name)) {
      throw new AgentlabError(
        "CONFLICT",
        `workspace ${name} already exists, but no session ${name} uses it`,
        {
          hint: `make the branch session on it first: agentlab session create --name ${name} --profile ${profile} --workspace ${name} --branch "${branch}", then agentlab session stop ${name}; or destroy the workspace`,
          details: { session: name, workspace: name, branch },
        },
      );
    }
    return { name };
  }
  requireBranchLabel(session, branch, profile);
  if (session.profile !== profile) {
    throw new AgentlabError(
      "CONFLICT",
      `session ${name} of branch "${branch}" uses profile ${session.profile}, not ${profile}`,
      {
        hint: `run the job with --profile ${session.profile}: a branch session keeps one profile`,
        details: { session: name, profile: session.profile, requested: profile },
      },
    );
  }
  return { name, session };
}

/**
 * The session `branch-<slug>` of a `job run --branch`, created if missing (a new 80 GiB workspace of the
 * same name on the default workspace storage, like session branch) but, unlike session branch, without a
 * sandbox: the job's own sandbox becomes the session's (startJobSandbox). A label left empty by session
 * create becomes `branch`, so the runner always learns the branch from the session. Creation is
 * serialised per name, so two jobs for a new branch make one session.
 */
export function branchSessionForJob(
  deps: SessionDeps,
  branch: string,
  profile: string,
  op: Operation,
): Promise<Session> {
  const { ctx } = deps;
  const { store } = ctx;
  const name = branchSessionName(branch);
  return deps.locks.run(`branch:${name}`, async () => {
    const found = branchSessionForJobCheck(deps, branch, profile).session;
    if (found) {
      if (found.branch === null)
        return store.sessions.update(found.id, { branch }) ?? store.sessions.require(found.id);
      return found;
    }
    op.step("workspace", `creating workspace ${name} for the session of branch ${branch}`);
    const workspace = await deps.workspaces.create(
      { name, size_gb: DEFAULT_SESSION_WORKSPACE_GB, storage: ctx.config.workspace_storage },
      op,
    );
    try {
      const session = store.sessions.insert({ name, workspace_id: workspace.id, profile, branch });
      store.events.append({
        kind: "session.created",
        workspace_id: workspace.id,
        msg: `session ${name} created for the jobs of branch ${branch}; each job's sandbox becomes its sandbox`,
        payload: { session: name, session_id: session.id, branch },
      });
      return session;
    } catch (error) {
      throw keptWorkspace(error, workspace.name, { name, profile });
    }
  });
}

/**
 * Provision a job's sandbox as the session's sandbox: the workspace attached before the first boot under
 * the session's lease, current_vmid pointing at it from its reservation. A session that is running
 * already (a sandbox of its own, or a kept job sandbox) is refused: one sandbox per session.
 */
export function startJobSandbox(
  deps: SessionDeps,
  sessionId: string,
  params: { name: string; keepalive: boolean; ttl_minutes?: number | undefined; jobId: string },
  op: Operation,
): Promise<SandboxJson> {
  const { store } = deps.ctx;
  return exclusiveSession(deps, sessionId, async (session) => {
    const running = currentSandbox(deps, session);
    if (running !== undefined)
      throw sessionRunning(session, running, deps.ctx.store.sandboxes.get(running)?.state);
    if (session.current_vmid !== null) {
      // Its sandbox was destroyed meanwhile (reaper, sandbox destroy): forget it before starting anew.
      store.sessions.update(session.id, { current_vmid: null }, { expectCurrentVmid: session.current_vmid });
    }
    return startSessionSandbox(deps, session, params.ttl_minutes, op, {
      name: params.name,
      keepalive: params.keepalive,
      jobId: params.jobId,
    });
  });
}
