/**
 * The real-guest tests' view of a qemu-guest-agent behind QEMU's virtio-serial channel
 * `org.qemu.guest_agent.0` (a unix socket on the host): the simulator's monitor client
 * (test/pvesim/monitor.ts, framed as qemu-server's QMPClient frames it), returning the `return` value.
 */
import { type MonitorAnswer, monitorCommand } from "../../pvesim/monitor.js";

/** Run one guest agent command; resolves with its `return` value, rejects with its `error`. */
export async function qgaCommand(
  socketPath: string,
  execute: string,
  args?: Record<string, unknown>,
  timeoutMs = 5_000,
): Promise<unknown> {
  const answer: MonitorAnswer = await monitorCommand(
    socketPath,
    "qga",
    "guest",
    args ? { execute, arguments: args } : { execute },
    timeoutMs,
  );
  if (answer.error) throw new Error(`${execute}: ${answer.error.class}: ${answer.error.desc}`);
  return answer.return;
}

/** Ask until the agent answers `guest-ping` (it starts during boot) or the deadline passes. */
export async function waitForAgent(socketPath: string, deadlineMs: number): Promise<void> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    try {
      await qgaCommand(socketPath, "guest-ping", undefined, 3_000);
      return;
    } catch (error) {
      if (Date.now() > until) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }
}
