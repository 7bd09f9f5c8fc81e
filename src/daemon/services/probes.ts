/**
 * The daemon's shared views of Proxmox and the host (proxmox/probe-cache.ts): `daemon.status`'s probe of
 * Proxmox (version, nodes, the token's privileges), its probe of the host (the nftables ruleset, the
 * artifact directory's size) and `sandbox.show`'s live view of each VM. Concurrent callers share one
 * probe, a probe that succeeded answers again for PROBE_TTL_MS, and while a newer one runs its answer
 * still serves the other callers up to PROBE_STALE_MS; every answer says when its probe began
 * (`checked_at`).
 */
import type { DaemonStatus } from "../../protocol/daemon.js";
import type { SandboxDetail } from "../../protocol/sandbox.js";
import { ProbeCache } from "../proxmox/probe-cache.js";
import type { ProxmoxBackend } from "../proxmox/types.js";

/** How long a successful probe answers again: short against a person's reading, long against 200 clients. */
export const PROBE_TTL_MS = 1_500;
/** The oldest answer given out while a newer probe runs; older than that, callers wait for the probe. */
export const PROBE_STALE_MS = 5_000;

export type ProxmoxProbe = {
  version: string;
  nodes: NonNullable<DaemonStatus["backend"]["nodes"]>;
  privileges: DaemonStatus["privileges"];
};

export type HostProbe = {
  isolation: DaemonStatus["isolation"];
  artifactsBytes: number;
};

export type VmProbe = Omit<SandboxDetail["proxmox"], "checked_at">;

export interface Probes {
  /** One key: what Proxmox says of itself. Not tied to the daemon's changes: a VM's change alters none of it. */
  proxmox: ProbeCache<ProxmoxProbe>;
  host: ProbeCache<HostProbe>;
  /** Keyed by VMID; a change the daemon made in Proxmox makes every kept view stale. */
  vms: ProbeCache<VmProbe>;
}

export function createProbes(backend: ProxmoxBackend, ttlMs = PROBE_TTL_MS, now?: () => number): Probes {
  const common = { ttlMs, staleMs: ttlMs > 0 ? PROBE_STALE_MS : 0, ...(now ? { now } : {}) };
  return {
    proxmox: new ProbeCache(common),
    host: new ProbeCache(common),
    vms: new ProbeCache({ ...common, generation: () => backend.changes ?? 0 }),
  };
}

/** The context's probes; a bare test context without them probes afresh on every call. */
export function probesOf(ctx: { probes?: Probes; backend: ProxmoxBackend }): Probes {
  return ctx.probes ?? createProbes(ctx.backend, 0);
}
