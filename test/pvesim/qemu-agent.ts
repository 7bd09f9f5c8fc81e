/**
 * The agent endpoints for a real guest (guests=qemu): the command goes to the guest's qemu-guest-agent
 * over /var/run/qemu-server/<vmid>.qga, as qemu-server's agent API does (API2/Qemu/Agent.pm:228-240):
 * `assert_agent_available` (QemuServer/Agent.pm:107-113: `No QEMU guest agent configured`, `VM <vmid>
 * is not running`, then `guest-ping` with a 3 s timeout or `QEMU guest agent is not running`), then
 * `guest-<command>` with QMPClient's 5 s default timeout, whose answer is the result (an agent error
 * answer is passed through as `{error}`, as `mon_cmd` returns it).
 *
 * The socket waits happen after the state lock is released: the route returns a `deferred` step that
 * runner.ts runs outside the transaction.
 */
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import { monitorCommand } from "./monitor.js";
import { qemuPaths } from "./qemu.js";
import type { RouteResult } from "./routes.js";
import type { VmRec } from "./types.js";
import { agentEnabled } from "./vmconfig.js";

export function realAgentCall(ctx: Ctx, vm: VmRec, command: string): RouteResult {
  if (!agentEnabled(vm.config["agent"])) throw fail("No QEMU guest agent configured");
  if (vm.runtime.status !== "running") throw fail(`VM ${vm.vmid} is not running`);
  const path = qemuPaths(ctx.dir, vm.vmid).qga;
  const peer = `VM ${vm.vmid}`;
  return {
    data: null,
    deferred: async () => {
      try {
        await monitorCommand(path, "qga", peer, { execute: "guest-ping" });
      } catch {
        throw fail("QEMU guest agent is not running");
      }
      try {
        const answer = await monitorCommand(path, "qga", peer, { execute: `guest-${command}` });
        return { data: { result: answer.error ? { error: answer.error } : answer.return } };
      } catch (err) {
        throw fail((err as Error).message);
      }
    },
  };
}
