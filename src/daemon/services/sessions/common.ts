/**
 * What every session operation shares: the services it drives, the per-session mutex, the wire form
 * with the derived state, and starting a sandbox for a session with its workspace attached before the
 * first boot (docs/workspaces-design.md §12).
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { Session as SessionJson } from "../../../protocol/session.js";
import type { DaemonContext } from "../../context.js";
import type { KeyedMutex } from "../../locks.js";
import { sessionLeaseOwner } from "../../store/leases.js";
import type { Session } from "../../store/sessions.js";
import type { Operation } from "../operation.js";
import type { CreateParams } from "../sandbox/provision.js";
import type { SandboxService } from "../sandboxes.js";
import type { WorkspaceService } from "../workspaces/service.js";

export interface SessionDeps {
  ctx: DaemonContext;
  sandboxes: SandboxService;
  workspaces: WorkspaceService;
  /** `session:<id>` keys: one operation per session at a time. */
  locks: KeyedMutex;
}

/** Default size of a workspace a session creates (upstream §4.4: 80 GB). */
export const DEFAULT_SESSION_WORKSPACE_GB = 80;

/**
 * The sandbox a session is running on: its current_vmid names a sandbox that is not DESTROYED (design
 * §11.1). A session pointing at a destroyed sandbox is stopped.
 */
export function currentSandbox(deps: SessionDeps, session: Session): number | undefined {
  if (session.current_vmid === null) return undefined;
  const sandbox = deps.ctx.store.sandboxes.get(session.current_vmid);
  return sandbox && sandbox.state !== "DESTROYED" ? sandbox.vmid : undefined;
}

export function sessionJson(deps: SessionDeps, session: Session): SessionJson {
  const workspace = deps.ctx.store.workspaces.get(session.workspace_id);
  const running = currentSandbox(deps, session);
  return {
    id: session.id,
    name: session.name,
    state: running !== undefined ? "running" : "stopped",
    workspace_id: session.workspace_id,
    ...(workspace ? { workspace_name: workspace.name } : {}),
    profile: session.profile,
    ...(session.branch ? { branch: session.branch } : {}),
    ...(running !== undefined ? { current_vmid: running } : {}),
    created_at: session.created_at.toISOString(),
    updated_at: session.updated_at.toISOString(),
  };
}

/** Run `fn` holding the session's mutex, on its row as read once the mutex is held. */
export function exclusiveSession<T>(
  deps: SessionDeps,
  ref: string,
  fn: (session: Session) => Promise<T>,
): Promise<T> {
  const initial = deps.ctx.store.sessions.require(ref);
  return deps.locks.run(`session:${initial.id}`, () => fn(deps.ctx.store.sessions.require(initial.id)));
}

export function requireProfile(deps: SessionDeps, name: string): void {
  if (deps.ctx.profiles.some((p) => p.name === name)) return;
  const names = deps.ctx.profiles.map((p) => p.name).sort();
  throw new AgentlabError("PROFILE_NOT_FOUND", `unknown profile "${name}"`, {
    hint:
      names.length > 0
        ? `loaded profiles: ${names.join(", ")}`
        : "no profiles are loaded: add YAML files to profiles_dir",
    details: { profile: name, profiles: names },
  });
}

/**
 * Provision a sandbox of the session's profile with its workspace attached as scsi1 before the first
 * boot. The session's lease `session:<id>` is taken in the transaction that records the sandbox, and the
 * session points at the sandbox from then on, so `session stop` can always find what to take down. A
 * failed provisioning is rolled back, and the rollback lets go of the lease and of current_vmid. `extra`
 * carries what a job's sandbox has besides (job run --branch: its name, keepalive and the job to bind).
 */
export function startSessionSandbox(
  deps: SessionDeps,
  session: Session,
  ttlMinutes: number | undefined,
  op: Operation,
  extra: Pick<CreateParams, "name" | "keepalive" | "jobId"> = {},
): Promise<SandboxJson> {
  const { store } = deps.ctx;
  return deps.sandboxes.create(
    {
      ...extra,
      profile: session.profile,
      ...(ttlMinutes !== undefined ? { ttl_minutes: ttlMinutes } : {}),
    },
    op,
    {
      ref: session.workspace_id,
      leaseOwner: sessionLeaseOwner(session.id),
      sessionId: session.id,
      onReserved: (vmid) => {
        store.sessions.update(session.id, { current_vmid: vmid });
        store.events.append({
          kind: "session.sandbox",
          sandbox_vmid: vmid,
          workspace_id: session.workspace_id,
          msg: `sandbox ${vmid} started for session ${session.name}`,
          payload: { session: session.name, session_id: session.id },
        });
      },
    },
  );
}

/**
 * Let go of the session lease when the session has no sandbox: stop, a failed start. The DESTROYED
 * transaction already does it when a sandbox goes; this catches a lease left by an interrupted start.
 */
export function releaseSessionLease(deps: SessionDeps, session: Session): void {
  const { store } = deps.ctx;
  const owner = sessionLeaseOwner(session.id);
  store.tx(() => {
    const ws = store.workspaces.get(session.workspace_id);
    if (ws?.lease_owner === owner && ws.lease_nonce)
      store.workspaceLeases.release(ws.id, owner, ws.lease_nonce);
  });
}
