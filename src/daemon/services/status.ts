import type { DaemonStatus } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";

export function daemonStatus(ctx: DaemonContext): DaemonStatus {
  const now = ctx.clock.now();
  return {
    version: ctx.version,
    pid: process.pid,
    started_at: ctx.startedAt.toISOString(),
    uptime_seconds: Math.max(0, (now.getTime() - ctx.startedAt.getTime()) / 1000),
    node_version: process.versions.node,
    schema_version: ctx.store.schemaVersion(),
    backend: { kind: ctx.config.proxmox_backend },
    database: { path: ctx.store.path, size_bytes: ctx.store.sizeBytes() },
    socket_path: ctx.config.socket_path,
    config_path: ctx.configPath,
    profiles: ctx.profiles.length,
    sandboxes: ctx.store.sandboxes.countByState(),
  };
}
