/**
 * The wire forms (protocol/sandbox.ts) of what the store and the backend hold: optional fields left
 * out rather than null, times as RFC 3339.
 */

import type { SandboxEvent, Sandbox as SandboxJson, SandboxSnapshot } from "../../../protocol/sandbox.js";
import type { SnapshotInfo } from "../../proxmox/types.js";
import { redacted } from "../../redact.js";
import type { EventRecord } from "../../store/events.js";
import type { Sandbox } from "../../store/sandboxes.js";

/** The wire form of a row: optional fields left out rather than null, times as RFC 3339. */
export function sandboxJson(row: Sandbox): SandboxJson {
  const json: SandboxJson = {
    vmid: row.vmid,
    name: row.name,
    profile: row.profile,
    state: row.state,
    keepalive: row.keepalive,
    tags: row.tags,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
  if (row.node) json.node = row.node;
  if (row.ip) json.ip = row.ip;
  if (row.workspace_id) json.workspace_id = row.workspace_id;
  if (row.lease_expires_at) json.lease_expires_at = row.lease_expires_at.toISOString();
  if (row.failure_reason) json.failure_reason = row.failure_reason;
  if (row.last_used_at) json.last_used_at = row.last_used_at.toISOString();
  if (row.ssh_host_keys && row.ssh_host_keys.length > 0) json.ssh_host_keys = row.ssh_host_keys;
  if (row.pool) json.pool = row.pool;
  return json;
}

export function eventJson(event: EventRecord): SandboxEvent {
  const json: SandboxEvent = { id: event.id, ts: event.ts.toISOString(), kind: event.kind };
  if (event.msg) json.msg = event.msg;
  if (event.payload !== undefined && event.payload !== null) json.payload = event.payload;
  // Events quote agent output and failure reasons; shown through the one redactor like everything else.
  return redacted(json);
}

export function snapshotJson(snapshot: SnapshotInfo): SandboxSnapshot {
  const json: SandboxSnapshot = { name: snapshot.name, vmstate: snapshot.vmstate };
  if (snapshot.snaptime !== undefined) json.created_at = new Date(snapshot.snaptime * 1000).toISOString();
  if (snapshot.description) json.description = snapshot.description;
  if (snapshot.parent) json.parent = snapshot.parent;
  return json;
}
