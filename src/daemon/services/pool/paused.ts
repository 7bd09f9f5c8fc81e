/**
 * Paused warm pool members (`warm_pool_state: paused`, docs/warm-pool.md): a member that reached
 * RUNNING is paused in RAM (Proxmox `status/suspend` without todisk: QEMU stops its vCPUs and the guest
 * keeps its memory, address and network binding), and a claim resumes it (`status/resume`). A paused
 * VM reports status "running" with qmpstatus "paused" (qemu-server, PVE/QemuServer.pm vmstatus; the
 * cluster list carries qmpstatus over status, pvestatd), which the backend reads as "paused".
 */
import type { DaemonContext } from "../../context.js";
import { transitionSandbox } from "../../state/sandbox.js";
import { vmRefOf } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { reportStep } from "../sandbox/journal.js";

export const PAUSED_REASON = "paused in RAM until a claim (warm_pool_state: paused)";

/**
 * Pause member `vmid` of `profile`'s pool, holding its lock: only if it is still a RUNNING member of
 * that pool (a claim may have taken it since it was picked) and the profile still wants paused members.
 * True when it was paused.
 */
export async function pauseMember(
  ctx: DaemonContext,
  vmid: number,
  profile: string,
  op: Operation,
): Promise<boolean> {
  const row = ctx.store.sandboxes.get(vmid);
  const wantsPaused = ctx.profiles.find((p) => p.name === profile)?.warm_pool_state === "paused";
  if (row?.pool !== profile || row.state !== "RUNNING" || !wantsPaused) return false;
  reportStep(op, vmid, "suspend", `warm pool of ${profile}: pausing sandbox ${vmid} in RAM until a claim`);
  await ctx.backend.suspend(vmRefOf(ctx, row), { signal: op.signal });
  transitionSandbox(ctx.store, vmid, "SUSPENDED", { reason: PAUSED_REASON });
  return true;
}
