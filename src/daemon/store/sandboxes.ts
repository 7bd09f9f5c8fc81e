/**
 * The sandboxes table. Rows are never deleted: a destroyed sandbox stays as state DESTROYED so its
 * history, events and jobs keep pointing at something.
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { SANDBOX_STATE_NAMES } from "../../protocol/sandbox.js";
import { patchStatements } from "./patch.js";
import { fromDbTime, fromDbTimeOrNull, toDbTime, toDbTimeOrNull } from "./time.js";

/**
 * Spec 4.1, as the protocol names them (one list for the wire and the database). Migration 1 spells
 * the same list out in its CHECK constraint.
 */
export const SANDBOX_STATES = SANDBOX_STATE_NAMES;

export type SandboxState = (typeof SANDBOX_STATES)[number];

export function isSandboxState(value: unknown): value is SandboxState {
  return typeof value === "string" && (SANDBOX_STATES as readonly string[]).includes(value);
}

export interface Sandbox {
  vmid: number;
  name: string;
  profile: string;
  state: SandboxState;
  node: string | null;
  /** null while unknown. */
  ip: string | null;
  workspace_id: string | null;
  keepalive: boolean;
  lease_expires_at: Date | null;
  tags: string[];
  /** Why the sandbox is FAILED or TIMEOUT. */
  failure_reason: string | null;
  /** The Proxmox clone succeeded for this row; only then may cleanup destroy VM `vmid`. */
  vm_created: boolean;
  /** Cloud-init snippet to delete when the sandbox is destroyed. */
  snippet_path: string | null;
  /** The guest's SSH host keys ("type base64") from its ready report; null when none were reported. */
  ssh_host_keys: string[] | null;
  created_at: Date;
  updated_at: Date;
  last_used_at: Date | null;
  /** The profile whose warm pool this sandbox is a member of; null for a sandbox someone owns. */
  pool: string | null;
}

export interface NewSandbox {
  vmid: number;
  name: string;
  profile: string;
  state: SandboxState;
  node?: string | null;
  /** An empty string is stored as null (unknown). */
  ip?: string | null;
  workspace_id?: string | null;
  keepalive?: boolean;
  lease_expires_at?: Date | null;
  tags?: readonly string[];
  failure_reason?: string | null;
  vm_created?: boolean;
  snippet_path?: string | null;
  /** Defaults to the store clock; updated_at starts equal to it. */
  created_at?: Date;
  last_used_at?: Date | null;
  /** A warm pool member of this profile (docs/warm-pool.md). */
  pool?: string | null;
}

export interface SandboxListFilter {
  state?: SandboxState;
  profile?: string;
  /** DESTROYED rows are left out unless asked for, or unless `state` is DESTROYED. */
  includeDestroyed?: boolean;
  /** Leave warm pool members out (what users list); internal callers see every row. */
  excludePool?: boolean;
  /** Only the members of this profile's warm pool. */
  poolOf?: string;
}

/**
 * Columns a caller may change after insert; vmid, profile and created_at never change, and name only
 * when a warm pool member is claimed (with `pool` set to null in the same update).
 */
export interface SandboxPatch {
  name?: string;
  pool?: string | null;
  state?: SandboxState;
  node?: string | null;
  ip?: string | null;
  workspace_id?: string | null;
  keepalive?: boolean;
  lease_expires_at?: Date | null;
  tags?: readonly string[];
  failure_reason?: string | null;
  vm_created?: boolean;
  snippet_path?: string | null;
  ssh_host_keys?: readonly string[] | null;
  last_used_at?: Date | null;
}

