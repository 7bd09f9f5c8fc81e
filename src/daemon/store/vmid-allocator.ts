/**
 * The VMID high-water mark. Sandbox rows are kept forever, but workspace rows are deleted on destroy,
 * so the highest VMID agentlab ever used cannot be read from the live tables alone: without this
 * mark a destroyed workspace's holder VMID could be handed out again (docs/workspaces-design.md §3.3).
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";

export interface VmidAllocatorRepo {
  /**
   * The highest VMID agentlab ever used: max of every sandbox VMID, every workspace holder VMID and
   * the recorded mark; undefined on a database that never reserved one. The next candidate is this + 1.
   */
  highestUsed(): number | undefined;
  /** Whether a sandbox row or a workspace holder has this VMID (a candidate above the mark may still be taken by hand). */
  isUsed(vmid: number): boolean;
  /**
   * Raise the mark to `vmid` (never lowers it). Call it in the transaction that reserves the VMID, so
   * the mark and the reservation commit together.
   */
  record(vmid: number): void;
  /** The recorded mark alone, or undefined. */
  lastRecorded(): number | undefined;
}

function checkVmid(vmid: number): void {
  if (!Number.isSafeInteger(vmid) || vmid < 1) {
    throw new AgentlabError("INVALID_PARAMS", `a VMID is a positive integer, got ${String(vmid)}`);
  }
}

export function createVmidAllocatorRepo(db: Database.Database): VmidAllocatorRepo {
  const highestStmt = db.prepare<[], { v: number }>(
    `SELECT max(
       coalesce((SELECT max(vmid) FROM sandboxes), 0),
       coalesce((SELECT max(holder_vmid) FROM workspaces), 0),
       coalesce((SELECT last_vmid FROM vmid_allocator WHERE id = 1), 0)
     ) AS v`,
  );
  const usedStmt = db.prepare<[number, number], { n: number }>(
    `SELECT (SELECT count(*) FROM sandboxes WHERE vmid = ?) +
            (SELECT count(*) FROM workspaces WHERE holder_vmid = ?) AS n`,
  );
  const recordStmt = db.prepare<[number]>(
    `INSERT INTO vmid_allocator (id, last_vmid) VALUES (1, ?)
     ON CONFLICT (id) DO UPDATE SET last_vmid = max(last_vmid, excluded.last_vmid)`,
  );
  const lastStmt = db.prepare<[], { last_vmid: number }>("SELECT last_vmid FROM vmid_allocator WHERE id = 1");

  return {
    highestUsed() {
      const v = highestStmt.get()?.v ?? 0;
      return v > 0 ? v : undefined;
    },

    isUsed(vmid) {
      return (usedStmt.get(vmid, vmid)?.n ?? 0) > 0;
    },

    record(vmid) {
      checkVmid(vmid);
      recordStmt.run(vmid);
    },

    lastRecorded() {
      return lastStmt.get()?.last_vmid;
    },
  };
}
