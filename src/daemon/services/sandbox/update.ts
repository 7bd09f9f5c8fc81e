/**
 * `sandbox update`: a settled sandbox's cores, memory and tags.
 */
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import { vmRefOf } from "../maintenance-steps.js";
import {
  getSandbox,
  requireState,
  requireVm,
  type SandboxScope,
  SETTLED_STATES,
  withSandbox,
} from "./guards.js";
import { recordEvent } from "./journal.js";
import { sandboxJson } from "./json.js";
import { sandboxTags, vmTags } from "./vm-config.js";

export interface UpdateParams {
  vmid: number;
  cores?: number | undefined;
  memory_mb?: number | undefined;
  tags?: string[] | undefined;
}

export interface UpdateResult {
  sandbox: SandboxJson;
  cores?: number;
  memory_mb?: number;
  pending: Array<"cores" | "memory_mb">;
}

/**
 * Change cores, memory and tags. Tags replace the sandbox's list (lower-cased) and the VM keeps the
 * managed tag. Proxmox applies cores and memory of a running VM only at its next cold start; what it
 * holds back is read from the VM's current (non-pending) config and reported as pending.
 */
export function updateSandbox({ ctx, locks }: SandboxScope, params: UpdateParams): Promise<UpdateResult> {
  const { vmid } = params;
  return withSandbox(ctx, locks, vmid, async (row) => {
    requireState(row, "update", SETTLED_STATES);
    requireVm(row, "update");
    const vm = vmRefOf(ctx, row);
    const tags = params.tags === undefined ? undefined : sandboxTags(params.tags);
    const changes: Record<string, string | number> = {};
    if (params.cores !== undefined) changes.cores = params.cores;
    if (params.memory_mb !== undefined) changes.memory = params.memory_mb;
    if (tags !== undefined) changes.tags = vmTags(tags);
    await ctx.backend.setConfig(vm, changes);
    const [merged, current] = await Promise.all([
      ctx.backend.getConfig(vm),
      ctx.backend.getConfig(vm, { current: true }),
    ]);
    const pending: UpdateResult["pending"] = [];
    if (params.cores !== undefined && String(current.cores) !== String(params.cores)) pending.push("cores");
    if (params.memory_mb !== undefined && String(current.memory) !== String(params.memory_mb))
      pending.push("memory_mb");
    const result: Omit<UpdateResult, "sandbox"> = { pending };
    if (merged.cores !== undefined && Number.isFinite(Number(merged.cores)))
      result.cores = Number(merged.cores);
    if (merged.memory !== undefined && Number.isFinite(Number(merged.memory)))
      result.memory_mb = Number(merged.memory);
    const said = [
      ...(params.cores !== undefined ? [`cores ${params.cores}`] : []),
      ...(params.memory_mb !== undefined ? [`memory ${params.memory_mb} MB`] : []),
      ...(tags !== undefined ? [`tags ${tags.length > 0 ? tags.join(", ") : "(none)"}`] : []),
    ].join(", ");
    const updated = ctx.store.tx(() => {
      const next = tags !== undefined ? ctx.store.sandboxes.update(vmid, { tags }) : undefined;
      recordEvent(
        ctx,
        vmid,
        "sandbox.configured",
        `${said}${pending.length > 0 ? ` (${pending.join(", ")} pending until the next cold start)` : ""}`,
        {
          ...(params.cores !== undefined ? { cores: params.cores } : {}),
          ...(params.memory_mb !== undefined ? { memory_mb: params.memory_mb } : {}),
          ...(tags !== undefined ? { tags } : {}),
          pending,
        },
      );
      return next ?? getSandbox(ctx, vmid);
    });
    return { sandbox: sandboxJson(updated), ...result };
  });
}
