import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { DaemonContext } from "../../context.js";
import { KeyedMutex } from "../../locks.js";
import type { Session } from "../../store/sessions.js";
import type { Operation } from "../operation.js";
import { sandboxJson } from "../sandbox/json.js";
import type { SandboxService } from "../sandboxes.js";
import { workspaceJson } from "../workspaces/core.js";
import type { WorkspaceService } from "../workspaces/service.js";
import {
  type BranchResult,
  branchSession,
  branchSessionForJob,
  branchSessionForJobCheck,
  startJobSandbox,
} from "./branch.js";
import { currentSandbox, type SessionDeps, sessionJson } from "./common.js";
import { type CreateSessionParams, createSession, type SessionStarted } from "./create.js";
import { type ForkSessionParams, forkSession } from "./fork.js";
import { resumeSession } from "./resume.js";
import { recoverSessionStop, type SessionStopped, stopSession } from "./stop.js";

/**
 * Sessions as the RPC handlers see them (docs/workspaces-design.md §12): a named workspace + profile
 * (+ branch label) that is running while it has a sandbox. Each operation lives in its own module of
 * ./; this class owns what they share: the sandbox and workspace services and the per-session mutex.
 */
export class SessionService {
  private readonly deps: SessionDeps;

  constructor(ctx: DaemonContext, sandboxes: SandboxService, workspaces: WorkspaceService) {
    this.deps = { ctx, sandboxes, workspaces, locks: new KeyedMutex() };
    // A stop a restart interrupted is finished by start-up recovery (after sandbox recovery).
    workspaces.recovery.register("session_stop", (op, operation) =>
      recoverSessionStop(this.deps, op, operation),
    );
  }

  create(params: CreateSessionParams, op: Operation): Promise<SessionStarted> {
    return createSession(this.deps, params, op);
  }

  list(): { sessions: SessionJson[] } {
    return { sessions: this.deps.ctx.store.sessions.list().map((s) => sessionJson(this.deps, s)) };
  }

  show(ref: string): { session: SessionJson; workspace?: WorkspaceJson; sandbox?: SandboxJson } {
    const { store } = this.deps.ctx;
    const session = store.sessions.require(ref);
    const workspace = store.workspaces.get(session.workspace_id);
    const vmid = currentSandbox(this.deps, session);
    const sandbox = vmid !== undefined ? store.sandboxes.get(vmid) : undefined;
    return {
      session: sessionJson(this.deps, session),
      ...(workspace ? { workspace: workspaceJson(workspace) } : {}),
      ...(sandbox ? { sandbox: sandboxJson(sandbox) } : {}),
    };
  }

  stop(ref: string, op: Operation): Promise<SessionStopped> {
    return stopSession(this.deps, ref, op);
  }

  resume(ref: string, ttlMinutes: number | undefined, op: Operation): Promise<SessionStarted> {
    return resumeSession(this.deps, ref, ttlMinutes, op);
  }

  fork(ref: string, params: ForkSessionParams, op: Operation): Promise<SessionStarted> {
    return forkSession(this.deps, ref, params, op);
  }

  branch(branch: string, profile: string, op: Operation): Promise<BranchResult> {
    return branchSession(this.deps, branch, profile, op);
  }

  /** job run --branch, checks only: the branch session if it exists (job validate). */
  branchForJobCheck(branch: string, profile: string): { name: string; session?: Session } {
    return branchSessionForJobCheck(this.deps, branch, profile);
  }

  /** job run --branch: the branch session, created with its workspace (no sandbox) when missing. */
  branchForJob(branch: string, profile: string, op: Operation): Promise<Session> {
    return branchSessionForJob(this.deps, branch, profile, op);
  }

  /** A --branch job's sandbox, started as the session's sandbox. */
  startJobSandbox(
    sessionId: string,
    params: { name: string; keepalive: boolean; ttl_minutes?: number | undefined; jobId: string },
    op: Operation,
  ): Promise<SandboxJson> {
    return startJobSandbox(this.deps, sessionId, params, op);
  }
}
