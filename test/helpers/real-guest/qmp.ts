/**
 * One QMP exchange with a running QEMU (`-qmp unix:PATH,server=on,wait=off`): read the greeting, leave
 * capabilities negotiation with `qmp_capabilities`, run the commands in order. Events QEMU sends in
 * between are skipped; an `error` answer rejects with its description.
 */
import { createConnection } from "node:net";

export interface QmpCommand {
  execute: string;
  arguments?: Record<string, unknown>;
}

export function qmp(socketPath: string, commands: QmpCommand[], timeoutMs = 10_000): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const queue = [{ execute: "qmp_capabilities" }, ...commands];
    const answers: unknown[] = [];
    let greeted = false;
    let buffer = "";
    const timer = setTimeout(() => finish(new Error(`QMP gave no answer within ${timeoutMs} ms`)), timeoutMs);
    function finish(error: Error | null): void {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(answers.slice(1));
    }
    const sendNext = () => {
      const next = queue[answers.length];
      if (next) socket.write(`${JSON.stringify(next)}\n`);
      else finish(null);
    };
    socket.on("error", (error) => finish(error));
    socket.on("data", (chunk) => {
      buffer += chunk.toString("utf8");
      for (let newline = buffer.indexOf("\n"); newline >= 0; newline = buffer.indexOf("\n")) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (!line) continue;
        const message = JSON.parse(line) as {
          QMP?: unknown;
          event?: string;
          return?: unknown;
          error?: { class: string; desc: string };
        };
        if (message.QMP !== undefined && !greeted) {
          greeted = true;
          sendNext();
        } else if (message.error) {
          finish(
            new Error(`${queue[answers.length]?.execute}: ${message.error.class}: ${message.error.desc}`),
          );
        } else if ("return" in message) {
          answers.push(message.return);
          sendNext();
        }
      }
    });
  });
}
