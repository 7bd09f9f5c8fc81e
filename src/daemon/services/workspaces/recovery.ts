/**
 * Start-up recovery of workspace operations (design §10): every `workspace_ops` row the last daemon
 * process left behind is finished or undone after reading Proxmox, never guessed from the row alone.
 *
 * prepare() (database only, before the socket opens) adopts the rows; until each is settled, operations
 * on its workspace answer WORKSPACE_BUSY "recovering after restart". run() (after sandbox recovery, in
 * the first maintenance pass) settles them one at a time under the workspace's mutex. A row that cannot
 * be settled now (Proxmox down, a task still running) stays adopted and the next pass retries it. A
 * state that needs an operator (a Proxmox worker died and left `lock:`) marks the workspace `broken`
 * with the exact fix, and keeps the row: once the operator has run the fix, the next pass finishes it.
 *
 * Every settled row gets an event `workspace.recovered` with the op kind and the outcome.
 */
import { readdirSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import { AgentlabError } from "../../../protocol/errors.js";
import { undoActivations } from "../../host/device.js";
import { abortableSleep } from "../../proxmox/tasks.js";
import type { VmConfig, VmRef, VmStatus } from "../../proxmox/types.js";
import { leaseHeldError, sandboxLeaseOwner, sessionLeaseOwner } from "../../store/leases.js";
import type { WorkspaceOp, WorkspaceOpKind } from "../../store/workspace-ops.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound, waitForVmTasks } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { recordDetached, type SandboxPort, workspaceDrive } from "./attachment.js";
import { driveVolid, HOLDER_TAG, referencingKeys, WORKSPACE_SLOT, type WorkspaceCore } from "./core.js";
import { formatIfPossible } from "./create.js";
import { hostToolsFor } from "./host.js";

export type RecoveryOutcome =
  /** The operation was finished: the database now says what Proxmox shows. */
  | "committed"
  /** The operation was undone: nothing of it is left. */
  | "rolled_back"
  /** An operator must act first; the workspace is `broken` with the fix in its reason. */
  | "broken"
  /** The row was closed without finishing (nothing to finish, or the step cannot be repeated). */
  | "closed";

export interface RecoveryResult {
  outcome: RecoveryOutcome;
  message: string;
  /** Keep the row adopted and look again next pass (the operator's fix lets it finish by itself). */
  keep?: boolean;
}

/** What recovery needs from the sandbox service: attach/detach's port, and destroy (rebind's old sandbox). */
export interface RecoverySandboxes extends SandboxPort {
  destroy(vmid: number, force: boolean, op: Operation): Promise<unknown>;
}

/** How one op kind is recovered; sessions register theirs (see register()). */
export type RecoveryHandler = (op: WorkspaceOp, operation: Operation) => Promise<RecoveryResult>;

export interface WorkspaceRecoveryOptions {
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** How long to wait for a Proxmox task the last daemon left running before trying again next pass. */
  taskWaitMs?: number;
}

export interface WorkspaceRecoveryReport {
  recovered: Array<{
    workspace_id: string;
    kind: WorkspaceOpKind;
    outcome: RecoveryOutcome;
    message: string;
  }>;
  errors: Array<{ workspace_id: string; kind: WorkspaceOpKind; message: string }>;
}

/** Proxmox tasks a dead daemon left behind are waited for this long per op before the next pass retries. */
const DEFAULT_TASK_WAIT_MS = 10 * 60_000;
/** How long an e2fsck the last daemon started may keep running before recovery gives up waiting. */
const FSCK_WAIT_MS = 60 * 60_000;

interface VmView {
  config: VmConfig;
  status: VmStatus;
}

/** The message of the refusal, in the words the design gives it (§10.1). */
export const RECOVERING_MESSAGE = "recovering after restart";

export class WorkspaceRecovery {
  /** Op rows adopted from the last process, by id, not settled yet. */
  private readonly pending = new Map<number, WorkspaceOp>();
  /** Workspaces those rows hold (a fork holds its source and the new row), with the op kind. */
  private readonly busy = new Map<string, WorkspaceOpKind>();
  /** The last failure of an adopted row: check reports such a row as unfinished. */
  private readonly failures = new Map<number, string>();
  /** The last outcome reported per row, so a row waiting for an operator is announced once. */
  private readonly reported = new Map<number, string>();
  private readonly handlers = new Map<WorkspaceOpKind, RecoveryHandler>();
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  private readonly taskWaitMs: number;

  constructor(
    private readonly core: WorkspaceCore,
    private readonly sandboxes: RecoverySandboxes,
    options: WorkspaceRecoveryOptions = {},
  ) {
    this.sleep = options.sleep ?? abortableSleep;
    this.taskWaitMs = options.taskWaitMs ?? DEFAULT_TASK_WAIT_MS;
  }

  /** Let another module recover its own op kind (session_create, rebind, ...) instead of the default. */
  register(kind: WorkspaceOpKind, handler: RecoveryHandler): void {
    this.handlers.set(kind, handler);
  }

  /**
   * Before the socket opens, so every row is the last process's: adopt them all and mark their
   * workspaces busy. Database only.
   */
  prepare(): void {
    for (const op of this.core.ctx.store.workspaceOps.list()) this.pending.set(op.id, op);
    this.refreshBusy();
    if (this.pending.size > 0) {
      this.core.ctx.log.info(
        {
          ops: [...this.pending.values()].map((op) => ({
            id: op.id,
            kind: op.kind,
            step: op.step,
            workspace: op.workspace_id,
          })),
        },
        `start-up recovery: ${this.pending.size} workspace operation(s) interrupted by the last stop`,
      );
    }
  }

  /** Adopted rows not settled yet. */
  get pendingCount(): number {
    return this.pending.size;
  }

  isRecovering(workspaceId: string): boolean {
    return this.busy.has(workspaceId);
  }

  /** Whether this daemon is working on the row (adopted, and its last attempt did not fail). */
  isRunning(op: WorkspaceOp): boolean {
    return this.pending.has(op.id) && !this.failures.has(op.id);
  }

  /**
   * Refuse an operation on a workspace recovery still holds: WORKSPACE_BUSY "recovering after
   * restart", or, when recovery is waiting for an operator, the workspace's broken reason.
   */
  guard(ref: string): void {
    const ws = this.core.ctx.store.workspaces.resolve(ref);
    if (!ws) return;
    const kind = this.busy.get(ws.id);
    if (kind === undefined) return;
    if (ws.state === "broken") this.core.requireReady(ws);
    throw new AgentlabError("WORKSPACE_BUSY", `workspace ${ws.name} is busy: ${RECOVERING_MESSAGE}`, {
      hint: `the daemon is finishing or undoing the ${kind} a restart interrupted; retry in a moment (agentlab workspace show ${ws.name})`,
      details: { workspace_id: ws.id, workspace_name: ws.name, op_kind: kind, reason: "recovering" },
    });
  }

  private refreshBusy(): void {
    this.busy.clear();
    for (const op of this.pending.values()) {
      this.busy.set(op.workspace_id, op.kind);
      for (const key of ["fork_id", "source_id"]) {
        const partner = op.params[key];
        if (typeof partner === "string") this.busy.set(partner, op.kind);
      }
    }
  }

  /**
   * Settle every adopted row, oldest first. Rows that fail stay adopted for the next pass; rows that
   * wait for an operator stay too, reported once.
   */
  async run(operation: Operation): Promise<WorkspaceRecoveryReport> {
    const report: WorkspaceRecoveryReport = { recovered: [], errors: [] };
    const ops = [...this.pending.values()].sort((a, b) => a.id - b.id);
    for (const op of ops) {
      if (!this.pending.has(op.id)) continue; // settled together with its fork partner
      if (operation.signal.aborted) break;
      try {
        const result = await this.core.locks.run(this.core.lockKey(op.workspace_id), () =>
          this.recoverOne(op, operation),
        );
        this.failures.delete(op.id);
        const partners = this.partnersOf(op);
        const key = `${result.outcome}:${result.message}`;
        if (!result.keep) {
          this.pending.delete(op.id);
          for (const partner of partners) this.pending.delete(partner.id);
          this.reported.delete(op.id);
        }
        if (this.reported.get(op.id) === key) continue;
        if (result.keep) this.reported.set(op.id, key);
        report.recovered.push({
          workspace_id: op.workspace_id,
          kind: op.kind,
          outcome: result.outcome,
          message: result.message,
        });
        const payload = { op_kind: op.kind, outcome: result.outcome, step: op.step, op_id: op.id };
        const ids = new Set([op.workspace_id, ...partners.map((p) => p.workspace_id)]);
        for (const id of ids) {
          this.core.event(
            { id },
            "workspace.recovered",
            `${op.kind} interrupted by a daemon restart: ${result.outcome}: ${result.message}`,
            payload,
          );
        }
        operation.log.info(
          { workspace_id: op.workspace_id, kind: op.kind, outcome: result.outcome },
          `workspace recovery: ${op.kind}: ${result.message}`,
        );
      } catch (error) {
        this.failures.set(op.id, describe(error));
        report.errors.push({ workspace_id: op.workspace_id, kind: op.kind, message: describe(error) });
        operation.log.warn(
          { workspace_id: op.workspace_id, kind: op.kind, err: error },
          `recovery of the interrupted workspace ${op.kind} failed; the next maintenance pass retries`,
        );
      }
    }
    this.refreshBusy();
    return report;
  }

  /** The other adopted row of a fork (the source's op and the new workspace's op name each other). */
  private partnersOf(op: WorkspaceOp): WorkspaceOp[] {
    if (op.kind !== "fork") return [];
    return [...this.pending.values()].filter(
      (other) =>
        other.id !== op.id &&
        other.kind === "fork" &&
        (other.params.source_op_id === op.id || op.params.source_op_id === other.id),
    );
  }

  private recoverOne(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const custom = this.handlers.get(op.kind);
    if (custom) return custom(op, operation);
    switch (op.kind) {
      case "create":
        return this.recoverCreate(op, operation);
      case "attach":
        return this.recoverAttach(op, operation);
      case "detach":
        return this.recoverDetach(op, operation);
      case "snapshot":
        return this.recoverSnapshot(op, operation);
      case "restore":
        return this.recoverRestore(op, operation);
      case "fork":
        return this.recoverFork(op, operation);
      case "fsck":
        return this.recoverFsck(op, operation);
      case "destroy":
        return this.recoverDestroy(op, operation);
      case "rebind":
        return this.recoverRebind(op, operation);
      default:
        return this.abandon(op);
    }
  }

  // --- helpers -----------------------------------------------------------------------------------

  private get store() {
    return this.core.ctx.store;
  }

  private get backend() {
    return this.core.ctx.backend;
  }

  private holderRef(ws: Workspace, op: WorkspaceOp): VmRef | undefined {
    const vmid = ws.holder_vmid ?? (typeof op.params.holder_vmid === "number" ? op.params.holder_vmid : null);
    if (vmid === null) return undefined;
    return { vmid, node: ws.node ?? this.core.ctx.config.proxmox_node };
  }

  /** Config and status, or undefined when the VM does not exist. */
  private async readVm(vm: VmRef): Promise<VmView | undefined> {
    try {
      const [config, status] = await Promise.all([this.backend.getConfig(vm), this.backend.status(vm)]);
      return { config, status };
    } catch (error) {
      if (isVmNotFound(error)) return undefined;
      throw error;
    }
  }

  /**
   * Proxmox kept working after the daemon died (design §10.1): wait for the tasks still running on
   * `vm` before reading what they did. Bounded; past the bound the row waits for the next pass.
   */
  async waitForTasks(vm: VmRef, operation: Operation): Promise<void> {
    await waitForVmTasks(this.backend, vm, {
      waitMs: this.taskWaitMs,
      sleep: this.sleep,
      signal: operation.signal,
    });
  }

  /** Close the row (releasing its temporary lease) in the final transaction, after `commit`. */
  private settle(op: WorkspaceOp, commit?: () => void): void {
    this.store.tx(() => {
      commit?.();
      this.core.endOp(op);
    });
  }

  /**
   * `broken` with the reason and the fix (meta.broken_fix, which check prints). With `keep`, the row
   * stays adopted: once the operator's fix is done, the next pass finishes the operation and the
   * workspace is ready again (meta.recovery_broken marks that recovery, not something else, broke it).
   */
  private broken(ws: Workspace, op: WorkspaceOp, reason: string, fix: string, keep: boolean): RecoveryResult {
    const current = this.store.workspaces.get(ws.id);
    if (current) {
      this.store.tx(() => {
        const unchanged = current.state === "broken" && current.broken_reason === reason;
        this.store.workspaces.update(ws.id, {
          state: "broken",
          broken_reason: reason,
          meta: { ...current.meta, broken_fix: fix, ...(keep ? { recovery_broken: true } : {}) },
        });
        if (!unchanged) this.core.event(ws, "workspace.broken", `${reason}; fix: ${fix}`, { reason, fix });
        if (!keep) this.core.endOp(op);
      });
    }
    return { outcome: "broken", message: `${reason}; fix: ${fix}`, ...(keep ? { keep: true } : {}) };
  }

  /** Undo what broken(…, keep) did, once the operator's fix let the operation finish. */
  private unbreak(id: string): void {
    const current = this.store.workspaces.get(id);
    if (!current?.meta.recovery_broken) return;
    const { broken_fix: _fix, recovery_broken: _broken, ...meta } = current.meta;
    this.store.workspaces.update(id, { state: "ready", broken_reason: null, meta });
  }

  /**
   * A holder left with `lock:` and no task running means a Proxmox worker died. The API token cannot
   * unlock it (skiplock is root-only), so an operator must; the row waits for that.
   */
  private lockedHolder(
    ws: Workspace,
    op: WorkspaceOp,
    vm: VmRef,
    lock: string,
    what: string,
    extra = "",
  ): RecoveryResult {
    return this.broken(
      ws,
      op,
      `${what} was interrupted and holder VM ${vm.vmid} is left locked (${lock}) with no task running${extra}`,
      `qm unlock ${vm.vmid} (agentlab then finishes the ${op.kind} by itself)`,
      true,
    );
  }

  /**
   * No built-in recovery for this kind (session rows nobody registered a handler for), or a row that
   * names nothing to finish: close it and say what to look at.
   */
  async abandon(op: WorkspaceOp): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    this.settle(op);
    const session = op.session_id ? this.store.sessions.get(op.session_id) : undefined;
    const look = [
      session ? `agentlab session show ${session.name}` : undefined,
      ws ? `agentlab workspace check ${ws.name}` : undefined,
    ].filter(Boolean);
    return {
      outcome: "closed",
      message: `nothing was finished or undone automatically (step ${op.step}); check ${look.join(" and ") || "the workspace"}`,
    };
  }

  // --- create (design §5.1) ----------------------------------------------------------------------

  private async recoverCreate(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const holder = this.holderRef(ws, op);
    if (!holder) {
      this.store.tx(() => this.store.workspaces.delete(ws.id));
      return {
        outcome: "rolled_back",
        message: "no holder VM was reserved; the unfinished record is removed",
      };
    }
    await this.waitForTasks(holder, operation);
    const vm = await this.readVm(holder);
    if (!vm) {
      this.store.tx(() => this.store.workspaces.delete(ws.id));
      return {
        outcome: "rolled_back",
        message: `holder VM ${holder.vmid} was never created; the unfinished record is removed`,
      };
    }
    const lock = vm.status.lock ?? (vm.config.lock !== undefined ? String(vm.config.lock) : undefined);
    if (vm.config.name !== `ws-${ws.name}` && lock !== "create") {
      // Not the VM this create made (its create never ran, and someone else took the VMID): leave it.
      this.store.tx(() => this.store.workspaces.delete(ws.id));
      return {
        outcome: "rolled_back",
        message: `VM ${holder.vmid} is not this workspace's holder (named ${String(vm.config.name ?? "nothing")}); it is left alone and the unfinished record is removed`,
      };
    }
    const destroyFix = `agentlab workspace destroy ${ws.name} --force`;
    if (lock) {
      return this.broken(
        ws,
        op,
        `create was interrupted and holder VM ${holder.vmid} is left locked (${lock}) with no task running`,
        `qm unlock ${holder.vmid} && ${destroyFix}`,
        false,
      );
    }
    const volid = driveVolid(vm.config.scsi0);
    if (!volid) {
      return this.broken(
        ws,
        op,
        `create was interrupted and holder VM ${holder.vmid} has no disk`,
        destroyFix,
        false,
      );
    }
    const volume = await this.backend.volumeInfo(holder.node, volid);
    // The volume is new (the row never left `creating`), so formatting it again is always safe.
    const formatted = await formatIfPossible(this.core, { ...ws, volid });
    this.settle(op, () => {
      this.store.workspaces.update(ws.id, { state: "ready", volid, format: volume.format ?? ws.format });
      this.core.event(
        ws,
        "workspace.created",
        `workspace ${ws.name} created on ${ws.storage} (holder VM ${holder.vmid}), finished after a restart`,
        {
          holder_vmid: holder.vmid,
          volid,
          size_gb: ws.size_gb,
          formatted,
        },
      );
    });
    return {
      outcome: "committed",
      message: `holder VM ${holder.vmid} exists with ${volid}; workspace ${ws.name} is ready`,
    };
  }

  // --- attach (design §5.2) ----------------------------------------------------------------------

  private async recoverAttach(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const vmid = Number(op.params.vmid);
    const vm: VmRef = {
      vmid,
      node:
        typeof op.params.node === "string" ? op.params.node : (ws.node ?? this.core.ctx.config.proxmox_node),
    };
    return this.sandboxes.withVmLock(vmid, async () => {
      await this.waitForTasks(vm, operation);
      let view = await this.readVm(vm);
      let keys = view ? referencingKeys(view.config, ws.volid) : [];
      const sandbox = this.store.sandboxes.get(vmid);
      const live =
        sandbox !== undefined &&
        sandbox.state !== "DESTROYED" &&
        sandbox.vm_created &&
        ws.attached_vmid === null;
      if (view && live && view.config[WORKSPACE_SLOT] === undefined && (await this.holderStopped(ws, op))) {
        // Finish the attach rather than undo it: a synchronous config change the dead daemon sent may
        // still be queued behind the VM's lock and land after this look; writing the same value first
        // makes that late write harmless, where undoing would leave an unrecorded reference behind.
        operation.step(
          "attach",
          `attaching workspace ${ws.name} to sandbox ${vmid} as ${WORKSPACE_SLOT} (after a restart)`,
        );
        await this.backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) });
        view = await this.readVm(vm);
        keys = view ? referencingKeys(view.config, ws.volid) : [];
      }
      if (keys.includes(WORKSPACE_SLOT) && live) {
        this.settle(op, () => {
          this.store.workspaces.attach(ws.id, vmid);
          this.core.event(
            ws,
            "workspace.attached",
            `attached to sandbox ${vmid} as ${WORKSPACE_SLOT} (finished after a restart)`,
            { vmid },
          );
        });
        return {
          outcome: "committed",
          message: `sandbox ${vmid}'s config has the workspace as ${WORKSPACE_SLOT}; recorded as attached`,
        };
      }
      let left = "";
      if (view && keys.length > 0) {
        // The change landed on a VM the attach cannot be recorded for: take it back, never by force
        // (I3), and only from a stopped VM (unplugging a running guest's disk is what corrupts it).
        if (view.status.state === "stopped") await this.backend.setConfig(vm, {}, keys);
        else
          left = `; VM ${vmid} runs and still has it as ${keys.join(", ")} (agentlab workspace check ${ws.name} shows the fix)`;
      }
      this.settle(op, () => {
        const current = this.store.workspaces.get(ws.id);
        const owner = sandboxLeaseOwner(vmid);
        if (current?.lease_owner === owner && current.lease_nonce && current.attached_vmid !== vmid) {
          this.store.workspaceLeases.release(ws.id, owner, current.lease_nonce);
        }
      });
      const why = !view
        ? `VM ${vmid} is gone`
        : !live
          ? `sandbox ${vmid} is not a live sandbox the workspace can be attached to`
          : `the attach cannot be finished (${WORKSPACE_SLOT} of VM ${vmid} holds ${String(view.config[WORKSPACE_SLOT] ?? "nothing")}, or the holder VM is not stopped)`;
      return { outcome: "rolled_back", message: `${why}; the attach is undone${left}` };
    });
  }

  /** The attach precondition that matters for the data: no second QEMU may run on the disk (R2). */
  private async holderStopped(ws: Workspace, op: WorkspaceOp): Promise<boolean> {
    const holder = this.holderRef(ws, op);
    if (!holder) return false;
    const view = await this.readVm(holder);
    return view?.status.state === "stopped";
  }

  // --- detach (design §5.3): always rolled forward, the safe direction the user asked for ----------

  private async recoverDetach(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const vmid = Number(op.params.vmid);
    if (ws.attached_vmid !== vmid) {
      this.settle(op);
      return {
        outcome: "closed",
        message: `the workspace is no longer recorded as attached to sandbox ${vmid}`,
      };
    }
    const sandbox = this.store.sandboxes.get(vmid);
    const vm: VmRef = { vmid, node: sandbox?.node ?? ws.node ?? this.core.ctx.config.proxmox_node };
    await this.waitForTasks(vm, operation);
    let view = await this.readVm(vm);
    const inUse = sandbox !== undefined && ["READY", "RUNNING", "SUSPENDED"].includes(sandbox.state);
    if (view && (view.status.state !== "stopped" || (inUse && op.params.hot !== true))) {
      // The detach stopped the sandbox (or was about to): finish that the same way, so the sandbox's
      // record says STOPPED too. A hot detach whose unplug did not finish gets the safe path as well.
      operation.step("shutdown", `stopping sandbox ${vmid} to finish detaching workspace ${ws.name}`);
      if (inUse) await this.sandboxes.stop(vmid, operation);
      else
        await this.backend.shutdown(
          vm,
          { timeoutSeconds: 120, forceStop: true },
          { signal: operation.signal },
        );
      view = await this.readVm(vm);
    }
    if (view) {
      await this.sandboxes.withVmLock(vmid, async () => {
        const keys = referencingKeys(await this.backend.getConfig(vm), ws.volid);
        if (keys.length > 0) await this.backend.setConfig(vm, {}, keys);
        const left = referencingKeys(await this.backend.getConfig(vm), ws.volid);
        if (left.length > 0) {
          throw new AgentlabError(
            "PROXMOX_ERROR",
            `VM ${vmid} still references ${ws.volid} as ${left.join(", ")} after the change`,
            {
              details: { vmid, keys: left },
            },
          );
        }
      });
    }
    this.settle(op, () => {
      recordDetached(this.core, ws, vmid);
    });
    return {
      outcome: "committed",
      message: view
        ? `sandbox ${vmid} no longer references the workspace; recorded as detached`
        : `VM ${vmid} is gone; recorded as detached`,
    };
  }

  // --- rebind (design §5.7, §10.2) ----------------------------------------------------------------

  /**
   * A rebind's row exists from the attach to the new sandbox S2 until the end (the attach's and the
   * detach's own rows cover those steps). Sandbox recovery ran first, so S2 is settled: RUNNING with the
   * workspace → continue (destroy the old sandbox S1 unless keep_old); rolled back, the workspace
   * detached → put it back on S1, which the detach left stopped, as rebind's own undo does.
   */
  private async recoverRebind(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const { old, new: next } = op.params;
    if (typeof old !== "number" || typeof next !== "number") return this.abandon(op);
    const session = op.session_id ? this.store.sessions.get(op.session_id) : undefined;
    const s2 = this.store.sandboxes.get(next);
    if (ws.attached_vmid === next) {
      if (!s2 || !["READY", "RUNNING"].includes(s2.state)) {
        throw new AgentlabError(
          "CONFLICT",
          `sandbox ${next} of the interrupted rebind is ${s2?.state ?? "gone"} with the workspace attached`,
          { hint: "sandbox recovery settles it first; the next maintenance pass retries" },
        );
      }
      let left = "";
      if (op.params.keep_old !== true && this.store.sandboxes.get(old)?.state !== "DESTROYED") {
        operation.step(
          "destroy-old",
          `destroying the old sandbox ${old} to finish the rebind (after a restart)`,
        );
        try {
          await this.sandboxes.destroy(old, true, operation);
        } catch (error) {
          left = `; the old sandbox ${old} could not be destroyed: ${describe(error)}`;
        }
      }
      this.settle(op, () => {
        if (session) this.store.sessions.update(session.id, { current_vmid: next });
        this.core.event(
          ws,
          "workspace.rebound",
          `moved to sandbox ${next} from ${old} (finished after a restart)`,
          {
            vmid: next,
            old_vmid: old,
          },
        );
      });
      return { outcome: "committed", message: `sandbox ${next} runs with the workspace${left}` };
    }
    const s1 = this.store.sandboxes.get(old);
    if (ws.attached_vmid !== null || !s1 || s1.state === "DESTROYED" || !s1.vm_created) {
      this.settle(op);
      return {
        outcome: "closed",
        message:
          ws.attached_vmid !== null
            ? `the workspace is attached to sandbox ${ws.attached_vmid}; nothing to finish`
            : `sandbox ${next} did not come up and the old sandbox ${old} is gone; the workspace is left detached`,
      };
    }
    const vm: VmRef = { vmid: old, node: s1.node ?? ws.node ?? this.core.ctx.config.proxmox_node };
    return this.sandboxes.withVmLock(old, async () => {
      await this.waitForTasks(vm, operation);
      const view = await this.readVm(vm);
      const free = view !== undefined && view.config[WORKSPACE_SLOT] === undefined;
      if (!view || !free || view.status.state !== "stopped" || !(await this.holderStopped(ws, op))) {
        this.settle(op);
        return {
          outcome: "rolled_back",
          message: `sandbox ${next} did not come up; the workspace is left detached (sandbox ${old} ${!view ? "is gone" : !free ? `has ${WORKSPACE_SLOT} taken` : "or the holder is not stopped"}): agentlab workspace attach ${ws.name} <vmid>`,
        };
      }
      operation.step("reattach", `putting workspace ${ws.name} back on sandbox ${old} (after a restart)`);
      await this.backend.setConfig(vm, { [WORKSPACE_SLOT]: workspaceDrive(ws.volid) });
      if (!referencingKeys(await this.backend.getConfig(vm), ws.volid).includes(WORKSPACE_SLOT)) {
        throw new AgentlabError(
          "PROXMOX_ERROR",
          `sandbox ${old}'s config does not show the workspace after the change`,
          {
            details: { vmid: old, volid: ws.volid },
          },
        );
      }
      this.settle(op, () => {
        // The new sandbox's rollback released the lease and the session's current sandbox.
        if (session)
          this.store.sessions.update(session.id, { current_vmid: old }, { expectCurrentVmid: null });
        const owner = session ? sessionLeaseOwner(session.id) : sandboxLeaseOwner(old);
        const got = this.store.workspaceLeases.acquire(
          ws.id,
          owner,
          this.core.ctx.config.workspace_lease_ttl_ms,
          this.core.now(),
        );
        if (!got.ok) throw leaseHeldError(ws, got, this.core.describeOwner(got.lease_owner));
        this.store.workspaces.attach(ws.id, old);
        this.core.event(
          ws,
          "workspace.attached",
          `back on sandbox ${old}: the rebind to ${next} was interrupted and ${next} did not come up`,
          {
            vmid: old,
          },
        );
      });
      return {
        outcome: "rolled_back",
        message: `sandbox ${next} did not come up; the workspace is back on sandbox ${old} (stopped: agentlab sandbox start ${old})`,
      };
    });
  }

  // --- snapshot (design §6.1) --------------------------------------------------------------------

  private async recoverSnapshot(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const name = String(op.params.name);
    const holder = this.holderRef(ws, op);
    const dropRow = () => {
      const row = this.store.workspaceSnapshots.get(ws.id, name);
      if (row && row.state !== "ready") this.store.workspaceSnapshots.delete(ws.id, name);
    };
    if (!holder) {
      this.settle(op, dropRow);
      return { outcome: "rolled_back", message: "the workspace has no holder VM" };
    }
    await this.waitForTasks(holder, operation);
    const vm = await this.readVm(holder);
    if (!vm) {
      this.settle(op, () => {
        dropRow();
        this.unbreak(ws.id);
      });
      return {
        outcome: "rolled_back",
        message: `holder VM ${holder.vmid} does not exist (agentlab workspace check ${ws.name})`,
      };
    }
    const taken = (await this.backend.snapshotList(holder)).find((s) => s.name === name);
    if (!taken) {
      this.settle(op, () => {
        dropRow();
        this.unbreak(ws.id);
      });
      return { outcome: "rolled_back", message: `snapshot ${name} was never taken; its record is removed` };
    }
    const snapstate = (await this.backend.getConfig(holder, { snapshot: name })).snapstate;
    if (snapstate === undefined) {
      this.settle(op, () => {
        const createdAt = taken.snaptime !== undefined ? new Date(taken.snaptime * 1000) : undefined;
        if (this.store.workspaceSnapshots.get(ws.id, name))
          this.store.workspaceSnapshots.markReady(ws.id, name, createdAt);
        else
          this.store.workspaceSnapshots.insert({
            workspace_id: ws.id,
            name,
            state: "ready",
            kind: "user",
            ...(createdAt ? { created_at: createdAt } : {}),
          });
        this.unbreak(ws.id);
        this.core.event(
          ws,
          "workspace.snapshot.created",
          `snapshot ${name} of workspace ${ws.name} created (finished after a restart)`,
          {
            snapshot: name,
            holder_vmid: holder.vmid,
          },
        );
      });
      return {
        outcome: "committed",
        message: `snapshot ${name} exists on holder VM ${holder.vmid}; recorded as ready`,
      };
    }
    // Half made (snapstate prepare): the worker died. Snapshot creation does not write the volume.
    if (vm.status.lock) {
      return this.lockedHolder(
        ws,
        op,
        holder,
        vm.status.lock,
        `snapshot ${name}`,
        ` and the snapshot half made (snapstate ${String(snapstate)})`,
      );
    }
    try {
      // Forced (design §10.2): a half-made snapshot may lack its storage part, which a plain delete
      // would fail on; force drops the config entry anyway, and it never touches the volume's data.
      await this.backend.snapshotDelete(holder, name, { signal: operation.signal }, { force: true });
    } catch (error) {
      return this.broken(
        ws,
        op,
        `snapshot ${name} was interrupted and is left half made (snapstate ${String(snapstate)}) on holder VM ${holder.vmid}; removing it failed: ${describe(error).trim()}`,
        `qm delsnapshot ${holder.vmid} ${name} --force 1 (agentlab then finishes by itself)`,
        true,
      );
    }
    this.settle(op, () => {
      dropRow();
      this.unbreak(ws.id);
      this.core.event(
        ws,
        "workspace.snapshot.create_failed",
        `snapshot ${name} of workspace ${ws.name} was interrupted by a restart and removed`,
        {
          snapshot: name,
        },
      );
    });
    return { outcome: "rolled_back", message: `the half-made snapshot ${name} was removed` };
  }

  // --- restore (design §6.3) ---------------------------------------------------------------------

  private async recoverRestore(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const name = String(op.params.name);
    const holder = this.holderRef(ws, op);
    const failed = (why: string): RecoveryResult => {
      this.settle(op, () => {
        this.unbreak(ws.id);
        this.core.event(
          ws,
          "workspace.snapshot.restore_failed",
          `restore of workspace ${ws.name} to ${name} was interrupted by a restart: ${why}`,
          {
            snapshot: name,
            error: why,
          },
        );
      });
      return { outcome: "closed", message: `the restore to ${name} was not repeated: ${why}` };
    };
    if (!holder) return failed("the workspace has no holder VM");
    await this.waitForTasks(holder, operation);
    const vm = await this.readVm(holder);
    if (!vm) return failed(`holder VM ${holder.vmid} does not exist`);
    if (vm.status.lock) {
      const lvm =
        ws.storage_type === "lvmthin"
          ? `; if ${ws.volid} is missing afterwards, the snapshot LV snap_vm-${holder.vmid}-disk-0_${name} still holds the data`
          : "";
      return this.lockedHolder(ws, op, holder, vm.status.lock, `restore to ${name}`, lvm);
    }
    if (vm.status.state !== "stopped") {
      return this.broken(
        ws,
        op,
        `restore to ${name} was interrupted and holder VM ${holder.vmid} is ${vm.status.state}`,
        `qm stop ${holder.vmid} (first make sure no sandbox uses the disk; agentlab then repeats the restore by itself)`,
        true,
      );
    }
    if (!(await this.backend.snapshotList(holder)).some((s) => s.name === name))
      return failed(`snapshot ${name} no longer exists`);
    // Idempotent: the volume is detached and leased, so nothing wrote to it since (design §10.2).
    try {
      await this.backend.snapshotRollback(holder, name, { signal: operation.signal });
    } catch (error) {
      if (error instanceof AgentlabError && error.code === "PROXMOX_TASK_FAILED")
        return failed(describe(error).trim());
      throw error;
    }
    this.settle(op, () => {
      this.unbreak(ws.id);
      this.core.event(
        ws,
        "workspace.snapshot.restored",
        `workspace ${ws.name} restored to snapshot ${name} (repeated after a restart)`,
        {
          snapshot: name,
          holder_vmid: holder.vmid,
        },
      );
    });
    return { outcome: "committed", message: `workspace restored to ${name}` };
  }

  // --- fork (design §7) --------------------------------------------------------------------------

  private async recoverFork(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const { store } = this;
    // Either row may come first: the source's op (lease fork:…, params fork_id once reserved) or the
    // new workspace's op (params source_id, source_op_id).
    const isTarget = typeof op.params.source_id === "string";
    const srcOp = isTarget ? store.workspaceOps.get(Number(op.params.source_op_id)) : op;
    const srcId = isTarget ? String(op.params.source_id) : op.workspace_id;
    const forkId = isTarget
      ? op.workspace_id
      : typeof op.params.fork_id === "string"
        ? op.params.fork_id
        : undefined;
    const forkOp = forkId ? store.workspaceOps.getByWorkspace(forkId) : undefined;
    const closeSource = () => {
      if (srcOp) this.core.endOp(srcOp);
    };
    const src = store.workspaces.get(srcId);
    const fork = forkId ? store.workspaces.get(forkId) : undefined;
    if (!fork) {
      this.settle(op, closeSource);
      return { outcome: "rolled_back", message: "no new workspace was reserved yet; the source is released" };
    }
    const node = fork.node ?? this.core.ctx.config.proxmox_node;
    const target: VmRef = { vmid: fork.holder_vmid!, node };
    const holder = src?.holder_vmid != null ? { vmid: src.holder_vmid, node: src.node ?? node } : undefined;
    if (holder) await this.waitForTasks(holder, operation);
    await this.waitForTasks(target, operation);
    const params = { ...(srcOp?.params ?? {}), ...(forkOp?.params ?? {}) };
    const fromSnapshot = typeof params.from_snapshot === "string" ? params.from_snapshot : undefined;
    const baseSnapshot = typeof params.base_snapshot === "string" ? params.base_snapshot : undefined;
    const path = String(params.path ?? "");
    const vm = await this.readVm(target);
    const ours = vm !== undefined && vm.config.name === `ws-${fork.name}`;
    const lock = vm?.status.lock;

    if (vm && ours && lock) {
      // A copy whose worker died may be incomplete: the new workspace is not trusted, only removed.
      store.tx(() => {
        if (forkOp) store.workspaceOps.finish(forkOp.id);
        closeSource();
      });
      return this.brokenFork(
        fork,
        `fork was interrupted and its holder VM ${target.vmid} is left locked (${lock}) with no task running`,
        `qm unlock ${target.vmid} && agentlab workspace destroy ${fork.name} --force`,
      );
    }

    const volid = ours ? driveVolid(vm.config.scsi0) : undefined;
    if (vm && ours && volid) {
      // The copy finished: steps 3–5 again (all idempotent).
      await this.backend.setConfig(target, { protection: 1, tags: HOLDER_TAG, onboot: 0 });
      let baseDropped = false;
      if (holder && src && path === "linked-clone" && fromSnapshot === undefined && baseSnapshot) {
        baseDropped = await this.dropSnapshot(holder, baseSnapshot, operation);
      }
      const volume = await this.backend.volumeInfo(node, volid);
      const copyMode = path === "full-clone" ? "full" : "cow";
      const origin = path === "zfs-clone" ? (fromSnapshot ?? baseSnapshot) : fromSnapshot;
      store.tx(() => {
        store.workspaces.update(fork.id, {
          state: "ready",
          volid,
          format: volume.format ?? fork.format,
          copy_mode: copyMode,
          fork_origin_snapshot: origin ?? null,
        });
        if (forkOp) store.workspaceOps.finish(forkOp.id);
        if (baseDropped && src && baseSnapshot) store.workspaceSnapshots.delete(src.id, baseSnapshot);
        if (src && baseSnapshot && !baseDropped) store.workspaceSnapshots.markReady(src.id, baseSnapshot);
        closeSource();
        const payload = {
          source_id: srcId,
          fork_id: fork.id,
          holder_vmid: target.vmid,
          copy_mode: copyMode,
          from_snapshot: origin ?? null,
        };
        this.core.event(
          fork,
          "workspace.fork.completed",
          `workspace ${fork.name} forked from ${src?.name ?? srcId} (finished after a restart)`,
          payload,
        );
        if (src)
          this.core.event(
            src,
            "workspace.fork.completed",
            `workspace ${src.name} forked as ${fork.name} (finished after a restart)`,
            payload,
          );
      });
      return {
        outcome: "committed",
        message: `fork ${fork.name} (holder VM ${target.vmid}, ${volid}) is ready`,
      };
    }

    // The copy did not finish: remove what this fork made. The source's data was never written.
    if (vm && ours) {
      await this.backend.setConfig(target, {}, ["protection"]);
      await this.backend.destroy(target, { purge: true }, { signal: operation.signal });
    }
    let baseLeft = false;
    if (holder && src && baseSnapshot && fromSnapshot === undefined) {
      baseLeft = !(await this.dropSnapshot(holder, baseSnapshot, operation));
    }
    store.tx(() => {
      if (src && baseSnapshot && !baseLeft) store.workspaceSnapshots.delete(src.id, baseSnapshot);
      closeSource();
      store.workspaces.delete(fork.id);
      if (src) {
        this.core.event(
          src,
          "workspace.fork.failed",
          `fork ${fork.name} of workspace ${src.name} was interrupted by a restart and undone`,
          {
            source_id: srcId,
            fork_name: fork.name,
            holder_vmid: target.vmid,
          },
        );
      }
    });
    const extra =
      vm && !ours
        ? `; VM ${target.vmid} is not the fork's (named ${String(vm.config.name ?? "nothing")}) and was left alone`
        : "";
    return {
      outcome: "rolled_back",
      message: `the copy did not finish; fork ${fork.name} is removed${extra}`,
    };
  }

  /** Delete an internal snapshot nobody depends on (lvmthin clones do not); false when it stays. */
  private async dropSnapshot(holder: VmRef, name: string, operation: Operation): Promise<boolean> {
    try {
      if ((await this.backend.snapshotList(holder)).some((s) => s.name === name)) {
        await this.backend.snapshotDelete(holder, name, { signal: operation.signal });
      }
      return true;
    } catch (error) {
      operation.log.warn(
        { err: error, holder_vmid: holder.vmid, snapshot: name },
        "could not delete the internal fork snapshot; it stays listed",
      );
      return false;
    }
  }

  private brokenFork(fork: Workspace, reason: string, fix: string): RecoveryResult {
    this.store.tx(() => {
      const current = this.store.workspaces.get(fork.id);
      if (!current) return;
      this.store.workspaces.update(fork.id, {
        state: "broken",
        broken_reason: reason,
        meta: { ...current.meta, broken_fix: fix },
      });
      this.core.event(fork, "workspace.broken", `${reason}; fix: ${fix}`, { reason, fix });
    });
    return { outcome: "broken", message: `${reason}; fix: ${fix}` };
  }

  // --- fsck (design §8) --------------------------------------------------------------------------

  private async recoverFsck(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const device = typeof op.params.device === "string" ? op.params.device : undefined;
    const activations = Array.isArray(op.params.activations)
      ? (op.params.activations as Parameters<typeof undoActivations>[0])
      : [];
    // An e2fsck the last daemon started may still run (KillMode=process): its result is its own, and
    // the device must stay as it is until it ends.
    if (device) await this.waitForFsckProcesses(device, operation);
    let undone = "";
    if (activations.length > 0 && ws.node) {
      const access = await hostToolsFor(this.core.ctx, ws.node);
      if (!access.tools)
        throw new AgentlabError(
          "HOST_TOOLS_UNAVAILABLE",
          `cannot undo the activation of ${device ?? ws.volid}: ${access.reason}`,
        );
      await undoActivations(activations, access.tools);
      undone = `; ${activations.map((a) => `${a.vg}/${a.lv}`).join(", ")} deactivated again`;
    }
    const mode = op.params.mode === "repair" ? "repair" : "read-only";
    const summary = `interrupted by a daemon restart; run agentlab workspace fsck ${ws.name}${mode === "repair" ? " --repair" : ""} again`;
    this.settle(op, () => {
      const current = this.store.workspaces.get(ws.id);
      if (!current) return;
      const lastFsck = {
        status: "failed",
        mode,
        exit_summary: summary,
        ...(device ? { device } : {}),
        started_at: op.created_at.toISOString(),
        completed_at: this.core.now().toISOString(),
      };
      this.store.workspaces.update(ws.id, {
        meta: { ...current.meta, last_fsck: lastFsck, fsck_interrupted: true },
      });
      this.core.event(ws, "workspace.fsck.failed", `fsck of workspace ${ws.name}: failed (interrupted)`, {
        mode,
        status: "failed",
        interrupted: true,
      });
    });
    return { outcome: "closed", message: `fsck result: failed (interrupted)${undone}` };
  }

  /** Wait while an e2fsck process has `device` as its last argument (found in /proc). */
  private async waitForFsckProcesses(device: string, operation: Operation): Promise<void> {
    const deadline = Date.now() + FSCK_WAIT_MS;
    while (e2fsckRunningOn(device)) {
      if (Date.now() >= deadline) {
        throw new AgentlabError("CONFLICT", `e2fsck is still running on ${device}`, {
          hint: "recovery waits for it and tries again at the next maintenance pass",
        });
      }
      await this.sleep(1000, operation.signal);
    }
  }

  // --- destroy (design §5.6): rolled forward, the user confirmed --------------------------------

  private async recoverDestroy(op: WorkspaceOp, operation: Operation): Promise<RecoveryResult> {
    const ws = this.store.workspaces.get(op.workspace_id);
    if (!ws) return { outcome: "closed", message: "the workspace record is gone" };
    const holder = this.holderRef(ws, op);
    if (holder) {
      await this.waitForTasks(holder, operation);
      const vm = await this.readVm(holder);
      if (vm?.status.lock) return this.lockedHolder(ws, op, holder, vm.status.lock, "destroy");
      if (vm) {
        try {
          await this.backend.setConfig(holder, {}, ["protection"]);
          await this.backend.destroy(holder, { purge: true }, { signal: operation.signal });
        } catch (error) {
          if (!isVmNotFound(error)) throw error;
        }
      }
    }
    let volumeLeft = false;
    if (holder) {
      try {
        await this.backend.volumeInfo(holder.node, ws.volid);
        volumeLeft = true;
      } catch {
        volumeLeft = false;
      }
    }
    if (volumeLeft) {
      const fix = `check for clones (zfs list -t all -o name,origin), then pvesm free ${ws.volid}`;
      this.store.tx(() => {
        this.store.workspaces.update(ws.id, {
          state: "broken",
          broken_reason: "volume left behind after holder destroy",
          meta: { ...ws.meta, broken_fix: fix },
        });
        this.core.event(
          ws,
          "workspace.broken",
          `volume ${ws.volid} was left behind after the holder was destroyed`,
        );
        this.core.endOp(op);
      });
      return { outcome: "broken", message: `volume left behind after holder destroy; fix: ${fix}` };
    }
    const sessions = this.store.sessions.byWorkspace(ws.id);
    this.store.tx(() => {
      for (const session of sessions) this.store.sessions.delete(session.id);
      this.store.workspaces.delete(ws.id);
      this.core.event(
        ws,
        "workspace.destroyed",
        `workspace ${ws.name} destroyed (finished after a restart)`,
        {
          holder_vmid: ws.holder_vmid,
          volid: ws.volid,
          deleted_sessions: sessions.map((s) => s.name),
        },
      );
    });
    return {
      outcome: "committed",
      message: `holder VM ${holder?.vmid ?? "-"} and volume ${ws.volid} are gone; workspace ${ws.name} is destroyed`,
    };
  }

  // --- snapshot records (design §5.4 snapshot_record_orphan) -------------------------------------

  /**
   * Drop `ready` snapshot rows whose snapshot is no longer on the holder (deleted by hand): Proxmox is
   * the truth for existence (design §6.2), and a stale row would keep the name taken. Workspaces with
   * an operation in flight are left for the next pass. Event workspace.snapshot.dropped per row.
   */
  async dropOrphanSnapshotRecords(operation: Operation): Promise<number> {
    let dropped = 0;
    for (const ws of this.store.workspaces.list({ state: "ready" })) {
      if (operation.signal.aborted) break;
      if (ws.holder_vmid === null || ws.node === null || this.busy.has(ws.id)) continue;
      if (this.store.workspaceOps.getByWorkspace(ws.id)) continue;
      const records = this.store.workspaceSnapshots.list(ws.id).filter((r) => r.state === "ready");
      if (records.length === 0) continue;
      let names: Set<string>;
      try {
        names = new Set(
          (await this.backend.snapshotList({ vmid: ws.holder_vmid, node: ws.node })).map((s) => s.name),
        );
      } catch (error) {
        // A missing holder is check's finding; anything else is retried next pass.
        if (!isVmNotFound(error))
          operation.log.warn({ err: error, workspace: ws.name }, "could not list the holder's snapshots");
        continue;
      }
      await this.core.locks.run(this.core.lockKey(ws.id), async () => {
        if (this.store.workspaceOps.getByWorkspace(ws.id)) return;
        for (const record of records) {
          if (names.has(record.name)) continue;
          this.store.tx(() => {
            if (!this.store.workspaceSnapshots.delete(ws.id, record.name)) return;
            dropped++;
            this.core.event(
              ws,
              "workspace.snapshot.dropped",
              `snapshot ${record.name} is no longer on holder VM ${ws.holder_vmid}; its record is dropped`,
              {
                snapshot: record.name,
                kind: record.kind,
              },
            );
          });
        }
      });
    }
    return dropped;
  }
}

/** Whether a process named e2fsck runs with `device` as its last argument (Linux /proc). */
export function e2fsckRunningOn(device: string, proc = "/proc"): boolean {
  let entries: string[];
  try {
    entries = readdirSync(proc);
  } catch {
    return false;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`${proc}/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
    if (argv.length > 1 && basename(argv[0]!) === "e2fsck" && argv.at(-1) === device) return true;
  }
  return false;
}
