import { AgentlabError } from "../../../protocol/errors.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { VmRef } from "../../proxmox/types.js";
import { leaseHeldError, parseLeaseOwner, sandboxLeaseOwner } from "../../store/leases.js";
import type { Sandbox } from "../../store/sandboxes.js";
import type { Workspace } from "../../store/workspaces.js";
import { isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { referencingKeys, WORKSPACE_SLOT, type WorkspaceCore, workspaceJson } from "./core.js";

/** What workspace attachment needs from the sandbox service. */
export interface SandboxPort {
  get(vmid: number): Sandbox;
  /** Power a READY/RUNNING/SUSPENDED sandbox off the normal way (it ends STOPPED). */
  stop(vmid: number, op: Operation): Promise<unknown>;
  /** Run `fn` holding the sandbox's operation lock (take it after the workspace's, never before). */
  withVmLock<T>(vmid: number, fn: () => Promise<T>): Promise<T>;
}

export interface AttachResult {
  workspace: WorkspaceJson;
  vmid: number;
  slot: "scsi1";
  live: boolean;
  message: string;
}

export interface DetachResult {
  workspace: WorkspaceJson;
  vmid?: number;
  sandbox_stopped: boolean;
  message: string;
}

/** The drive value a workspace gets in a sandbox: no vzdump copy (the holder is the backup unit). */
export function workspaceDrive(volid: string): string {
  return `${volid},backup=0,discard=on`;
}

/**
 * Whether a held lease belongs to the attachment being made: the same sandbox, or the session whose
 * sandbox this is (upstream §4.3). Anything else blocks the attach.
 */
function leaseAllowsAttach(core: WorkspaceCore, owner: string, vmid: number): boolean {
  const parsed = parseLeaseOwner(owner);
  if (!parsed) return false;
  if (parsed.kind === "sandbox") return parsed.id === String(vmid);
  if (parsed.kind === "session") return core.ctx.store.sessions.get(parsed.id)?.current_vmid === vmid;
  return false;
}

function sandboxVm(core: WorkspaceCore, sandbox: Sandbox): VmRef {
  return { vmid: sandbox.vmid, node: sandbox.node ?? core.ctx.config.proxmox_node };
}

/**
 * Attach a workspace to a sandbox as scsi1 (design §5.2). The sandbox references the holder's volume;
 * it never owns it, so no destroy of the sandbox can free the workspace. The lease `sandbox:<vmid>`
 * (or the caller's session lease) is taken in the transaction that records the intent.
 */
export async function attachWorkspace(
  core: WorkspaceCore,
  sandboxes: SandboxPort,
  ref: string,
  vmid: number,
  op: Operation,
  options: { leaseOwner?: string; sessionId?: string } = {},
): Promise<AttachResult> {
  const { ctx } = core;
  const { store, backend } = ctx;
  const initial = core.require(ref);
  return core.exclusive(initial, () =>
    sandboxes.withVmLock(vmid, async () => {
      const ws = core.reload(initial.id);
      core.requireReady(ws);
      if (ws.attached_vmid !== null) {
        throw new AgentlabError("WORKSPACE_ATTACHED", "workspace already attached", {
          hint:
            ws.attached_vmid === vmid
              ? `it is already attached to sandbox ${vmid}`
              : `detach it first: agentlab workspace detach ${ws.name}`,
          details: { workspace_id: ws.id, workspace_name: ws.name, attached_vmid: ws.attached_vmid },
        });
      }
      const sandbox = sandboxes.get(vmid);
      if (sandbox.state === "DESTROYED" || !sandbox.vm_created) {
        throw new AgentlabError(
          "CONFLICT",
          `sandbox ${vmid} has no VM to attach to (state ${sandbox.state})`,
          {
            hint: "attach to a sandbox that exists: agentlab sandbox list",
            details: { vmid, state: sandbox.state },
          },
        );
      }
      const other = store.workspaces.byAttachedVmid(vmid);
      if (other) {
        throw new AgentlabError("CONFLICT", "vmid already has workspace attached", {
          hint: `sandbox ${vmid} has workspace ${other.name}; detach it first: agentlab workspace detach ${other.name}`,
          details: { vmid, workspace: other.name },
        });
      }
      const vm = sandboxVm(core, sandbox);
      const holder = core.holder(ws);
      if (vm.node !== holder.node) {
        throw new AgentlabError(
          "CONFLICT",
          `workspace lives on node ${holder.node}, sandbox ${vmid} on ${vm.node}; local storage cannot be shared`,
          {
            hint: `create the sandbox on ${holder.node} (a profile whose template is there)`,
            details: { workspace_node: holder.node, sandbox_node: vm.node },
          },
        );
      }
      const holderStatus = await backend.status(holder);
      if (holderStatus.state !== "stopped") {
        throw new AgentlabError(
          "CONFLICT",
          `holder VM ${holder.vmid} of workspace ${ws.name} is ${holderStatus.state}`,
          {
            hint: `two VMs must never use one disk: stop it first (qm stop ${holder.vmid}), after making sure nothing uses it`,
            details: { holder_vmid: holder.vmid, state: holderStatus.state },
          },
        );
      }
      const before = await backend.getConfig(vm);
      if (before[WORKSPACE_SLOT] !== undefined) {
        throw new AgentlabError(
          "CONFLICT",
          `sandbox ${vmid} already has a disk in ${WORKSPACE_SLOT}: ${before[WORKSPACE_SLOT]}`,
          {
            hint: `remove it first (qm set ${vmid} --delete ${WORKSPACE_SLOT}) if it is not needed`,
            details: { vmid, slot: WORKSPACE_SLOT, value: String(before[WORKSPACE_SLOT]) },
          },
        );
      }
      const owner = options.leaseOwner ?? sandboxLeaseOwner(vmid);
      const intent = store.tx(() => {
        const got = store.workspaceLeases.acquire(
          ws.id,
          owner,
          ctx.config.workspace_lease_ttl_ms,
          core.now(),
        );
        if (!got.ok && !(got.lease_owner && leaseAllowsAttach(core, got.lease_owner, vmid))) {
          throw leaseHeldError(ws, got, core.describeOwner(got.lease_owner));
        }
        return store.workspaceOps.begin({
          workspace_id: ws.id,
          kind: "attach",
          step: "begin",
          params: { vmid, node: vm.node },
          ...(options.sessionId ? { session_id: options.sessionId } : {}),
        });
      });
      const running = (await backend.status(vm)).state !== "stopped";
      core.step(op, ws, "attach", `attaching workspace ${ws.name} to sandbox ${vmid} as ${WORKSPACE_SLOT}`);
      let live = false;
      await core.withOp(
        intent,
        async () => {
          await backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) });
          const after = await backend.getConfig(vm);
          if (!referencingKeys(after, ws.volid).includes(WORKSPACE_SLOT)) {
            throw new AgentlabError(
              "PROXMOX_ERROR",
              `sandbox ${vmid}'s config does not show the workspace after the change`,
              {
                details: { vmid, volid: ws.volid },
              },
            );
          }
          if (running) {
            const current = await backend.getConfig(vm, { current: true });
            live = referencingKeys(current, ws.volid).includes(WORKSPACE_SLOT);
          }
        },
        {
          commit: () => {
            store.workspaces.attach(ws.id, vmid);
            core.event(ws, "workspace.attached", `attached to sandbox ${vmid} as ${WORKSPACE_SLOT}`, {
              vmid,
              live,
            });
          },
          undo: async () => {
            // Nothing to put back if the change never landed; a config that has it loses it again.
            // The lease goes too unless it belonged to the caller's session before this attach.
            const cur = store.workspaces.get(ws.id);
            if (cur?.lease_owner === owner && cur.lease_nonce && !options.leaseOwner) {
              store.workspaceLeases.release(ws.id, owner, cur.lease_nonce);
            }
            try {
              const config = await backend.getConfig(vm);
              if (referencingKeys(config, ws.volid).length > 0)
                await backend.setConfig(vm, {}, [WORKSPACE_SLOT]);
            } catch (error) {
              op.log.warn({ err: error, vmid }, "could not undo a failed attach");
            }
          },
        },
      );
      const message = !running
        ? `workspace ${ws.name} attached to sandbox ${vmid} as ${WORKSPACE_SLOT}; it is mounted at /work when the sandbox starts`
        : `workspace ${ws.name} attached as ${WORKSPACE_SLOT}; it is mounted at /work at the next boot of sandbox ${vmid}${live ? "" : " (Proxmox applies the disk at the next cold start)"}`;
      return { workspace: workspaceJson(core.reload(ws.id)), vmid, slot: WORKSPACE_SLOT, live, message };
    }),
  );
}

