/**
 * Hostile input against the real daemon on the simulator: malformed and oversized frames, 1 MB strings
 * in several methods, 10,000 rapid connections, a client that never reads, connections past the cap and
 * idle ones. What is asserted is what a user would notice: who gets which answer, how big it is, that
 * nothing was created, and that other clients keep being served. Never how long anything took.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { freePort } from "../helpers/ports.js";
import { type RawAnswer, RawRpcClient } from "../helpers/raw-rpc.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect } from "../pvesim/harness.js";

/** A string of a million characters: as big as fits in one frame (MAX_FRAME_BYTES is 1 MiB) with its request. */
const MB = "a".repeat(1_000_000);

/** The daemon's JSON log lines whose message starts with `prefix`. */
function logLines(h: SimHost, prefix: string): Array<Record<string, unknown>> {
  return h.daemon
    .output()
    .stdout.split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => typeof line.msg === "string" && line.msg.startsWith(prefix));
}

async function eventually(what: string, check: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function vmCount(h: SimHost): Promise<number> {
  return inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).length);
}

async function status(h: SimHost): Promise<RawAnswer> {
  const client = await RawRpcClient.open(h.host.socketPath);
  try {
    return await client.request("daemon.status");
  } finally {
    client.destroy();
  }
}

describe("hostile input on the Unix socket", () => {
  let h: SimHost;
  before(async () => {
    // A small unsent-answer bound, so a client that never reads reaches it with a few hundred KB.
    h = await startSimHost("shell", "rpc_max_unsent_bytes: 65536\n", { knobs: FAST_KNOBS });
  });
  after(async () => {
    await h.stop();
  });

  test("1 MB strings are refused naming the field and the limit, with a small answer, creating nothing", async () => {
    const vmsBefore = await vmCount(h);
    const logBefore = h.daemon.output().stdout.length;
    const hostile: Array<[string, Record<string, unknown>, string]> = [
      ["sandbox.validate", { profile: MB }, "profile is 1000000 characters; the limit is 64"],
      [
        "sandbox.create",
        { profile: "yolo-ephemeral", name: MB },
        "name is 1000000 characters; the limit is 63",
      ],
      [
        "job.run",
        { repo_url: "https://example.com/r.git", task: MB, profile: "yolo-ephemeral" },
        "task is 1000000 characters; the limit is 65536",
      ],
      [
        "job.run",
        { repo_url: `https://example.com/${MB}`, task: "t", profile: "yolo-ephemeral" },
        "repo_url is 1000020 characters; the limit is 8192",
      ],
      ["workspace.create", { name: MB, size_gb: 1 }, "name is 1000000 characters; the limit is 63"],
      [
        "session.create",
        { name: "s", profile: "yolo-ephemeral", workspace_create: "w", branch: MB },
        "branch is 1000000 characters; the limit is 200",
      ],
      [
        "sandbox.exec",
        { vmid: 100, command: ["sh", "-c", MB] },
        "command.2 is 1000000 characters; the limit is 65536",
      ],
    ];
    const hostileClient = await RawRpcClient.open(h.host.socketPath);
    // Every hostile request is in flight at once, and a plain status call goes beside them.
    const answers = hostile.map(([method, params]) => hostileClient.request(method, params));
    const bystander = await status(h);
    assert.ok(
      bystander.result,
      `status answered while the hostile client was refused: ${JSON.stringify(bystander)}`,
    );
    for (const [i, answer] of (await Promise.all(answers)).entries()) {
      const [method, , expected] = hostile[i]!;
      assert.equal(answer.error?.data?.code, "INVALID_PARAMS", method);
      assert.equal(answer.error?.message, `invalid params for ${method}: ${expected}`);
      assert.ok(
        answer.bytes < 2048,
        `${method}: the refusal is ${answer.bytes} bytes, not the request echoed`,
      );
    }
    hostileClient.destroy();

    for (const [method, key] of [
      ["sandbox.list", "sandboxes"],
      ["job.list", "jobs"],
      ["workspace.list", "workspaces"],
      ["session.list", "sessions"],
    ] as const) {
      const client = await RawRpcClient.open(h.host.socketPath);
      const listed = await client.request(method, method === "sandbox.list" ? { all: true } : {});
      client.destroy();
      assert.deepEqual((listed.result as Record<string, unknown[]>)[key], [], `${method}: nothing created`);
    }
    assert.equal(await vmCount(h), vmsBefore, "no VM was cloned");
    const logged = h.daemon.output().stdout.length - logBefore;
    assert.ok(logged < 64 * 1024, `the daemon's log grew by ${logged} bytes, not by the values`);
  });

  test("an unknown 1 MB method name is answered with a shortened name", async () => {
    const client = await RawRpcClient.open(h.host.socketPath);
    const answer = await client.request(MB.slice(0, 900_000));
    client.destroy();
    assert.equal(answer.error?.data?.code, "METHOD_NOT_FOUND");
    assert.equal(answer.error?.message, `unknown method "${"a".repeat(64)}…"`);
    assert.ok(answer.bytes < 2048, `${answer.bytes} bytes`);
  });

  test("oversized and malformed frames close only their own connection, with the reason logged", async () => {
    const bystander = await RawRpcClient.open(h.host.socketPath);
    const cases: Array<[string | Buffer, string]> = [
      // Declares 64 MiB and sends a little of it: refused from the header, nothing buffered.
      [
        `Content-Length: ${64 * 1024 * 1024}\r\n\r\n{"jsonrpc":`,
        "frame of 67108864 bytes exceeds the 1048576-byte limit",
      ],
      ["Content-Length: nope\r\n\r\n", 'invalid Content-Length "nope"'],
      ["X-Other: 1\r\n\r\n{}", "frame without a Content-Length header"],
      ["Content-Length".repeat(1000), "header block longer than 8192 bytes"],
      ["Content-Length: 5\r\n\r\n{oops", "message is not JSON"],
      ['Content-Length: 7\r\n\r\n["x",1]', "message is not a JSON-RPC 2.0 object"],
    ];
    for (const [bytes, reason] of cases) {
      const before = logLines(h, "closing connection").length;
      const bad = await RawRpcClient.open(h.host.socketPath);
      bad.write(bytes);
      await bad.closed;
      await eventually(
        `a log line for ${reason}: ${JSON.stringify(logLines(h, "closing connection").slice(before))}`,
        () =>
          logLines(h, "closing connection")
            .slice(before)
            .some((line) => String(line.msg).includes(reason)),
      );
    }
    // The connection that was open all along is still served.
    const answer = await bystander.request("profile.list");
    assert.ok(answer.result, JSON.stringify(answer));
    bystander.destroy();
  });

  test("10,000 rapid connections: the daemon survives and answers a normal call afterwards", async () => {
    let opened = 0;
    let backlogFull = 0;
    const worker = async () => {
      while (opened < 10_000) {
        opened++;
        let client: RawRpcClient;
        try {
          client = await RawRpcClient.open(h.host.socketPath);
        } catch (error) {
          // The kernel's listen backlog is full: the flood outran accept(), which is the kernel's refusal.
          if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error;
          backlogFull++;
          await new Promise((resolve) => setTimeout(resolve, 10));
          continue;
        }
        client.destroy();
        await client.closed;
      }
    };
    await Promise.all(Array.from({ length: 20 }, worker));
    assert.ok(backlogFull < 10_000, "most connections were accepted");
    assert.equal(h.daemon.proc.exitCode, null, "the daemon is still running");
    const answer = await status(h);
    assert.ok(answer.result, JSON.stringify(answer));
  });

  test("a client that never reads its answers is dropped once they pass rpc_max_unsent_bytes", async () => {
    const greedy = await RawRpcClient.open(h.host.socketPath);
    // Stop reading: what the daemon writes stays in its buffers until the bound is reached.
    greedy.socket.pause();
    const burst = Buffer.concat(
      Array.from({ length: 4000 }, (_, i) => RawRpcClient.frame("profile.list", {}, i + 1)),
    );
    greedy.write(burst);
    await eventually(
      "the daemon drops the client that does not read",
      () => logLines(h, "closing connection: client is not reading its answers").length > 0,
    );
    greedy.destroy();
    const answer = await status(h);
    assert.ok(answer.result, JSON.stringify(answer));
  });
});

