/**
 * Workspace leases: compare-and-set on the owner, nonce and expiry columns of a workspace row
 * (docs/workspaces-design.md §9.1, upstream spec §4.3). Each call is one UPDATE, and `changes() == 1`
 * is success, so two daemons' transactions or two requests can never both win. Expiry is compared as
 * fixed-width text (time.ts), which is chronological order.
 */

import { randomBytes } from "node:crypto";
import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { fromDbTimeOrNull, toDbTime } from "./time.js";
import { workspaceNotFound } from "./workspaces.js";

/** TTL of the temporary leases of create, snapshot, restore, fork, fsck and destroy (design §9.1). */
export const TEMP_LEASE_TTL_MS = 10 * 60_000;

/** Owner kinds. sandbox and session are attachment leases; the others are held while an op runs. */
export const LEASE_OWNER_KINDS = [
  "sandbox",
  "session",
  "create",
  "snapshot",
  "restore",
  "fork",
  "fsck",
  "destroy",
] as const;
export type LeaseOwnerKind = (typeof LEASE_OWNER_KINDS)[number];

/** 32 hex characters. */
export function newLeaseNonce(): string {
  return randomBytes(16).toString("hex");
}

/** `sandbox:<vmid>`: the lease of a sandbox the workspace is attached to. */
export function sandboxLeaseOwner(vmid: number): string {
  return `sandbox:${vmid}`;
}

/** `session:<id>`: the lease of a session, held while it has a sandbox. */
export function sessionLeaseOwner(sessionId: string): string {
  return `session:${sessionId}`;
}

/**
 * A temporary owner `<kind>:<id>:<8 hex>`, unique per operation, so a stale operation of the same kind
 * can never renew or release the lease of a newer one.
 */
export function tempLeaseOwner(kind: Exclude<LeaseOwnerKind, "sandbox" | "session">, id: string): string {
  return `${kind}:${id}:${randomBytes(4).toString("hex")}`;
}

export interface ParsedLeaseOwner {
  kind: LeaseOwnerKind;
  /** The vmid (as text), session id or workspace id the owner names. */
  id: string;
}

/** The kind and the entity of an owner string the daemon made; undefined for anything else. */
export function parseLeaseOwner(owner: string): ParsedLeaseOwner | undefined {
  const match = /^([a-z]+):([^:]+)(?::[0-9a-f]+)?$/.exec(owner);
  if (!match) return undefined;
  const kind = match[1] as LeaseOwnerKind;
  if (!(LEASE_OWNER_KINDS as readonly string[]).includes(kind)) return undefined;
  if (kind === "sandbox" && !/^[1-9][0-9]*$/.test(match[2]!)) return undefined;
  return { kind, id: match[2]! };
}

export interface LeaseGranted {
  ok: true;
  owner: string;
  nonce: string;
  expires_at: Date;
}

export interface LeaseRefused {
  ok: false;
  /** The current holder. */
  lease_owner: string | null;
  lease_expires_at: Date | null;
}

export interface LeaseCleared {
  previous_owner: string | null;
  previous_expires_at: Date | null;
}

export interface WorkspaceLeaseRepo {
  /**
   * Take the lease for `owner` when it is free, expired (at or before `now`), or already held by the
   * same owner (the re-take after a restart; it gets a new nonce). Otherwise return the holder.
   * No such workspace → WORKSPACE_NOT_FOUND.
   */
  acquire(workspaceId: string, owner: string, ttlMs: number, now?: Date): LeaseGranted | LeaseRefused;
  /**
   * Extend to now + ttl when owner and nonce still match, even if the lease expired meanwhile (nobody
   * took it). undefined when they no longer match: the lease was cleared or taken over.
   */
  renew(workspaceId: string, owner: string, nonce: string, ttlMs: number, now?: Date): Date | undefined;
  /** Null the three columns when owner and nonce match; false when they did not (nothing changed). */
  release(workspaceId: string, owner: string, nonce: string): boolean;
  /**
   * Hand a held lease to another owner in one step (rebind: sandbox:S1 → sandbox:S2). undefined when
   * owner and nonce no longer match.
   */
  transfer(
    workspaceId: string,
    owner: string,
    nonce: string,
    newOwner: string,
    ttlMs: number,
    now?: Date,
  ): LeaseGranted | undefined;
  /** Admin clear: null the three columns whoever holds them; returns who did. No such workspace → WORKSPACE_NOT_FOUND. */
  clear(workspaceId: string): LeaseCleared;
}

function checkOwner(owner: string): void {
  if (typeof owner !== "string" || owner.trim() === "") {
    throw new AgentlabError("INVALID_PARAMS", "a workspace lease owner must be a non-empty string");
  }
}

function checkTtl(ttlMs: number): void {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new AgentlabError(
      "INVALID_PARAMS",
      `a lease TTL must be a positive number of milliseconds, got ${String(ttlMs)}`,
    );
  }
}

