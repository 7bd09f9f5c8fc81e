import type { DaemonStatus } from "../../protocol/index.js";
import { AgentlabError } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
import { createHousekeeping } from "../store/housekeeping.js";
import { directoryBytes } from "./housekeeping.js";
import type { WarmPool } from "./pool/filler.js";
import { privilegesCheckFresh } from "./privileges.js";
import { type HostProbe, type ProxmoxProbe, probesOf } from "./probes.js";

/** Longest the status call waits for Proxmox, well inside the CLI's default 30 s. */
export const BACKEND_PROBE_MS = 10_000;

/**
 * Ask Proxmox who it is, then check the token's privileges: one probe, shared by every status call
 * while it runs and for PROBE_TTL_MS after it succeeded (services/probes.ts). It throws when Proxmox
 * does not answer, so an unreachable Proxmox is never kept and the next status asks again.
 */
async function probeProxmox(ctx: DaemonContext): Promise<ProxmoxProbe> {
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
  let version: { version: string };
  let nodes: Awaited<ReturnType<DaemonContext["backend"]["listNodes"]>>;
  try {
    [version, nodes] = await Promise.race([
      Promise.all([ctx.backend.version(), ctx.backend.listNodes()]),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
  return {
    version: version.version,
    nodes: nodes.map((n) => ({ node: n.node, online: n.online })),
    privileges: await privilegesStatus(ctx),
  };
}

/** What Proxmox said, from the last probe or a new one; a failure is part of the answer, not an error. */
async function proxmoxStatus(
  ctx: DaemonContext,
): Promise<{ backend: DaemonStatus["backend"]; privileges: DaemonStatus["privileges"] }> {
  const kind = ctx.backend.kind;
  const asked = ctx.clock.now();
  try {
    const { value, checkedAt } = await probesOf(ctx).proxmox.get("proxmox", () => probeProxmox(ctx));
    return {
      backend: {
        kind,
        reachable: true,
        calls: ctx.backend.calls.count,
        version: value.version,
        nodes: value.nodes,
        checked_at: new Date(checkedAt).toISOString(),
      },
      privileges: value.privileges,
    };
  } catch (error) {
    const known =
      error instanceof AgentlabError
        ? error
        : new AgentlabError("PROXMOX_ERROR", (error as Error)?.message ?? String(error));
    return {
      backend: {
        kind,
        reachable: false,
        calls: ctx.backend.calls.count,
        error: { code: known.code, message: known.message, hint: known.hint },
        checked_at: asked.toISOString(),
      },
      privileges: {
        name: "privileges",
        status: "warn",
        detail: "not checked: Proxmox is unreachable (see backend)",
      },
    };
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
  const [{ backend, privileges }, host] = await Promise.all([
    proxmoxStatus(ctx),
    probesOf(ctx).host.get("host", () => probeHost(ctx)),
  ]);
  const checked_at = new Date(host.checkedAt).toISOString();
  const { isolation } = host.value;
  return {
    version: ctx.version,
    pid: process.pid,
    started_at: ctx.startedAt.toISOString(),
    uptime_seconds: Math.max(0, (now.getTime() - ctx.startedAt.getTime()) / 1000),
    node_version: process.versions.node,
    schema_version: ctx.store.schemaVersion(),
    backend,
    privileges,
    database: { path: ctx.store.path, size_bytes: ctx.store.sizeBytes() },
    artifacts: { path: ctx.config.artifact_dir, size_bytes: host.value.artifactsBytes, checked_at },
    maintenance: lastMaintenance(ctx),
    guest_listener: ctx.guestReady?.listener() ?? {
      address: ctx.config.bootstrap_listen,
      listening: false,
      error: "not started",
    },
    socket_path: ctx.config.socket_path,
    control_listener: ctx.control ? { listening: true, ...ctx.control } : { listening: false },
    ...(isolation ? { isolation: { ...isolation, checked_at } } : {}),
    config_path: ctx.configPath,
    profiles: ctx.profiles.length,
    sandboxes: ctx.store.sandboxes.countByState(),
    ...(pool ? { pools: pool.fill() } : {}),
  };
}

/** The host's part of the status: the nftables ruleset (an `nft` run) and the artifacts' disk use (a walk). */
async function probeHost(ctx: DaemonContext): Promise<HostProbe> {
  return {
    isolation: await isolationStatus(ctx),
    artifactsBytes: directoryBytes(ctx.config.artifact_dir),
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
