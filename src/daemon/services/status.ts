import type { DaemonStatus } from "../../protocol/index.js";
import { AgentlabError } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";

/** Ask Proxmox who it is; a failure is part of the answer, not an error of the status call. */
async function backendStatus(ctx: DaemonContext): Promise<DaemonStatus["backend"]> {
  const kind = ctx.backend.kind;
  try {
    const [version, nodes] = await Promise.all([ctx.backend.version(), ctx.backend.listNodes()]);
    return {
      kind,
      reachable: true,
      version: version.version,
      nodes: nodes.map((n) => ({ node: n.node, online: n.online })),
    };
  } catch (error) {
    const known =
      error instanceof AgentlabError
        ? error
        : new AgentlabError("PROXMOX_ERROR", (error as Error)?.message ?? String(error));
    return { kind, reachable: false, error: { code: known.code, message: known.message, hint: known.hint } };
  }
}

export async function daemonStatus(ctx: DaemonContext): Promise<DaemonStatus> {
  const now = ctx.clock.now();
  return {
    version: ctx.version,
    pid: process.pid,
    started_at: ctx.startedAt.toISOString(),
    uptime_seconds: Math.max(0, (now.getTime() - ctx.startedAt.getTime()) / 1000),
    node_version: process.versions.node,
    schema_version: ctx.store.schemaVersion(),
    backend: await backendStatus(ctx),
    database: { path: ctx.store.path, size_bytes: ctx.store.sizeBytes() },
    socket_path: ctx.config.socket_path,
    config_path: ctx.configPath,
    profiles: ctx.profiles.length,
    sandboxes: ctx.store.sandboxes.countByState(),
  };
}