/**
 * Record in the database that a sandbox no longer has its workspace, and release the attachment lease
 * (the sandbox's, or its session's). For callers that already dropped or lost the reference: detach,
 * and sandbox destroy, where the VM and every reference in it are gone (design §5.5).
 */
export function recordDetached(core: WorkspaceCore, ws: Workspace, vmid: number): Workspace {
  const { store } = core.ctx;
  return store.tx(() => {
    const detached = store.workspaces.detach(ws.id, vmid);
    const owner = detached.lease_owner;
    if (owner && detached.lease_nonce) {
      const parsed = parseLeaseOwner(owner);
      const attachmentLease =
        (parsed?.kind === "sandbox" && parsed.id === String(vmid)) ||
        (parsed?.kind === "session" && store.sessions.get(parsed.id)?.current_vmid === vmid);
      if (attachmentLease) store.workspaceLeases.release(ws.id, owner, detached.lease_nonce);
    }
    core.event(ws, "workspace.detached", `detached from sandbox ${vmid}`, { vmid });
    return store.workspaces.require(ws.id);
  });
}

/**
 * Detach a workspace from its sandbox (design §5.3). A running sandbox is shut down first unless `hot`,
 * because unplugging a mounted ext4 is what corrupts it; the reference is dropped without force, and the
 * result is verified before the database says detached.
 */
