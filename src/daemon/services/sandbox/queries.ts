/**
 * Read-only views of sandboxes: `sandbox list`, `sandbox show` and `sandbox logs`. They take no
 * lock: they change nothing, and a view taken mid-operation shows the state recorded so far.
 */
import type { SandboxDetail, SandboxEvent, Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import type { DaemonContext } from "../../context.js";
import type { Sandbox as SandboxRow, SandboxState } from "../../store/sandboxes.js";
import { describe, isVmNotFound, vmRefOf } from "../maintenance-steps.js";
import { probesOf, type VmProbe } from "../probes.js";
import { IDLE_STOP_EVENT, idlePolicy } from "./activity.js";
import { getSandbox } from "./guards.js";
import { eventJson, sandboxJson } from "./json.js";

export function listSandboxes(
  ctx: DaemonContext,
  filter: {
    state?: SandboxState | undefined;
    profile?: string | undefined;
    all?: boolean | undefined;
  },
): { sandboxes: SandboxJson[] } {
  const rows = ctx.store.sandboxes.list({
    ...(filter.state ? { state: filter.state } : {}),
    ...(filter.profile ? { profile: filter.profile } : {}),
    includeDestroyed: filter.all === true,
    // Warm pool members are nobody's sandboxes yet: shown only with all.
    excludePool: filter.all !== true,
  });
  return { sandboxes: rows.map(sandboxJson) };
}

/** A sandbox with its recent events and, while it has a VM, what Proxmox says of that VM. */
export async function showSandbox(ctx: DaemonContext, vmid: number, eventCount = 20): Promise<SandboxDetail> {
  const row = getSandbox(ctx, vmid);
  const detail: SandboxDetail = {
    ...sandboxJson(row),
    proxmox: { found: false },
    idle_stop: idleStopView(ctx, row),
    events: ctx.store.events.listForSandbox(vmid, { tail: eventCount }).map(eventJson),
  };
  if (row.lease_expires_at) {
    detail.lease_remaining_seconds = Math.max(
      0,
      Math.round((row.lease_expires_at.getTime() - ctx.clock.now().getTime()) / 1000),
    );
  }
  if (row.vm_created && row.state !== "DESTROYED") {
    const asked = ctx.clock.now();
    try {
      const { value, checkedAt } = await probesOf(ctx).vms.get(String(vmid), () => probeVm(ctx, row));
      detail.proxmox = { ...value, checked_at: new Date(checkedAt).toISOString() };
    } catch (error) {
      detail.proxmox = {
        found: false,
        error: isVmNotFound(error) ? `VM ${vmid} no longer exists in Proxmox` : describe(error),
        checked_at: asked.toISOString(),
      };
    }
  }
  return detail;
}

/**
 * What Proxmox says of the sandbox's VM now: its status and config, one probe shared by concurrent
 * shows of the same sandbox and kept briefly unless the daemon changed something since (probes.ts).
 */
async function probeVm(ctx: DaemonContext, row: SandboxRow): Promise<VmProbe> {
  const vm = vmRefOf(ctx, row);
  const [status, vmConfig] = await Promise.all([ctx.backend.status(vm), ctx.backend.getConfig(vm)]);
  const view: VmProbe = { found: true, status: status.state };
  if (status.lock) view.lock = status.lock;
  if (typeof vmConfig.cores === "number") view.cores = vmConfig.cores;
  const memory = Number(vmConfig.memory);
  if (Number.isFinite(memory)) view.memory_mb = memory;
  return view;
}

/** How idle stop applies to the sandbox, and when it last stopped it. */
function idleStopView(ctx: DaemonContext, row: SandboxRow): SandboxDetail["idle_stop"] {
  const policy = idlePolicy(ctx, row);
  const view: SandboxDetail["idle_stop"] = { after_ms: policy.windowMs };
  if ("off" in policy) view.off = policy.off;
  // The last one only: every show read all of the sandbox's events for it, a cost that grew with its age.
  const [last] = ctx.store.events.listForSandbox(row.vmid, { kind: IDLE_STOP_EVENT, tail: 1 });
  if (last) {
    const payload = (last.payload ?? {}) as { idle_for_minutes?: unknown; cpu_usage?: unknown };
    view.last = {
      at: last.ts.toISOString(),
      idle_for_minutes: Number(payload.idle_for_minutes ?? 0),
      cpu_usage: Number(payload.cpu_usage ?? 0),
    };
  }
  return view;
}

/** A sandbox's events: the last `tail`, or (for following) all after `after_id`. */
export function sandboxLogs(
  ctx: DaemonContext,
  vmid: number,
  options: { tail?: number | undefined; after_id?: number | undefined },
): { events: SandboxEvent[]; last_id: number } {
  getSandbox(ctx, vmid);
  const events = ctx.store.events.listForSandbox(
    vmid,
    options.after_id !== undefined ? { afterId: options.after_id } : { tail: options.tail ?? 50 },
  );
  return { events: events.map(eventJson), last_id: events.at(-1)?.id ?? options.after_id ?? 0 };
}
