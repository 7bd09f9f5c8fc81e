import { AgentlabError } from "../../../protocol/errors.js";
import type { Workspace as WorkspaceJson } from "../../../protocol/workspace.js";
import type { DaemonContext } from "../../context.js";
import type { KeyedMutex } from "../../locks.js";
import type { VmRef } from "../../proxmox/types.js";
import {
  type LeaseOwnerKind,
  leaseHeldError,
  TEMP_LEASE_TTL_MS,
  tempLeaseOwner,
} from "../../store/leases.js";
import type { WorkspaceOp, WorkspaceOpKind } from "../../store/workspace-ops.js";
import type { Workspace } from "../../store/workspaces.js";
import type { Operation } from "../operation.js";

/** Tag of holder VMs: not `agentlab`, so the sandbox inventory never offers to destroy one. */
export const HOLDER_TAG = "agentlab-ws";
/** The slot a workspace always occupies in a sandbox's config (upstream §4.3). */
export const WORKSPACE_SLOT = "scsi1";
export const SUPPORTED_STORAGE_TYPES = ["zfspool", "lvmthin", "dir"] as const;

export function workspaceJson(row: Workspace): WorkspaceJson {
  return {
    id: row.id,
    name: row.name,
    state: row.state,
    ...(row.broken_reason ? { broken_reason: row.broken_reason } : {}),
    ...(row.node ? { node: row.node } : {}),
    storage: row.storage,
    ...(row.storage_type ? { storage_type: row.storage_type } : {}),
    ...(row.format ? { format: row.format } : {}),
    volid: row.volid,
    size_gb: row.size_gb,
    ...(row.holder_vmid !== null ? { holder_vmid: row.holder_vmid } : {}),
    ...(row.attached_vmid !== null ? { attached_vmid: row.attached_vmid } : {}),
    ...(row.last_attached_vmid !== null ? { last_attached_vmid: row.last_attached_vmid } : {}),
    ...(row.lease_owner ? { lease_owner: row.lease_owner } : {}),
    ...(row.lease_expires_at ? { lease_expires_at: row.lease_expires_at.toISOString() } : {}),
    ...(row.forked_from ? { forked_from: row.forked_from } : {}),
    ...(row.fork_origin_snapshot ? { fork_origin_snapshot: row.fork_origin_snapshot } : {}),
    ...(row.copy_mode ? { copy_mode: row.copy_mode } : {}),
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
}

/** The first comma field of a drive value is its volid (`local-zfs:vm-1005-disk-0,backup=0`). */
export function driveVolid(value: string | number | undefined): string | undefined {
  if (value === undefined) return undefined;
  const first = String(value).split(",")[0]?.trim();
  return first ? first : undefined;
}

/** Config keys of disks a VM uses. */
export const DISK_KEY = /^(scsi|virtio|sata|ide|efidisk|tpmstate)\d+$/;
/** Config keys of volumes a VM keeps without using them. */
export const UNUSED_KEY = /^unused\d+$/;

/** Whether a config key can reference a volume: a disk or an unusedN entry. */
export function isVolumeKey(key: string): boolean {
  return DISK_KEY.test(key) || UNUSED_KEY.test(key);
}

/** Every key of `config` whose drive value references `volid`. */
export function referencingKeys(config: Record<string, string | number>, volid: string): string[] {
  return Object.keys(config)
    .filter((key) => isVolumeKey(key) && driveVolid(config[key]) === volid)
    .sort();
}

/** Operations that hold the workspace only while they run. */
export type TempLeaseKind = Exclude<LeaseOwnerKind, "sandbox" | "session">;

export type WorkspaceVerb = "snapshots" | "fsck" | "fork" | "destroy" | "restore";

/**
 * Everything the workspace operations share: the daemon context, the per-workspace mutex, name/id
 * resolution, events, progress, and the intent+lease bracket that makes each multi-step operation
 * recoverable after a crash (design §10.1).
 */
export class WorkspaceCore {
  constructor(
    readonly ctx: DaemonContext,
    /** Shared with the sandbox service: `ws:<id>` keys here, VMIDs there; ws before vmid, never after. */
    readonly locks: KeyedMutex,
  ) {}

  now(): Date {
    return this.ctx.clock.now();
  }

  require(ref: string): Workspace {
    return this.ctx.store.workspaces.require(ref);
  }

  /** The row again after a change, or an error if it vanished meanwhile. */
  reload(id: string): Workspace {
    return this.ctx.store.workspaces.require(id);
  }

  lockKey(id: string): string {
    return `ws:${id}`;
  }

  /** Run `fn` holding the workspace's mutex: one daemon operation per workspace at a time. */
  exclusive<T>(row: Workspace, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(this.lockKey(row.id), fn);
  }

  holder(row: Workspace): VmRef {
    if (row.holder_vmid === null || row.node === null) {
      throw new AgentlabError("CONFLICT", `workspace ${row.name} has no holder VM`, {
        hint: `it was created before workspaces had holders; check it with agentlab workspace check ${row.name}`,
        details: { workspace_id: row.id },
      });
    }
    return { vmid: row.holder_vmid, node: row.node };
  }

  event(row: Pick<Workspace, "id">, kind: string, msg: string, payload?: Record<string, unknown>): void {
    this.ctx.store.events.append({ kind, workspace_id: row.id, msg, ...(payload ? { payload } : {}) });
  }

  step(op: Operation, row: Pick<Workspace, "id" | "name">, step: string, message: string): void {
    op.step(step, message);
    op.log.info({ workspace: row.name, workspace_id: row.id, step }, message);
  }

  /** A state other than ready means another operation owns the row, or it needs an operator. */
  requireReady(row: Workspace): void {
    if (row.state === "ready") return;
    if (row.state === "broken") {
      throw new AgentlabError(
        "CONFLICT",
        `workspace ${row.name} is broken: ${row.broken_reason ?? "unknown reason"}`,
        {
          hint: `agentlab workspace check ${row.name} lists what is wrong and how to fix it`,
          details: { workspace_id: row.id, state: row.state },
        },
      );
    }
    throw new AgentlabError("WORKSPACE_BUSY", `workspace ${row.name} is ${row.state}`, {
      hint: `wait for it to finish (agentlab workspace show ${row.name})`,
      details: { workspace_id: row.id, state: row.state },
    });
  }

  /**
   * The troubleshooting guide's refusal for work that needs a detached workspace, naming the sandbox
   * and the session that uses it so the hint can say exactly what to stop.
   */
  requireDetached(row: Workspace, verb: WorkspaceVerb): void {
    if (row.attached_vmid === null) return;
    const session = this.ctx.store.sessions.byCurrentVmid(row.attached_vmid);
    const message =
      verb === "destroy"
        ? `workspace is attached to sandbox ${row.attached_vmid}; detach it before destroying`
        : `workspace must be detached for ${verb === "restore" ? "snapshots" : verb}: attached to sandbox ${row.attached_vmid}${session ? ` (session ${session.name})` : ""}`;
    const hint = session
      ? `stop the session: agentlab session stop ${session.name}`
      : `detach it first: agentlab workspace detach ${row.name}`;
    throw new AgentlabError("WORKSPACE_ATTACHED", message, {
      hint,
      details: {
        workspace_id: row.id,
        workspace_name: row.name,
        attached_vmid: row.attached_vmid,
        ...(session ? { session: session.name } : {}),
      },
    });
  }

  /** Describe a lease owner for people: "session s1", "sandbox 1012", "fsck of ws1". */
  describeOwner(owner: string | null): string | undefined {
    if (!owner) return undefined;
    const [kind, id] = owner.split(":");
    if (kind === "session" && id) {
      const session = this.ctx.store.sessions.get(id);
      return `session ${session?.name ?? id}`;
    }
    if (kind === "sandbox" && id) return `sandbox ${id}`;
    return `a running ${kind} operation`;
  }

  /**
   * Begin a multi-step operation: take a temporary lease (when `lease` names its kind) and record the intent in one transaction,
   * before Proxmox is touched. A held lease answers WORKSPACE_LEASE_HELD with the holder; another
   * operation in flight answers WORKSPACE_BUSY.
   */
  beginOp(
    row: Workspace,
    kind: WorkspaceOpKind,
    params: Record<string, unknown>,
    options: { lease?: TempLeaseKind; sessionId?: string } = {},
  ): WorkspaceOp {
    const store = this.ctx.store;
    return store.tx(() => {
      let lease: { owner: string; nonce: string } | null = null;
      if (options.lease) {
        const owner = tempLeaseOwner(options.lease, row.id);
        const got = store.workspaceLeases.acquire(row.id, owner, TEMP_LEASE_TTL_MS, this.now());
        if (!got.ok) throw leaseHeldError(row, got, this.describeOwner(got.lease_owner));
        lease = { owner: got.owner, nonce: got.nonce };
      }
      return store.workspaceOps.begin({
        workspace_id: row.id,
        kind,
        step: "begin",
        params,
        ...(options.sessionId ? { session_id: options.sessionId } : {}),
        lease,
      });
    });
  }

  setStep(op: WorkspaceOp, step: string, params?: Record<string, unknown>): void {
    this.ctx.store.workspaceOps.setStep(op.id, step, params);
  }

  /** Release the op's temporary lease and delete the intent (inside the caller's final transaction). */
  endOp(op: WorkspaceOp): void {
    const store = this.ctx.store;
    if (op.lease_owner && op.lease_nonce)
      store.workspaceLeases.release(op.workspace_id, op.lease_owner, op.lease_nonce);
    store.workspaceOps.finish(op.id);
  }

  /**
   * Run an operation's Proxmox steps inside its intent: on success `commit` runs in the final
   * transaction with the op closed; on failure `undo` runs (best effort) and the op is closed, so a
   * failed operation leaves no lease and no intent behind. A crash leaves both for recovery.
   */
  async withOp<T>(
    op: WorkspaceOp,
    work: () => Promise<T>,
    settle: { commit: (result: T) => void; undo?: (error: unknown) => Promise<void> | void },
  ): Promise<T> {
    let result: T;
    try {
      result = await work();
    } catch (error) {
      try {
        await settle.undo?.(error);
      } finally {
        this.ctx.store.tx(() => this.endOp(op));
      }
      throw error;
    }
    this.ctx.store.tx(() => {
      settle.commit(result);
      this.endOp(op);
    });
    return result;
  }
}
