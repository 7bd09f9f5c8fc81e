/**
 * Talking to a real QEMU (guests=qemu): its QMP socket and the guest agent's socket, framed as
 * qemu-server's `PVE::QMPClient` frames them (src/PVE/QMPClient.pm):
 *
 * - QMP: read the greeting, `qmp_capabilities`, then `{"execute","arguments","id"}` and wait for the
 *   answer with that id, skipping events and the greeting (`mux_input`, :466-490).
 * - QGA: no greeting and no ids; every command is preceded by `guest-sync-delimited` with a fresh id
 *   (`check_queue`, :300-309). qemu-ga answers it with a 0xFF byte and `{"return": id}`, so whatever an
 *   earlier, timed-out exchange left in the channel is skipped up to the last 0xFF, and the line after
 *   the sync answer is the command's answer (`mux_input`, :423-450).
 *
 * Timeouts are QMPClient's: 5 s by default, 3 s for the agent ping (`qga_check_running`, Agent.pm:83),
 * 60 s for `quit`, 10 min for `guest-shutdown`, 1 h for internal snapshots (`cmd`, :104-170); a timeout
 * is `<peer> <type> command '<cmd>' failed - got timeout` (:176, :503).
 *
 * The model runs under the state lock and must not await, so `monitorSync` runs one exchange in a
 * child process (spawnSync); route handlers that wait on the agent use the async client after the lock
 * is released (routes.ts `deferred`).
 */
import { spawnSync } from "node:child_process";
import { createConnection, type Socket } from "node:net";

export type PeerType = "qmp" | "qga";

export interface MonitorCommand {
  execute: string;
  arguments?: Record<string, unknown>;
}

/** A monitor's answer: `return` on success, `error` ({class, desc}) from QEMU or the agent. */
export interface MonitorAnswer {
  return?: unknown;
  error?: { class?: string; desc: string };
}

export class MonitorError extends Error {
  constructor(
    message: string,
    readonly timeout: boolean,
  ) {
    super(message);
    this.name = "MonitorError";
  }
}

/** QMPClient's per-command default timeouts (src/PVE/QMPClient.pm:104-170), in ms. */
export function defaultTimeoutMs(execute: string): number {
  if (execute === "guest-ping") return 3_000;
  if (/^(eject|change)/.test(execute) || execute === "quit") return 60_000;
  if (["device_add", "device_del", "blockdev-add", "netdev_add", "netdev_del"].includes(execute))
    return 60_000;
  if (["guest-shutdown", "blockdev-del", "guest-fstrim"].includes(execute)) return 600_000;
  if (execute.startsWith("blockdev-snapshot-") && execute.endsWith("internal-sync")) return 3_600_000;
  return 5_000;
}

let qgaSeq = 0;

/** QMPClient's qga ids: `$$ . "0" . seq` (`next_cmdid`, :187-197). */
function nextQgaId(): number {
  qgaSeq++;
  return Number(`${process.pid}0${qgaSeq}`);
}

function connect(path: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new MonitorError("got timeout", true));
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      resolve(sock);
    });
    sock.once("error", (err) => {
      clearTimeout(timer);
      reject(new MonitorError(`unable to connect - ${err.message}`, false));
    });
  });
}

/**
 * Runs one command on a QMP (`type` qmp) or guest agent (`type` qga) socket. `peer` names the VM in
 * errors (`VM 101`). Resolves with the monitor's answer (which may carry `error`); rejects with a
 * MonitorError on timeout or a broken connection, with QMPClient's text.
 */
