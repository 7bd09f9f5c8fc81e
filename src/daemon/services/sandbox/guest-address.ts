/**
 * Waiting for a booting guest to report its address on the agent subnet: the sign that a sandbox is
 * up, after provisioning, start, revert and a restore that leaves the VM running.
 */
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import { pickGuestIp } from "../../network/guest-ip.js";
import { abortableSleep } from "../../proxmox/tasks.js";
import type { VmRef } from "../../proxmox/types.js";
import type { Operation } from "../operation.js";

/**
 * Errors of the agent question that are asked again until the deadline: the agent not up yet, and a
 * Proxmox answer that failed for a moment (a 500 from pveproxy, a dropped connection). A VM that is
 * gone or a permission refused end the wait at once. Asking again mattered for `sandbox start`: one
 * failed question left the sandbox FAILED over a VM that ran and whose guest came up a moment later.
 */
const ASKED_AGAIN: ReadonlySet<string> = new Set([
  "GUEST_AGENT_NOT_READY",
  "PROXMOX_ERROR",
  "PROXMOX_UNREACHABLE",
]);

/** Ask the guest agent for the address until it answers or the deadline passes, backing off to 2 s. */
export async function waitForIp(
  ctx: DaemonContext,
  vm: VmRef,
  deadline: number,
  op: Operation,
): Promise<string> {
  let delay = 250;
  let lastError: AgentlabError | undefined;
  for (;;) {
    op.signal.throwIfAborted();
    try {
      const ip = pickGuestIp(await ctx.backend.guestInterfaces(vm), ctx.config.agent_subnet);
      if (ip) return ip;
    } catch (error) {
      if (!(error instanceof AgentlabError && ASKED_AGAIN.has(error.code))) throw error;
      lastError = error;
    }
    const left = deadline - ctx.clock.now().getTime();
    if (left <= 0) {
      const last =
        lastError && lastError.code !== "GUEST_AGENT_NOT_READY" ? `; last: ${lastError.message}` : "";
      throw new AgentlabError(
        "PROVISIONING_FAILED",
        `the guest did not report an address within provisioning_timeout (${Math.round(ctx.config.provisioning_timeout_ms / 1000)}s)${last}`,
        {
          hint: "check that the template has qemu-guest-agent installed and agent: 1 set (qm config <template>)",
        },
      );
    }
    await abortableSleep(Math.min(delay, left), op.signal);
    delay = Math.min(delay * 2, 2000);
  }
}
