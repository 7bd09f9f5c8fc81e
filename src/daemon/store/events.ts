/**
 * The events table: an append-only log keyed by sandbox, job and workspace. Ids only grow
 * (AUTOINCREMENT never reuses one), so a reader can follow the log with `afterId`.
 */

import type Database from "better-sqlite3";
import { AgentlabError } from "../../protocol/errors.js";
import { fromDbTime, toDbTime } from "./time.js";

export interface NewEvent {
  kind: string;
  sandbox_vmid?: number | null;
  job_id?: string | null;
  workspace_id?: string | null;
  msg?: string | null;
  /** Stored as JSON. */
  payload?: Readonly<Record<string, unknown>> | null;
}

export interface EventRecord {
  id: number;
  ts: Date;
  kind: string;
  sandbox_vmid: number | null;
  job_id: string | null;
  workspace_id: string | null;
  msg: string | null;
  payload: Record<string, unknown> | null;
}

export interface EventListOptions {
  /** Only the last `tail` matching events (still oldest first). */
  tail?: number;
  /** Only events with an id greater than this. */
  afterId?: number;
  /** Only events of this kind (with tail 1: the last of that kind, without reading the others). */
  kind?: string;
}

export interface EventRepo {
  /** Record an event stamped with the store clock; returns it with its id. */
  append(event: NewEvent): EventRecord;
  /** A sandbox's events, oldest first. */
  listForSandbox(vmid: number, options?: EventListOptions): EventRecord[];
  /** A workspace's events (workspace_id set on append), oldest first. */
  listForWorkspace(workspaceId: string, options?: EventListOptions): EventRecord[];
  /** A job's events (job_id set on append), oldest first. */
  listForJob(jobId: string, options?: EventListOptions): EventRecord[];
}

interface EventDbRow {
  id: number;
  ts: string;
  kind: string;
  sandbox_vmid: number | null;
  job_id: string | null;
  workspace_id: string | null;
  msg: string | null;
  json: string | null;
}

interface EventInsertParams {
  ts: string;
  kind: string;
  sandbox_vmid: number | null;
  job_id: string | null;
  workspace_id: string | null;
  msg: string | null;
  json: string | null;
}

const COLUMNS = "id, ts, kind, sandbox_vmid, job_id, workspace_id, msg, json";

function parsePayload(row: EventDbRow): Record<string, unknown> | null {
  if (row.json === null) return null;
  let value: unknown;
  try {
    value = JSON.parse(row.json);
  } catch {
    // An unreadable payload must not make the whole log unreadable; keep the text for a human.
    return { unparsed: row.json };
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : { value };
}

function fromRow(row: EventDbRow): EventRecord {
  return {
    id: row.id,
    ts: fromDbTime(row.ts),
    kind: row.kind,
    sandbox_vmid: row.sandbox_vmid,
    job_id: row.job_id,
    workspace_id: row.workspace_id,
    msg: row.msg,
    payload: parsePayload(row),
  };
}

interface KeyedParams<K> {
  key: K;
  after: number;
  kind: string | null;
}

function checkCount(name: string, value: number | undefined): void {
  if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
    throw new AgentlabError("INVALID_PARAMS", `${name} must be a non-negative integer, got ${String(value)}`);
  }
}

export function createEventRepo(db: Database.Database, now: () => Date): EventRepo {
  const insertStmt = db.prepare<EventInsertParams, EventDbRow>(
    "INSERT INTO events (ts, kind, sandbox_vmid, job_id, workspace_id, msg, json) " +
      `VALUES (@ts, @kind, @sandbox_vmid, @job_id, @workspace_id, @msg, @json) RETURNING ${COLUMNS}`,
  );
  // Every listing is "the events with this key (and kind), oldest first", all of them or only the last
  // `tail`.
  const keyedList = <K extends number | string>(column: "sandbox_vmid" | "workspace_id" | "job_id") => {
    const where = `${column} = @key AND id > @after AND (@kind IS NULL OR kind = @kind)`;
    const all = db.prepare<KeyedParams<K>, EventDbRow>(
      `SELECT ${COLUMNS} FROM events WHERE ${where} ORDER BY id`,
    );
    const tail = db.prepare<KeyedParams<K> & { tail: number }, EventDbRow>(
      `SELECT ${COLUMNS} FROM (
         SELECT ${COLUMNS} FROM events WHERE ${where} ORDER BY id DESC LIMIT @tail
       ) ORDER BY id`,
    );
    return (key: K, options: EventListOptions): EventRecord[] => {
      checkCount("tail", options.tail);
      checkCount("afterId", options.afterId);
      const params = { key, after: options.afterId ?? 0, kind: options.kind ?? null };
      const rows = options.tail === undefined ? all.all(params) : tail.all({ ...params, tail: options.tail });
      return rows.map(fromRow);
    };
  };
  const forSandbox = keyedList<number>("sandbox_vmid");
  const forWorkspace = keyedList<string>("workspace_id");
  const forJob = keyedList<string>("job_id");

  return {
    append(event) {
      if (event.kind === "") throw new AgentlabError("INVALID_PARAMS", "event kind must not be empty");
      const json =
        event.payload === undefined || event.payload === null ? null : JSON.stringify(event.payload);
      const row = insertStmt.get({
        ts: toDbTime(now()),
        kind: event.kind,
        sandbox_vmid: event.sandbox_vmid ?? null,
        job_id: event.job_id ?? null,
        workspace_id: event.workspace_id ?? null,
        msg: event.msg ?? null,
        json,
      });
      if (row === undefined)
        throw new AgentlabError("INTERNAL", `appending event ${event.kind} returned no row`);
      return fromRow(row);
    },

    listForSandbox(vmid, options = {}) {
      return forSandbox(vmid, options);
    },

    listForWorkspace(workspaceId, options = {}) {
      return forWorkspace(workspaceId, options);
    },

    listForJob(jobId, options = {}) {
      return forJob(jobId, options);
    },
  };
}