export async function monitorCommand(
  path: string,
  type: PeerType,
  peer: string,
  cmd: MonitorCommand,
  timeoutMs = defaultTimeoutMs(cmd.execute),
  /** For commands after which the peer may never answer (guest-shutdown, quit): resolve once sent. */
  noWait = false,
): Promise<MonitorAnswer> {
  const failed = (why: string): string => `${peer} ${type} command '${cmd.execute}' failed - ${why}`;
  const deadline = Date.now() + timeoutMs;
  let sock: Socket;
  try {
    sock = await connect(path, Math.min(timeoutMs, 1_000));
  } catch (err) {
    throw new MonitorError(failed((err as Error).message), (err as MonitorError).timeout);
  }
  return new Promise<MonitorAnswer>((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    let state: "greeting" | "capabilities" | "command" = type === "qmp" ? "greeting" : "command";
    const id = type === "qmp" ? `${process.pid}:1` : nextQgaId();
    const done = (fn: () => void): void => {
      clearTimeout(timer);
      sock.destroy();
      fn();
    };
    const timer = setTimeout(
      () => done(() => reject(new MonitorError(failed("got timeout"), true))),
      Math.max(1, deadline - Date.now()),
    );
    const send = (text: string, after?: () => void): void => {
      sock.write(text, () => after?.());
    };
    const sendCommand = (): void => {
      const args = cmd.arguments ?? {};
      const sent = noWait ? () => done(() => resolve({ return: {} })) : undefined;
      if (type === "qga") {
        send(
          `${JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } })}\n` +
            `${JSON.stringify({ execute: cmd.execute, arguments: args })}\n`,
        );
        return;
      }
      send(JSON.stringify({ execute: cmd.execute, arguments: args, id }), sent);
    };
    sock.on("data", (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (type === "qga") {
        // Everything up to the last 0xFF is left over from earlier exchanges.
        const ff = buffer.lastIndexOf(0xff);
        if (ff < 0) return;
        const lines = buffer
          .subarray(ff + 1)
          .toString("utf8")
          .split(/\r?\n/);
        const sync = lines[0];
        if (lines.length < 2 || !sync) return;
        let syncAnswer: MonitorAnswer;
        try {
          syncAnswer = JSON.parse(sync) as MonitorAnswer;
        } catch {
          return;
        }
        if (syncAnswer.return !== id) return; // an older sync's answer: wait for ours
        if (noWait) {
          done(() => resolve({ return: {} }));
          return;
        }
        if (lines.length < 3 || !lines[1]) return;
        try {
          const answer = JSON.parse(lines[1]) as MonitorAnswer;
          done(() => resolve(answer));
        } catch (err) {
          done(() => reject(new MonitorError(failed(`bad answer: ${(err as Error).message}`), false)));
        }
        return;
      }
      for (;;) {
        const nl = buffer.indexOf(0x0a);
        if (nl < 0) return;
        const line = buffer.subarray(0, nl).toString("utf8").trim();
        buffer = buffer.subarray(nl + 1);
        if (!line) continue;
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if (state === "greeting" && "QMP" in obj) {
          state = "capabilities";
          send(`${JSON.stringify({ execute: "qmp_capabilities" })}\n`);
          continue;
        }
        if (state === "capabilities" && ("return" in obj || "error" in obj)) {
          state = "command";
          sendCommand();
          continue;
        }
        if (state === "command" && obj["id"] === id) {
          done(() => resolve(obj as MonitorAnswer));
          return;
        }
      }
    });
    sock.on("error", (err) => done(() => reject(new MonitorError(failed(err.message), false))));
    sock.on("close", () => {
      // quit: QEMU closes the connection as it exits, often before it answers.
      if (noWait || cmd.execute === "quit") done(() => resolve({ return: {} }));
      else done(() => reject(new MonitorError(failed("got EOF"), false)));
    });
    if (type === "qga") sendCommand();
  });
}

/** What `monitorSync` returns: the answer, or the failure text and whether it was a timeout. */
export type SyncOutcome =
  | { ok: true; answer: MonitorAnswer }
  | { ok: false; message: string; timeout: boolean };

/**
 * `monitorCommand` from synchronous code (the model, under the state lock): one exchange in a child
 * node process, bounded by the command's timeout plus a margin for the process itself.
 */
export function monitorSync(
  path: string,
  type: PeerType,
  peer: string,
  cmd: MonitorCommand,
  timeoutMs = defaultTimeoutMs(cmd.execute),
  noWait = false,
): SyncOutcome {
  const request = JSON.stringify({ path, type, peer, cmd, timeoutMs, noWait });
  const result = spawnSync(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      // This module by name, not import.meta.url: the simulator runs bundled (cli.bundle.js), which exports
      // no monitorChild.
      `import { monitorChild } from ${JSON.stringify(new URL("./monitor.js", import.meta.url).href)}; await monitorChild();`,
    ],
    { input: request, encoding: "utf8", timeout: timeoutMs + 5_000, killSignal: "SIGKILL" },
  );
  try {
    return JSON.parse(result.stdout) as SyncOutcome;
  } catch {
    const why = result.error ? result.error.message : (result.stderr || `exit ${result.status}`).trim();
    return { ok: false, message: `${peer} ${type} command '${cmd.execute}' failed - ${why}`, timeout: false };
  }
}

/** The child side of `monitorSync`: request on stdin, outcome on stdout. */
export async function monitorChild(): Promise<void> {
  let input = "";
  for await (const chunk of process.stdin) input += String(chunk);
  const req = JSON.parse(input) as {
    path: string;
    type: PeerType;
    peer: string;
    cmd: MonitorCommand;
    timeoutMs: number;
    noWait: boolean;
  };
  let outcome: SyncOutcome;
  try {
    outcome = {
      ok: true,
      answer: await monitorCommand(req.path, req.type, req.peer, req.cmd, req.timeoutMs, req.noWait),
    };
  } catch (err) {
    outcome = { ok: false, message: (err as Error).message, timeout: (err as MonitorError).timeout === true };
  }
  process.stdout.write(JSON.stringify(outcome));
}
