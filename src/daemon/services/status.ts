import type { DaemonStatus } from "../../protocol/index.js";
import { AgentlabError } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
import { createHousekeeping } from "../store/housekeeping.js";
import { directoryBytes } from "./housekeeping.js";
import type { WarmPool } from "./pool/filler.js";
import { privilegesCheckFresh } from "./privileges.js";

/** Ask Proxmox who it is; a failure is part of the answer, not an error of the status call. */
/** Longest the status call waits for Proxmox, well inside the CLI's default 30 s. */
export const BACKEND_PROBE_MS = 10_000;

async function backendStatus(ctx: DaemonContext): Promise<DaemonStatus["backend"]> {
  const kind = ctx.backend.kind;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new AgentlabError("PROXMOX_TIMEOUT", `Proxmox did not answer within ${BACKEND_PROBE_MS / 1000}s`, {
            hint: "check that the Proxmox services run (systemctl status pveproxy pvedaemon) and the host load",
          }),
        ),
      BACKEND_PROBE_MS,
    );
  });
  try {
    const [version, nodes] = await Promise.race([
      Promise.all([ctx.backend.version(), ctx.backend.listNodes()]),
      timeout,
    ]);
    return {
      kind,
      reachable: true,
      calls: ctx.backend.calls.count,
      version: version.version,
      nodes: nodes.map((n) => ({ node: n.node, online: n.online })),
    };
  } catch (error) {
    const known =
      error instanceof AgentlabError
        ? error
        : new AgentlabError("PROXMOX_ERROR", (error as Error)?.message ?? String(error));
    return {
      kind,
      reachable: false,
      calls: ctx.backend.calls.count,
      error: { code: known.code, message: known.message, hint: known.hint },
    };
  } finally {
    clearTimeout(timer);
  }
}

/** The token privilege check, bounded like the backend probe; skipped when Proxmox did not answer. */
async function privilegesStatus(ctx: DaemonContext): Promise<DaemonStatus["privileges"]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<DaemonStatus["privileges"]>((resolve) => {
    timer = setTimeout(
      () =>
        resolve({
          name: "privileges",
          status: "warn",
          detail: `not checked: Proxmox did not answer within ${BACKEND_PROBE_MS / 1000}s`,
        }),
      BACKEND_PROBE_MS,
    );
  });
  try {
    return await Promise.race([privilegesCheckFresh(ctx), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export async function daemonStatus(ctx: DaemonContext, pool?: WarmPool): Promise<DaemonStatus> {
  const now = ctx.clock.now();
  const [backend, isolation] = await Promise.all([backendStatus(ctx), isolationStatus(ctx)]);
  return {
    version: ctx.version,
    pid: process.pid,
    started_at: ctx.startedAt.toISOString(),
    uptime_seconds: Math.max(0, (now.getTime() - ctx.startedAt.getTime()) / 1000),
    node_version: process.versions.node,
    schema_version: ctx.store.schemaVersion(),
    backend,
    privileges: backend.reachable
      ? await privilegesStatus(ctx)
      : { name: "privileges", status: "warn", detail: "not checked: Proxmox is unreachable (see backend)" },
    database: { path: ctx.store.path, size_bytes: ctx.store.sizeBytes() },
    artifacts: { path: ctx.config.artifact_dir, size_bytes: directoryBytes(ctx.config.artifact_dir) },
    maintenance: lastMaintenance(ctx),
    guest_listener: ctx.guestReady?.listener() ?? {
      address: ctx.config.bootstrap_listen,
      listening: false,
      error: "not started",
    },
    socket_path: ctx.config.socket_path,
    control_listener: ctx.control ? { listening: true, ...ctx.control } : { listening: false },
    ...(isolation ? { isolation } : {}),
    config_path: ctx.configPath,
    profiles: ctx.profiles.length,
    sandboxes: ctx.store.sandboxes.countByState(),
    ...(pool ? { pools: pool.fill() } : {}),
  };
}

/** Sandboxes that have an address and should be bound to it, as the ruleset is now. */
async function isolationStatus(ctx: DaemonContext): Promise<DaemonStatus["isolation"]> {
  if (!ctx.network) return undefined;
  const live = [
    ...ctx.store.sandboxes.list({ state: "READY" }),
    ...ctx.store.sandboxes.list({ state: "RUNNING" }),
  ].map((s) => ({ vmid: s.vmid, ip: s.ip }));
  return ctx.network.report(live);
}

/** The last `maintenance run`, from its event (services/housekeeping.ts). */
function lastMaintenance(ctx: DaemonContext): DaemonStatus["maintenance"] {
  const last = createHousekeeping(ctx.store).lastRun();
  if (!last) return {};
  const summary = (last.summary ?? {}) as { ok?: unknown; freed_bytes?: unknown };
  return {
    last_run_at: last.at.toISOString(),
    ...(typeof summary.ok === "boolean" ? { ok: summary.ok } : {}),
    ...(typeof summary.freed_bytes === "number" ? { freed_bytes: summary.freed_bytes } : {}),
  };
}
