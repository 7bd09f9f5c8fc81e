/**
 * The sandbox_ops table: one intent row per sandbox operation on its VM (destroy, stop, start, revert,
 * snapshot save and restore), written before the operation's first Proxmox call and deleted by the
 * transaction that records its outcome. A row left behind is an operation a crash (kill -9, power loss)
 * interrupted; start-up recovery reads Proxmox and finishes or undoes it (services/sandbox/recovery/).
 */
import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { sqliteCode } from "./errors.js";
import { fromDbTime, toDbTime } from "./time.js";

/** Migrations 10 and 11 spell the same list out in their CHECK constraints. */
export const SANDBOX_OP_KINDS = [
  "destroy",
  "stop",
  "start",
  "revert",
  "snapshot_save",
  "snapshot_restore",
  "pool_claim",
] as const;
export type SandboxOpKind = (typeof SANDBOX_OP_KINDS)[number];

export interface SandboxOp {
  vmid: number;
  kind: SandboxOpKind;
  /** How far it got, where recovery needs to know ("begin", then e.g. "booting"). */
  step: string;
  params: Record<string, unknown>;
  created_at: Date;
}

export interface SandboxOpRepo {
  /**
   * Record the intent (one commit, or part of the caller's transaction). A row already there for the
   * VMID is an operation the last daemon left for recovery: CONFLICT, "recovering after restart".
   */
  begin(vmid: number, kind: SandboxOpKind, params?: Record<string, unknown>): SandboxOp;
  /** Move the op to `step` (call it inside the transaction that makes the step visible). */
  setStep(vmid: number, step: string): void;
  get(vmid: number): SandboxOp | undefined;
  /** Every open op, oldest first: recovery's work list. */
  list(): SandboxOp[];
  /** Delete the row (done or undone); safe to call when there is none. */
  finish(vmid: number): void;
}

interface OpDbRow {
  vmid: number;
  kind: string;
  params_json: string;
  created_at: string;
}

/** The message of the refusal while recovery has not settled the sandbox yet. */
export const SANDBOX_RECOVERING_MESSAGE = "recovering after restart";

function fromRow(row: OpDbRow): SandboxOp {
  if (!(SANDBOX_OP_KINDS as readonly string[]).includes(row.kind)) {
    throw new AgentlabError("INTERNAL", `sandbox op on ${row.vmid} has an unknown kind "${row.kind}"`);
  }
  let params: unknown;
  try {
    params = JSON.parse(row.params_json);
  } catch {
    params = undefined;
  }
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    // Recovery decides from these params; guessing could destroy the wrong thing, so stop and say where.
    throw new AgentlabError(
      "INTERNAL",
      `sandbox op ${row.kind} on ${row.vmid} has unreadable params in the database: ${row.params_json}`,
    );
  }
  const { step, ...rest } = params as Record<string, unknown>;
  return {
    vmid: row.vmid,
    kind: row.kind as SandboxOpKind,
    step: typeof step === "string" ? step : "begin",
    params: rest,
    created_at: fromDbTime(row.created_at),
  };
}

export function createSandboxOpRepo(db: Database.Database, now: () => Date): SandboxOpRepo {
  const insertStmt = db.prepare<[number, string, string, string]>(
    "INSERT INTO sandbox_ops (vmid, kind, params_json, created_at) VALUES (?, ?, ?, ?)",
  );
  const stepStmt = db.prepare<[string, number]>(
    "UPDATE sandbox_ops SET params_json = json_set(params_json, '$.step', ?) WHERE vmid = ?",
  );
  const getStmt = db.prepare<[number], OpDbRow>("SELECT * FROM sandbox_ops WHERE vmid = ?");
  const listStmt = db.prepare<[], OpDbRow>("SELECT * FROM sandbox_ops ORDER BY created_at, vmid");
  const finishStmt = db.prepare<[number]>("DELETE FROM sandbox_ops WHERE vmid = ?");

  return {
    begin(vmid, kind, params = {}) {
      const created = now();
      const all = { ...params, step: "begin" };
      try {
        insertStmt.run(vmid, kind, JSON.stringify(all), toDbTime(created));
      } catch (err) {
        if (sqliteCode(err) !== "SQLITE_CONSTRAINT_PRIMARYKEY") throw err;
        const open = getStmt.get(vmid);
        throw new AgentlabError("CONFLICT", `sandbox ${vmid} is busy: ${SANDBOX_RECOVERING_MESSAGE}`, {
          hint: `the daemon is finishing or undoing the ${open?.kind ?? "operation"} a restart interrupted; retry in a moment (agentlab sandbox show ${vmid})`,
          details: { vmid, op_kind: open?.kind ?? null, reason: "recovering" },
          cause: err,
        });
      }
      return { vmid, kind, step: "begin", params, created_at: created };
    },
    setStep(vmid, step) {
      stepStmt.run(step, vmid);
    },
    get(vmid) {
      const row = getStmt.get(vmid);
      return row === undefined ? undefined : fromRow(row);
    },
    list() {
      return listStmt.all().map(fromRow);
    },
    finish(vmid) {
      finishStmt.run(vmid);
    },
  };
}
