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

/** Ask the guest agent for the address until it answers or the deadline passes, backing off to 2 s. */
export async function waitForIp(
  ctx: DaemonContext,
  vm: VmRef,
  deadline: number,
  op: Operation,
): Promise<string> {
  let delay = 250;
  for (;;) {
    op.signal.throwIfAborted();
    try {
      const ip = pickGuestIp(await ctx.backend.guestInterfaces(vm), ctx.config.agent_subnet);
      if (ip) return ip;
    } catch (error) {
      if (!(error instanceof AgentlabError && error.code === "GUEST_AGENT_NOT_READY")) throw error;
    }
    const left = deadline - ctx.clock.now().getTime();
    if (left <= 0) {
      throw new AgentlabError(
        "PROVISIONING_FAILED",
        `the guest did not report an address within provisioning_timeout (${Math.round(ctx.config.provisioning_timeout_ms / 1000)}s)`,
        {
          hint: "check that the template has qemu-guest-agent installed and agent: 1 set (qm config <template>)",
        },
      );
    }
    await abortableSleep(Math.min(delay, left), op.signal);
    delay = Math.min(delay * 2, 2000);
  }
}
