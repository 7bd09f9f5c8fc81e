/**
 * Start-up recovery of workspace operations (design §10): every `workspace_ops` row the last daemon
 * process left behind is finished or undone after reading Proxmox, never guessed from the row alone;
 * one module per kind (sessions register theirs), this class dispatches.
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
import { AgentlabError } from "../../../../protocol/errors.js";
import { abortableSleep } from "../../../proxmox/tasks.js";
import type { VmRef } from "../../../proxmox/types.js";
import type { WorkspaceOp, WorkspaceOpKind } from "../../../store/workspace-ops.js";
import { describe, waitForVmTasks } from "../../maintenance-steps.js";
import type { Operation } from "../../operation.js";
import type { WorkspaceCore } from "../core.js";
import { recoverAttach } from "./attach.js";
import {
  abandon,
  onWorkspace,
  type Recoverer,
  type RecoveryHandler,
  type RecoveryOutcome,
  type RecoveryResult,
  type RecoverySandboxes,
  type RecoveryScope,
} from "./common.js";
import { recoverCreate } from "./create.js";
import { recoverDestroy } from "./destroy.js";
import { recoverDetach } from "./detach.js";
import { recoverFork } from "./fork.js";
import { recoverFsck } from "./fsck.js";
import { dropOrphanSnapshotRecords } from "./orphan-snapshots.js";
import { recoverRebind } from "./rebind.js";
import { recoverRestore, recoverSnapshot } from "./snapshot.js";

export type {
  RecoveryHandler,
  RecoveryOutcome,
  RecoveryResult,
  RecoverySandboxes,
} from "./common.js";

/** The built-in recovery of each kind the workspace service runs; other modules register() theirs. */
const RECOVERERS: Partial<Record<WorkspaceOpKind, Recoverer>> = {
  create: onWorkspace(recoverCreate),
  attach: onWorkspace(recoverAttach),
  detach: onWorkspace(recoverDetach),
  snapshot: onWorkspace(recoverSnapshot),
  restore: onWorkspace(recoverRestore),
  fork: recoverFork,
  fsck: onWorkspace(recoverFsck),
  destroy: onWorkspace(recoverDestroy),
  rebind: onWorkspace(recoverRebind),
};

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
    const recover = RECOVERERS[op.kind];
    if (!recover) return this.abandon(op);
    const scope: RecoveryScope = {
      core: this.core,
      sandboxes: this.sandboxes,
      op,
      operation,
      sleep: this.sleep,
      waitForTasks: (vm) => this.waitForTasks(vm, operation),
    };
    return recover(scope);
  }

  /**
   * Proxmox kept working after the daemon died (design §10.1): wait for the tasks still running on
   * `vm` before reading what they did. Bounded; past the bound the row waits for the next pass.
   */
  async waitForTasks(vm: VmRef, operation: Operation): Promise<void> {
    await waitForVmTasks(this.core.ctx.backend, vm, {
      waitMs: this.taskWaitMs,
      sleep: this.sleep,
      signal: operation.signal,
    });
  }

  /**
   * No built-in recovery for this kind (session rows nobody registered a handler for), or a row that
   * names nothing to finish: close it and say what to look at.
   */
  async abandon(op: WorkspaceOp): Promise<RecoveryResult> {
    return abandon(this.core, op);
  }

  /** Drop the records of snapshots deleted by hand (see orphan-snapshots.ts). */
  dropOrphanSnapshotRecords(operation: Operation): Promise<number> {
    return dropOrphanSnapshotRecords(this.core, operation, (id) => this.busy.has(id));
  }
}
