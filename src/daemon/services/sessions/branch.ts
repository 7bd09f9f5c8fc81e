/**
 * `session branch <branch>` (upstream §4.4, design §12): the session named `branch-<slug>`. Resumed if
 * it exists and is stopped, left alone if it runs, otherwise created with a new 80 GiB workspace of the
 * same name on the default workspace storage.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { Operation } from "../operation.js";
import { sandboxJson } from "../sandbox/json.js";
import { workspaceJson } from "../workspaces/core.js";
import {
  currentSandbox,
  DEFAULT_SESSION_WORKSPACE_GB,
  exclusiveSession,
  type SessionDeps,
  sessionJson,
} from "./common.js";
import { createSession } from "./create.js";
import { resumeLocked } from "./resume.js";

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

export async function branchSession(
  deps: SessionDeps,
  branch: string,
  profile: string,
  op: Operation,
): Promise<BranchResult> {
  const { store } = deps.ctx;
  const name = `${PREFIX}${branchSlug(branch)}`;
  if (!store.sessions.getByName(name)) {
    const started = await createSession(
      deps,
      { name, profile, workspace_create: name, workspace_size_gb: DEFAULT_SESSION_WORKSPACE_GB, branch },
      op,
    );
    return { ...started, action: "created" };
  }
  return exclusiveSession(deps, name, async (session) => {
    if (session.branch !== null && session.branch !== branch) {
      throw new AgentlabError(
        "CONFLICT",
        `session ${name} belongs to branch "${session.branch}", not "${branch}"`,
        {
          hint: `both branches name the same session; use agentlab session create --name <other> --profile ${profile} --workspace-create <other> --branch "${branch}"`,
          details: { session: name, branch: session.branch, requested: branch },
        },
      );
    }
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
