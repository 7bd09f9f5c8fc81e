import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { monitorCommand, monitorSync } from "../pvesim/monitor.js";

/**
 * The simulator's client for a real guest agent (guests=qemu) frames like qemu-server's QMPClient:
 * guest-sync-delimited first, the answer after the last 0xFF. Tested against the host's own qemu-ga
 * listening on a unix socket, and against fake agents for the timeout and the leftovers of an
 * earlier, timed-out exchange.
 */

const haveQemuGa = spawnSync("qemu-ga", ["--version"]).status === 0;

describe("pvesim: guest agent client against the host's qemu-ga", {
  skip: haveQemuGa ? false : "qemu-ga not installed",
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "pvesim-qga-"));
  const sock = join(dir, "qga.sock");
  let agent: ChildProcess;
  before(async () => {
    agent = spawn("qemu-ga", ["-m", "unix-listen", "-p", sock, "-t", dir], { stdio: "ignore" });
    for (let i = 0; i < 100 && !existsSync(sock); i++) await sleep(50);
  });
  after(() => {
    agent.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it("guest-ping and guest-info answer through the sync-delimited framing", async () => {
    assert.deepEqual(await monitorCommand(sock, "qga", "VM 1", { execute: "guest-ping" }), { return: {} });
    const info = (await monitorCommand(sock, "qga", "VM 1", { execute: "guest-info" })).return as {
      version: string;
      supported_commands: Array<{ name: string }>;
    };
    assert.match(info.version, /^\d+\.\d+/);
    assert.ok(info.supported_commands.some((c) => c.name === "guest-network-get-interfaces"));
  });

  it("network-get-interfaces returns the agent's real answer (lo is there)", async () => {
    const answer = await monitorCommand(sock, "qga", "VM 1", { execute: "guest-network-get-interfaces" });
    const names = (answer.return as Array<{ name: string }>).map((i) => i.name);
    assert.ok(names.includes("lo"), names.join(","));
  });

  it("an agent error is an answer, not a failure (mon_cmd returns {error})", async () => {
    const answer = await monitorCommand(sock, "qga", "VM 1", { execute: "guest-no-such-command" });
    assert.ok(answer.error?.desc, JSON.stringify(answer));
  });

  it("works from synchronous code (the model under the state lock) through a child process", () => {
    const out = monitorSync(sock, "qga", "VM 1", { execute: "guest-ping" });
    assert.deepEqual(out, { ok: true, answer: { return: {} } });
  });
});

describe("pvesim: monitor client failures", () => {
  const dir = mkdtempSync(join(tmpdir(), "pvesim-mon-"));
  const servers: Server[] = [];
  after(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const listen = async (
    name: string,
    onData: (data: string, reply: (s: string | Buffer) => void) => void,
    greeting?: string,
  ) => {
    const path = join(dir, name);
    const server = createServer((conn) => {
      if (greeting) conn.write(greeting);
      conn.on("data", (d) => onData(d.toString(), (s) => conn.write(s)));
      conn.on("error", () => {});
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    return path;
  };

  it("an agent that never answers is `<peer> qga command '<cmd>' failed - got timeout` after the timeout", async () => {
    const path = await listen("silent", () => {});
    const started = Date.now();
    await assert.rejects(
      monitorCommand(path, "qga", "VM 101", { execute: "guest-ping" }, 300),
      /^MonitorError: VM 101 qga command 'guest-ping' failed - got timeout$/,
    );
    assert.ok(Date.now() - started >= 290);
  });

  it("leftovers of an earlier exchange before the last 0xFF are skipped, an older sync answer too", async () => {
    const path = await listen("stale", (data, reply) => {
      const sync = JSON.parse(data.split("\n")[0]!) as { arguments: { id: number } };
      // A late answer of an earlier command, an old sync answer, then ours.
      reply(
        Buffer.concat([
          Buffer.from('{"return": {"stale": 1}}\n\xff', "latin1"),
          Buffer.from('{"return": 1}\n'),
        ]),
      );
      setTimeout(() => {
        reply(
          Buffer.concat([
            Buffer.from([0xff]),
            Buffer.from(`{"return": ${sync.arguments.id}}\n{"return": {"fresh": true}}\n`),
          ]),
        );
      }, 50);
    });
    assert.deepEqual(await monitorCommand(path, "qga", "VM 1", { execute: "guest-info" }), {
      return: { fresh: true },
    });
  });

  it("QMP: greeting, qmp_capabilities, then the answer with our id (events skipped)", async () => {
    const seen: string[] = [];
    const path = await listen(
      "qmp",
      (data, reply) => {
        for (const line of data.split("\n").filter(Boolean)) {
          const cmd = JSON.parse(line) as { execute: string; id?: string };
          seen.push(cmd.execute);
          if (cmd.execute === "qmp_capabilities") reply('{"return": {}}\n');
          else
            reply(
              `{"event": "RESUME"}\n{"return": {"status": "running"}, "id": ${JSON.stringify(cmd.id)}}\n`,
            );
        }
      },
      '{"QMP": {"version": {}}}\n',
    );
    assert.deepEqual(await monitorCommand(path, "qmp", "VM 1", { execute: "query-status" }), {
      return: { status: "running" },
      id: `${process.pid}:1`,
    });
    assert.deepEqual(seen, ["qmp_capabilities", "query-status"]);
  });
});