export function createWorkspaceLeaseRepo(db: Database.Database, now: () => Date): WorkspaceLeaseRepo {
  const acquireStmt = db.prepare<{ id: string; owner: string; nonce: string; exp: string; now: string }>(
    `UPDATE workspaces SET lease_owner = @owner, lease_nonce = @nonce, lease_expires_at = @exp
     WHERE id = @id AND (lease_owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= @now
                         OR lease_owner = @owner)`,
  );
  const renewStmt = db.prepare<{ id: string; owner: string; nonce: string; exp: string }>(
    "UPDATE workspaces SET lease_expires_at = @exp WHERE id = @id AND lease_owner = @owner AND lease_nonce = @nonce",
  );
  const releaseStmt = db.prepare<{ id: string; owner: string; nonce: string }>(
    `UPDATE workspaces SET lease_owner = NULL, lease_nonce = NULL, lease_expires_at = NULL
     WHERE id = @id AND lease_owner = @owner AND lease_nonce = @nonce`,
  );
  const transferStmt = db.prepare<{
    id: string;
    owner: string;
    nonce: string;
    newOwner: string;
    newNonce: string;
    exp: string;
  }>(
    `UPDATE workspaces SET lease_owner = @newOwner, lease_nonce = @newNonce, lease_expires_at = @exp
     WHERE id = @id AND lease_owner = @owner AND lease_nonce = @nonce`,
  );
  const readStmt = db.prepare<[string], { lease_owner: string | null; lease_expires_at: string | null }>(
    "SELECT lease_owner, lease_expires_at FROM workspaces WHERE id = ?",
  );
  const clearStmt = db.prepare<[string]>(
    "UPDATE workspaces SET lease_owner = NULL, lease_nonce = NULL, lease_expires_at = NULL WHERE id = ?",
  );

  const clearTx = db.transaction((id: string): LeaseCleared => {
    const current = readStmt.get(id);
    if (current === undefined) throw workspaceNotFound(id);
    clearStmt.run(id);
    return {
      previous_owner: current.lease_owner,
      previous_expires_at: fromDbTimeOrNull(current.lease_expires_at),
    };
  });

  return {
    acquire(id, owner, ttlMs, at = now()) {
      checkOwner(owner);
      checkTtl(ttlMs);
      const nonce = newLeaseNonce();
      const expires = new Date(at.getTime() + ttlMs);
      const { changes } = acquireStmt.run({ id, owner, nonce, exp: toDbTime(expires), now: toDbTime(at) });
      if (changes === 1) return { ok: true, owner, nonce, expires_at: expires };
      const current = readStmt.get(id);
      if (current === undefined) throw workspaceNotFound(id);
      return {
        ok: false,
        lease_owner: current.lease_owner,
        lease_expires_at: fromDbTimeOrNull(current.lease_expires_at),
      };
    },

    renew(id, owner, nonce, ttlMs, at = now()) {
      checkTtl(ttlMs);
      const expires = new Date(at.getTime() + ttlMs);
      return renewStmt.run({ id, owner, nonce, exp: toDbTime(expires) }).changes === 1 ? expires : undefined;
    },

    release(id, owner, nonce) {
      return releaseStmt.run({ id, owner, nonce }).changes === 1;
    },

    transfer(id, owner, nonce, newOwner, ttlMs, at = now()) {
      checkOwner(newOwner);
      checkTtl(ttlMs);
      const newNonce = newLeaseNonce();
      const expires = new Date(at.getTime() + ttlMs);
      const { changes } = transferStmt.run({ id, owner, nonce, newOwner, newNonce, exp: toDbTime(expires) });
      return changes === 1 ? { ok: true, owner: newOwner, nonce: newNonce, expires_at: expires } : undefined;
    },

    clear(id) {
      return clearTx.immediate(id);
    },
  };
}

/**
 * WORKSPACE_LEASE_HELD as design §9.2 words it. `holder` describes the owner for the hint ("session s1");
 * by default the owner string itself.
 */
export function leaseHeldError(
  workspace: { id: string; name: string; attached_vmid: number | null },
  held: { lease_owner: string | null; lease_expires_at: Date | null },
  holder?: string,
): AgentlabError {
  const until = held.lease_expires_at === null ? "" : ` until ${held.lease_expires_at.toISOString()}`;
  return new AgentlabError("WORKSPACE_LEASE_HELD", "workspace lease held", {
    hint:
      `held by ${holder ?? held.lease_owner ?? "another operation"}${until}; wait, or if that holder is gone: ` +
      `agentlab workspace lease clear ${workspace.name}`,
    details: {
      workspace_id: workspace.id,
      workspace_name: workspace.name,
      attached_vmid: workspace.attached_vmid,
      lease_owner: held.lease_owner,
      lease_expires_at: held.lease_expires_at?.toISOString() ?? null,
    },
  });
}
