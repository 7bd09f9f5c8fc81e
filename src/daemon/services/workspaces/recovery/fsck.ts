/**
 * Recovery of an interrupted `workspace fsck` (design §8): an e2fsck the last daemon started is waited
 * for, the volume activations it made are undone, and the result is recorded as failed (interrupted).
 */
import { readdirSync, readFileSync } from "node:fs";
import { basename } from "node:path";
import { AgentlabError } from "../../../../protocol/errors.js";
import { undoActivations } from "../../../host/device.js";
import type { Workspace } from "../../../store/workspaces.js";
import { hostToolsFor } from "../host.js";
import { type RecoveryResult, type RecoveryScope, settle } from "./common.js";

/** How long an e2fsck the last daemon started may keep running before recovery gives up waiting. */
const FSCK_WAIT_MS = 60 * 60_000;

export async function recoverFsck(scope: RecoveryScope, ws: Workspace): Promise<RecoveryResult> {
  const { core, op } = scope;
  const { store } = core.ctx;
  const device = typeof op.params.device === "string" ? op.params.device : undefined;
  const activations = Array.isArray(op.params.activations)
    ? (op.params.activations as Parameters<typeof undoActivations>[0])
    : [];
  // An e2fsck the last daemon started may still run (KillMode=process): its result is its own, and
  // the device must stay as it is until it ends.
  if (device) await waitForFsckProcesses(device, scope);
  let undone = "";
  if (activations.length > 0 && ws.node) {
    const access = await hostToolsFor(core.ctx, ws.node);
    if (!access.tools)
      throw new AgentlabError(
        "HOST_TOOLS_UNAVAILABLE",
        `cannot undo the activation of ${device ?? ws.volid}: ${access.reason}`,
      );
    await undoActivations(activations, access.tools);
    undone = `; ${activations.map((a) => `${a.vg}/${a.lv}`).join(", ")} deactivated again`;
  }
  const mode = op.params.mode === "repair" ? "repair" : "read-only";
  const summary = `interrupted by a daemon restart; run agentlab workspace fsck ${ws.name}${mode === "repair" ? " --repair" : ""} again`;
  settle(core, op, () => {
    const current = store.workspaces.get(ws.id);
    if (!current) return;
    const lastFsck = {
      status: "failed",
      mode,
      exit_summary: summary,
      ...(device ? { device } : {}),
      started_at: op.created_at.toISOString(),
      completed_at: core.now().toISOString(),
    };
    store.workspaces.update(ws.id, {
      meta: { ...current.meta, last_fsck: lastFsck, fsck_interrupted: true },
    });
    core.event(ws, "workspace.fsck.failed", `fsck of workspace ${ws.name}: failed (interrupted)`, {
      mode,
      status: "failed",
      interrupted: true,
    });
  });
  return { outcome: "closed", message: `fsck result: failed (interrupted)${undone}` };
}

/** Wait while an e2fsck process has `device` as its last argument (found in /proc). */
async function waitForFsckProcesses(device: string, scope: RecoveryScope): Promise<void> {
  const deadline = Date.now() + FSCK_WAIT_MS;
  while (e2fsckRunningOn(device)) {
    if (Date.now() >= deadline) {
      throw new AgentlabError("CONFLICT", `e2fsck is still running on ${device}`, {
        hint: "recovery waits for it and tries again at the next maintenance pass",
      });
    }
    await scope.sleep(1000, scope.operation.signal);
  }
}

/** Whether a process named e2fsck runs with `device` as its last argument (Linux /proc). */
export function e2fsckRunningOn(device: string, proc = "/proc"): boolean {
  let entries: string[];
  try {
    entries = readdirSync(proc);
  } catch {
    return false;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`${proc}/${entry}/cmdline`, "utf8").split("\0").filter(Boolean);
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
    if (argv.length > 1 && basename(argv[0]!) === "e2fsck" && argv.at(-1) === device) return true;
  }
  return false;
}