describe("connection cap and idle connections, on the socket and the remote listener", () => {
  let h: SimHost;
  let port: number;
  let secret: string;
  before(async () => {
    port = await freePort();
    h = await startSimHost(
      "shell",
      `rpc_max_connections: 4\nrpc_idle_timeout: 5s\ncontrol_listen: 127.0.0.1:${port}\n`,
      { knobs: FAST_KNOBS },
    );
    const created = await h.json<{ secret: string }>([
      "token",
      "create",
      "--name",
      "reader",
      "--scope",
      "read",
    ]);
    assert.equal(created.code, 0, JSON.stringify(created.body));
    secret = created.body.secret;
  });
  after(async () => {
    await h.stop();
  });

  test("past rpc_max_connections a client is refused with DAEMON_BUSY; idle ones are closed, freeing their slots", async () => {
    const holders = await Promise.all(Array.from({ length: 4 }, () => RawRpcClient.open(h.host.socketPath)));
    // Each holder makes a call, so all four are counted before the fifth comes.
    for (const holder of holders) assert.ok((await holder.request("profile.list")).result);

    const fifth = await RawRpcClient.open(h.host.socketPath);
    const refused = await fifth.request("daemon.status");
    assert.equal(refused.error?.data?.code, "DAEMON_BUSY");
    assert.match(refused.error?.message ?? "", /maximum of 4 clients \(rpc_max_connections\)/);
    assert.match(refused.error?.data?.hint ?? "", /rpc_max_connections/);
    await fifth.closed;

    // The remote listener refuses its upgrade the same way, before it looks at the token.
    const upgrade = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const ws = new WebSocket(`wss://127.0.0.1:${port}/rpc`, {
        headers: { authorization: `Bearer ${secret}` },
        rejectUnauthorized: false,
      });
      ws.on("unexpected-response", (_req, res) => {
        let body = "";
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      ws.on("open", () => reject(new Error("the WebSocket was accepted past the cap")));
      ws.on("error", () => {});
    });
    assert.equal(upgrade.status, 503);
    assert.equal((JSON.parse(upgrade.body) as { code: string }).code, "DAEMON_BUSY");

    // Nobody calls any more: rpc_idle_timeout closes the holders, and the daemon serves again.
    await Promise.all(holders.map((holder) => holder.closed));
    assert.ok(logLines(h, "closing connection: idle for 5000 ms").length >= 4);
    const answer = await status(h);
    assert.ok(answer.result, JSON.stringify(answer));
  });
});