export interface SandboxRepo {
  /** Row count per state, for states that have at least one row. */
  countByState(): Record<string, number>;
  /** Row count per state and profile, for the pairs that have at least one row (metrics). */
  countByStateAndProfile(): Array<{ state: string; profile: string; n: number }>;
  /** Insert a new row. A taken vmid or live guest IP → CONFLICT; an unknown workspace → NOT_FOUND. */
  insert(row: NewSandbox): Sandbox;
  get(vmid: number): Sandbox | undefined;
  /** Ordered by vmid. */
  list(filter?: SandboxListFilter): Sandbox[];
  /**
   * Change columns of one row, only if it is still in `expectState` when given (compare-and-set).
   * Returns the updated row, or undefined when the row is missing or its state moved on.
   */
  update(vmid: number, patch: SandboxPatch, expectState?: SandboxState): Sandbox | undefined;
  /** The highest VMID any sandbox ever had (VMIDs are never reused), or undefined. */
  maxVmid(): number | undefined;
  /** Rows not DESTROYED whose lease ran out at or before `now`, by vmid (the lease reaper's work list). */
  listLeaseExpired(now: Date): Sandbox[];
  /** Rows in one of `states` that still name a cloud-init snippet file, by vmid. */
  listWithSnippet(states: readonly SandboxState[]): Sandbox[];
}

interface SandboxDbRow {
  vmid: number;
  name: string;
  profile: string;
  state: string;
  node: string | null;
  ip: string | null;
  workspace_id: string | null;
  keepalive: number;
  lease_expires_at: string | null;
  tags: string;
  failure_reason: string | null;
  vm_created: number;
  snippet_path: string | null;
  ssh_host_keys: string | null;
  created_at: string;
  updated_at: string;
  last_used_at: string | null;
  pool: string | null;
}

/** An insert binds every column, in the row's own encoding. */
type SandboxInsertParams = SandboxDbRow;

interface SandboxListParams {
  state: string | null;
  profile: string | null;
  all: number;
  exclude_pool: number;
  pool_of: string | null;
}

const COLUMNS =
  "vmid, name, profile, state, node, ip, workspace_id, keepalive, lease_expires_at, tags, failure_reason, " +
  "vm_created, snippet_path, ssh_host_keys, created_at, updated_at, last_used_at, pool";

function fromRow(row: SandboxDbRow): Sandbox {
  if (!isSandboxState(row.state)) {
    throw new AgentlabError(
      "INTERNAL",
      `sandbox ${row.vmid} has an unknown state "${row.state}" in the database`,
    );
  }
  return {
    vmid: row.vmid,
    name: row.name,
    profile: row.profile,
    state: row.state,
    node: row.node,
    ip: row.ip,
    workspace_id: row.workspace_id,
    keepalive: row.keepalive !== 0,
    lease_expires_at: fromDbTimeOrNull(row.lease_expires_at),
    tags: row.tags === "" ? [] : row.tags.split(","),
    failure_reason: row.failure_reason,
    vm_created: row.vm_created !== 0,
    snippet_path: row.snippet_path,
    ssh_host_keys: decodeHostKeys(row.ssh_host_keys),
    created_at: fromDbTime(row.created_at),
    updated_at: fromDbTime(row.updated_at),
    last_used_at: fromDbTimeOrNull(row.last_used_at),
    pool: row.pool,
  };
}

/** Host keys are stored as a JSON array; an empty list is stored as NULL (none reported). */
function encodeHostKeys(keys: readonly string[] | null | undefined): string | null {
  return keys && keys.length > 0 ? JSON.stringify(keys) : null;
}

function decodeHostKeys(text: string | null): string[] | null {
  if (text === null) return null;
  try {
    const keys: unknown = JSON.parse(text);
    if (Array.isArray(keys) && keys.every((key) => typeof key === "string")) return keys;
  } catch {
    // fall through: a damaged value is as good as none, and exec then refuses with "no host keys"
  }
  return null;
}

/** Tags are stored comma-joined (upstream's format), so a tag may not contain a comma. */
function encodeTags(tags: readonly string[]): string {
  for (const tag of tags) {
    if (tag === "" || tag.includes(",")) {
      throw new AgentlabError(
        "INVALID_PARAMS",
        `invalid sandbox tag ${JSON.stringify(tag)}: tags are non-empty and contain no comma`,
      );
    }
  }
  return tags.join(",");
}

