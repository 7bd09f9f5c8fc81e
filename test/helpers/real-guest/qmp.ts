/**
 * QMP commands to a running QEMU, in order, through the simulator's monitor client (test/pvesim/monitor.ts:
 * greeting, `qmp_capabilities`, the command); an `error` answer rejects with its description.
 */
import { type MonitorCommand, monitorCommand } from "../../pvesim/monitor.js";

export type QmpCommand = MonitorCommand;

export async function qmp(
  socketPath: string,
  commands: QmpCommand[],
  timeoutMs = 10_000,
): Promise<unknown[]> {
  const answers: unknown[] = [];
  for (const command of commands) {
    const answer = await monitorCommand(socketPath, "qmp", "guest", command, timeoutMs);
    if (answer.error) throw new Error(`${command.execute}: ${answer.error.class}: ${answer.error.desc}`);
    answers.push(answer.return);
  }
  return answers;
}
