/**
 * A client for a real qemu-guest-agent behind QEMU's virtio-serial channel `org.qemu.guest_agent.0`,
 * exposed on the host as a unix socket (`-chardev socket,server=on,wait=off`). The channel keeps no
 * session: a previous client may have left a half-read answer in it, so every exchange starts with
 * `guest-sync` and a random id, and only the answer carrying that id marks where ours begin (the
 * method the QEMU guest agent protocol documents for resynchronising).
 */
import { randomInt } from "node:crypto";
import { createConnection } from "node:net";

export class QgaTimeoutError extends Error {}

/** Run one guest agent command; resolves with its `return` value, rejects with its `error`. */
export function qgaCommand(
  socketPath: string,
  execute: string,
  args?: Record<string, unknown>,
  timeoutMs = 5_000,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const id = randomInt(1, 2 ** 31);
    const socket = createConnection(socketPath);
    let buffer = "";
    let synced = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new QgaTimeoutError(`guest agent gave no answer to ${execute} within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (error: Error | null, value?: unknown) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value);
    };
    socket.on("error", (error) => finish(error));
    socket.on("connect", () =>
      socket.write(`${JSON.stringify({ execute: "guest-sync", arguments: { id } })}\n`),
    );
    socket.on("data", (chunk) => {
      buffer += chunk.toString("utf8");
      let newline = buffer.indexOf("\n");
      while (newline >= 0) {
        const line = buffer.slice(0, newline).replace(/^\xff/, "").trim();
        buffer = buffer.slice(newline + 1);
        newline = buffer.indexOf("\n");
        if (!line) continue;
        let message: { return?: unknown; error?: { class?: string; desc?: string } };
        try {
          message = JSON.parse(line);
        } catch {
          continue; // the tail of an answer someone else asked for
        }
        if (!synced) {
          if (message.return === id) {
            synced = true;
            socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
          }
          continue;
        }
        if (message.error) finish(new Error(`${execute}: ${message.error.class}: ${message.error.desc}`));
        else finish(null, message.return);
        return;
      }
    });
  });
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