export async function detachWorkspace(
  core: WorkspaceCore,
  sandboxes: SandboxPort,
  ref: string,
  hot: boolean,
  op: Operation,
): Promise<DetachResult> {
  const { ctx } = core;
  const { store, backend } = ctx;
  const initial = core.require(ref);
  return core.exclusive(initial, async () => {
    const ws = core.reload(initial.id);
    const vmid = ws.attached_vmid;
    if (vmid === null) {
      return {
        workspace: workspaceJson(ws),
        sandbox_stopped: false,
        message: `workspace ${ws.name} is not attached`,
      };
    }
    // A session's workspace leaves its sandbox only through the session (session stop) or a rebind,
    // which moves the session first: a bare detach would leave a "running" session without its
    // workspace and the lease with nobody (issue 16 item 6).
    const session = store.sessions.byCurrentVmid(vmid);
    if (session) {
      throw new AgentlabError(
        "CONFLICT",
        `workspace ${ws.name} is attached to sandbox ${vmid} of session ${session.name}; detaching it would leave the session without its workspace`,
        {
          hint: `agentlab session stop ${session.name} (stops the sandbox and detaches the workspace; session resume ${session.name} brings both back), or agentlab workspace rebind ${ws.name} --profile P to move the session to a new sandbox`,
          details: { workspace: ws.name, attached_vmid: vmid, session: session.name },
        },
      );
    }
    const sandbox = store.sandboxes.get(vmid);
    const vm: VmRef = { vmid, node: sandbox?.node ?? ws.node ?? ctx.config.proxmox_node };
    let status: Awaited<ReturnType<typeof backend.status>> | undefined;
    try {
      status = await backend.status(vm);
    } catch (error) {
      if (!isVmNotFound(error)) throw error;
    }
    if (!status) {
      // The VM is gone; it never owned the volume, so only the record is left to fix.
      const detached = recordDetached(core, ws, vmid);
      return {
        workspace: workspaceJson(detached),
        vmid,
        sandbox_stopped: false,
        message: `workspace ${ws.name} detached (sandbox ${vmid}'s VM no longer exists)`,
      };
    }
    const running = status.state !== "stopped";
    const intent = store.workspaceOps.begin({
      workspace_id: ws.id,
      kind: "detach",
      step: "begin",
      params: { vmid, hot },
    });
    let stopped = false;
    await core.withOp(
      intent,
      async () => {
        if (running && !hot) {
          core.step(op, ws, "shutdown", `shutting sandbox ${vmid} down so /work is unmounted cleanly`);
          // The sandbox's own stop takes its lock; the unplug below takes it again afterwards.
          if (sandbox && ["READY", "RUNNING", "SUSPENDED"].includes(sandbox.state))
            await sandboxes.stop(vmid, op);
          else await backend.shutdown(vm, { timeoutSeconds: 120, forceStop: true }, { signal: op.signal });
          stopped = true;
        }
        core.setStep(intent, "unplug");
        await sandboxes.withVmLock(vmid, async () => {
          const config = await backend.getConfig(vm);
          const keys = referencingKeys(config, ws.volid);
          core.step(op, ws, "detach", `removing ${keys.join(", ") || WORKSPACE_SLOT} from sandbox ${vmid}`);
          if (keys.length > 0) await backend.setConfig(vm, {}, keys);
          let left = referencingKeys(await backend.getConfig(vm), ws.volid);
          if (left.length === 0 && running && !stopped) {
            left = referencingKeys(await backend.getConfig(vm, { current: true }), ws.volid);
          }
          if (left.length > 0) {
            throw new AgentlabError(
              "CONFLICT",
              `hot-unplug of ${left.join(", ")} did not complete; the guest still has the disk`,
              {
                hint: `stop the sandbox (agentlab sandbox stop ${vmid}) and detach again`,
                details: { vmid, keys: left },
              },
            );
          }
        });
      },
      {
        commit: () => {
          // recordDetached opens its own transaction; nested, it becomes a savepoint of this one.
          recordDetached(core, ws, vmid);
        },
      },
    );
    const message = stopped
      ? `workspace ${ws.name} detached; sandbox ${vmid} was shut down to detach it safely (start it again: agentlab sandbox start ${vmid})`
      : `workspace ${ws.name} detached from sandbox ${vmid}`;
    return { workspace: workspaceJson(core.reload(ws.id)), vmid, sandbox_stopped: stopped, message };
  });
}