function sqliteCode(err: unknown): string | undefined {
  const code = typeof err === "object" && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === "string" ? code : undefined;
}

export function createSandboxRepo(db: Database.Database, now: () => Date): SandboxRepo {
  const countStmt = db.prepare<[], { state: string; n: number }>(
    "SELECT state, count(*) AS n FROM sandboxes GROUP BY state ORDER BY state",
  );
  const countByProfileStmt = db.prepare<[], { state: string; profile: string; n: number }>(
    "SELECT state, profile, count(*) AS n FROM sandboxes GROUP BY state, profile ORDER BY state, profile",
  );
  const insertStmt = db.prepare<SandboxInsertParams, SandboxDbRow>(
    `INSERT INTO sandboxes (${COLUMNS}) VALUES (@vmid, @name, @profile, @state, @node, @ip, @workspace_id, ` +
      "@keepalive, @lease_expires_at, @tags, @failure_reason, @vm_created, @snippet_path, @ssh_host_keys, @created_at, " +
      `@updated_at, @last_used_at, @pool) RETURNING ${COLUMNS}`,
  );
  const getStmt = db.prepare<[number], SandboxDbRow>(`SELECT ${COLUMNS} FROM sandboxes WHERE vmid = ?`);
  const listStmt = db.prepare<SandboxListParams, SandboxDbRow>(
    `SELECT ${COLUMNS} FROM sandboxes
     WHERE (@state IS NULL OR state = @state)
       AND (@profile IS NULL OR profile = @profile)
       AND (@all = 1 OR @state IS NOT NULL OR state <> 'DESTROYED')
       AND (@exclude_pool = 0 OR pool IS NULL)
       AND (@pool_of IS NULL OR pool = @pool_of)
     ORDER BY vmid`,
  );
  const ipOwnerStmt = db.prepare<[string], { vmid: number }>(
    "SELECT vmid FROM sandboxes WHERE ip = ? AND state <> 'DESTROYED'",
  );
  const maxStmt = db.prepare<[], { v: number | null }>("SELECT max(vmid) AS v FROM sandboxes");
  // Fixed-width timestamps (time.ts) make this string comparison chronological.
  const expiredStmt = db.prepare<[string], SandboxDbRow>(
    `SELECT ${COLUMNS} FROM sandboxes
     WHERE state <> 'DESTROYED' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?
     ORDER BY vmid`,
  );
  const withSnippetStmt = db.prepare<[string], SandboxDbRow>(
    `SELECT ${COLUMNS} FROM sandboxes
     WHERE snippet_path IS NOT NULL AND state IN (SELECT value FROM json_each(?))
     ORDER BY vmid`,
  );
  const updateStmt = patchStatements<SandboxDbRow>(db, {
    table: "sandboxes",
    key: "vmid",
    returning: COLUMNS,
    casClause: "state = @expect",
  });

  return {
    countByState() {
      const counts: Record<string, number> = {};
      for (const { state, n } of countStmt.all()) counts[state] = n;
      return counts;
    },
    countByStateAndProfile() {
      return countByProfileStmt.all();
    },

    insert(row) {
      const created = toDbTime(row.created_at ?? now());
      const ip = row.ip === "" ? null : (row.ip ?? null);
      const params: SandboxInsertParams = {
        vmid: row.vmid,
        name: row.name,
        profile: row.profile,
        state: row.state,
        node: row.node ?? null,
        ip,
        workspace_id: row.workspace_id ?? null,
        keepalive: row.keepalive ? 1 : 0,
        lease_expires_at: toDbTimeOrNull(row.lease_expires_at),
        tags: encodeTags(row.tags ?? []),
        failure_reason: row.failure_reason ?? null,
        vm_created: row.vm_created ? 1 : 0,
        snippet_path: row.snippet_path ?? null,
        ssh_host_keys: null,
        created_at: created,
        updated_at: created,
        last_used_at: toDbTimeOrNull(row.last_used_at),
        pool: row.pool ?? null,
      };
      let inserted: SandboxDbRow | undefined;
      try {
        inserted = insertStmt.get(params);
      } catch (err) {
        const code = sqliteCode(err);
        if (code === "SQLITE_CONSTRAINT_PRIMARYKEY") {
          throw new AgentlabError("CONFLICT", `sandbox ${row.vmid} already exists`, {
            details: { vmid: row.vmid },
            cause: err,
          });
        }
        if (code === "SQLITE_CONSTRAINT_UNIQUE" && ip !== null && /sandboxes\.ip/.test(String(err))) {
          const owner = ipOwnerStmt.get(ip)?.vmid;
          throw new AgentlabError(
            "CONFLICT",
            `guest IP ${ip} is already used by sandbox ${owner ?? "another sandbox"}`,
            { details: { vmid: row.vmid, ip, conflicting_vmid: owner ?? null }, cause: err },
          );
        }
        if (code === "SQLITE_CONSTRAINT_FOREIGNKEY") {
          throw new AgentlabError("NOT_FOUND", `workspace ${String(row.workspace_id)} does not exist`, {
            details: { vmid: row.vmid, workspace_id: row.workspace_id ?? null },
            cause: err,
          });
        }
        throw err;
      }
      if (inserted === undefined)
        throw new AgentlabError("INTERNAL", `inserting sandbox ${row.vmid} returned no row`);
      return fromRow(inserted);
    },

    update(vmid, patch, expectState) {
      const values: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(patch)) {
        if (value === undefined) continue;
        switch (key) {
          case "keepalive":
          case "vm_created":
            values[key] = value ? 1 : 0;
            break;
          case "lease_expires_at":
          case "last_used_at":
            values[key] = toDbTimeOrNull(value as Date | null);
            break;
          case "tags":
            values[key] = encodeTags(value as string[]);
            break;
          case "ssh_host_keys":
            values[key] = encodeHostKeys(value as string[] | null);
            break;
          case "ip":
            values[key] = value === "" ? null : value;
            break;
          default:
            values[key] = value;
        }
      }
      const columns = Object.keys(values).sort();
      const params = { ...values, vmid, updated_at: toDbTime(now()), expect: expectState ?? null };
      try {
        const row = updateStmt(columns, expectState !== undefined).get(params);
        return row === undefined ? undefined : fromRow(row);
      } catch (err) {
        const ip = values.ip;
        if (sqliteCode(err) === "SQLITE_CONSTRAINT_UNIQUE" && typeof ip === "string") {
          const owner = ipOwnerStmt.get(ip)?.vmid;
          throw new AgentlabError(
            "CONFLICT",
            `guest IP ${ip} is already used by sandbox ${owner ?? "another sandbox"}`,
            {
              details: { vmid, ip, conflicting_vmid: owner ?? null },
              cause: err,
            },
          );
        }
        throw err;
      }
    },

    maxVmid() {
      return maxStmt.get()?.v ?? undefined;
    },

    listLeaseExpired(at) {
      return expiredStmt.all(toDbTime(at)).map(fromRow);
    },

    listWithSnippet(states) {
      return withSnippetStmt.all(JSON.stringify(states)).map(fromRow);
    },

    get(vmid) {
      const row = getStmt.get(vmid);
      return row === undefined ? undefined : fromRow(row);
    },

    list(filter = {}) {
      return listStmt
        .all({
          state: filter.state ?? null,
          profile: filter.profile ?? null,
          all: filter.includeDestroyed ? 1 : 0,
          exclude_pool: filter.excludePool ? 1 : 0,
          pool_of: filter.poolOf ?? null,
        })
        .map(fromRow);
    },
  };
}
