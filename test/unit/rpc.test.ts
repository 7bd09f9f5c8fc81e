import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { createMessageConnection, StreamMessageReader, StreamMessageWriter } from "vscode-jsonrpc/node.js";
import { z } from "zod";
import { call } from "../../src/cli/client.js";
import { RpcServer, SLOW_CALL_MS } from "../../src/daemon/rpc/server.js";
import {
  AgentlabError,
  defineMethod,
  type ProgressValue,
  progressToken,
  wire,
} from "../../src/protocol/index.js";

const echo = defineMethod(wire("test.echo", { progress: false, errors: [] }), {
  summary: "echo",
  params: z.object({ text: z.string().min(1) }).strict(),
  result: z.object({ text: z.string() }),
});
const boom = defineMethod(wire("test.boom", { progress: false, errors: [] }), {
  summary: "throws a plain Error",
  params: z.object({}),
  result: z.object({}),
});
const slow = defineMethod(wire("test.slow", { progress: true, errors: ["CANCELLED"] }), {
  summary: "reports progress, then waits for release or cancellation",
  params: z.object({ steps: z.number().int(), progress_token: progressToken }),
  result: z.object({ finished: z.boolean() }),
});

const silent = pino({ level: "silent" });

interface Harness {
  dir: string;
  socketPath: string;
  server: RpcServer;
  release: () => void;
  cancelledSeen: () => number;
}

async function startServer(): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "agentlab-rpc-"));
  const socketPath = join(dir, "rpc.sock");
  const server = new RpcServer({ log: silent, maxFrameBytes: 64 * 1024 });
  let releaseWaiters: Array<() => void> = [];
  let cancelled = 0;
  server.register(echo, (params) => ({ text: params.text }));
  server.register(boom, () => {
    throw new Error("kaput");
  });
  server.register(slow, async (params, ctx) => {
    for (let i = 1; i <= params.steps; i++)
      ctx.progress({ step: "count", message: `step ${i}`, done: i, total: params.steps });
    await new Promise<void>((resolve, reject) => {
      releaseWaiters.push(resolve);
      ctx.signal.addEventListener("abort", () => {
        cancelled++;
        reject(ctx.signal.reason);
      });
    });
    return { finished: true };
  });
  await server.listen(socketPath);
  return {
    dir,
    socketPath,
    server,
    release: () => {
      for (const w of releaseWaiters) w();
      releaseWaiters = [];
    },
    cancelledSeen: () => cancelled,
  };
}

function rawSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

function closedByServer(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.on("error", () => {});
    socket.once("close", () => resolve());
  });
}

async function errorOf(promise: Promise<unknown>): Promise<AgentlabError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof AgentlabError, `expected AgentlabError, got ${error}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

describe("RPC server over a Unix socket", () => {
  let h: Harness;
  const opts = () => ({ socketPath: h.socketPath, timeoutMs: 5000 });
  before(async () => {
    h = await startServer();
  });
  after(async () => {
    await h.server.close(100);
    rmSync(h.dir, { recursive: true, force: true });
  });

  test("answers a call and restricts the socket to owner and group", async () => {
    assert.deepEqual(await call(opts(), echo, { text: "hi" }), { text: "hi" });
    assert.equal(statSync(h.socketPath).mode & 0o777, 0o660);
  });

  test("bad params are refused with INVALID_PARAMS naming the field", async () => {
    const error = await errorOf(call(opts(), echo, { text: "" }));
    assert.equal(error.code, "INVALID_PARAMS");
    assert.match(error.message, /test\.echo: text:/);
    const extra = await errorOf(call(opts(), echo, { text: "x", bogus: 1 } as never));
    assert.equal(extra.code, "INVALID_PARAMS");
    assert.match(extra.message, /bogus/);
  });

  test("an unknown method answers MethodNotFound with code, message, hint and details", async () => {
    const socket = await rawSocket(h.socketPath);
    const conn = createMessageConnection(new StreamMessageReader(socket), new StreamMessageWriter(socket));
    conn.listen();
    await assert.rejects(
      conn.sendRequest("sandbox.teleport", {}),
      (error: { code: number; message: string; data: Record<string, unknown> }) => {
        assert.equal(error.code, -32601);
        assert.match(error.message, /unknown method "sandbox\.teleport"/);
        assert.equal(error.data.code, "METHOD_NOT_FOUND");
        assert.equal(typeof error.data.hint, "string");
        assert.deepEqual(error.data.details, { method: "sandbox.teleport" });
        return true;
      },
    );
    conn.dispose();
    socket.destroy();
  });

  test("a plain Error from a handler reaches the client as INTERNAL with the method and request id", async () => {
    const error = await errorOf(call(opts(), boom, {}));
    assert.equal(error.code, "INTERNAL");
    assert.match(error.message, /test\.boom: kaput/);
    assert.match(String(error.details.request_id), /^r\d+$/);
  });

  test("progress notifications arrive in order before the result", async () => {
    const seen: ProgressValue[] = [];
    const pending = call({ ...opts(), onProgress: (v) => seen.push(v) }, slow, { steps: 3 });
    while (seen.length < 3) await new Promise((r) => setImmediate(r));
    h.release();
    assert.deepEqual(await pending, { finished: true });
    assert.deepEqual(
      seen.map((v) => v.message),
      ["step 1", "step 2", "step 3"],
    );
  });

  test("cancelling on the client aborts the handler and answers CANCELLED", async () => {
    const abort = new AbortController();
    const seen: ProgressValue[] = [];
    const before = h.cancelledSeen();
    const pending = call({ ...opts(), signal: abort.signal, onProgress: (v) => seen.push(v) }, slow, {
      steps: 1,
    });
    while (seen.length < 1) await new Promise((r) => setImmediate(r));
    abort.abort();
    const error = await errorOf(pending);
    assert.equal(error.code, "CANCELLED");
    assert.equal(h.cancelledSeen(), before + 1);
  });

  for (const [name, bytes] of [
    ["a Content-Length that is not a number", "Content-Length: abc\r\n\r\n{}"],
    ["a header block without Content-Length", "X-Nothing: 1\r\n\r\n{}"],
    ["a frame larger than the limit", `Content-Length: ${10 * 1024 * 1024}\r\n\r\n{`],
    ["a body that is not JSON", "Content-Length: 5\r\n\r\n{oops"],
    ["JSON that is not JSON-RPC", "Content-Length: 7\r\n\r\n[1,2,3]"],
    ["an endless header line", "Content-Length".repeat(1000)],
  ] as const) {
    test(`${name} closes that connection only`, async () => {
      const bystander = await rawSocket(h.socketPath);
      const bad = await rawSocket(h.socketPath);
      const closed = closedByServer(bad);
      bad.write(bytes);
      await closed;
      // The daemon still serves new clients and the one that was connected all along.
      assert.deepEqual(await call(opts(), echo, { text: "still here" }), { text: "still here" });
      const conn = createMessageConnection(
        new StreamMessageReader(bystander),
        new StreamMessageWriter(bystander),
      );
      conn.listen();
      assert.deepEqual(await conn.sendRequest(echo.type, { text: "me too" }), { text: "me too" });
      conn.dispose();
      bystander.destroy();
    });
  }

  test("a request split across many small writes is still understood", async () => {
    const socket = await rawSocket(h.socketPath);
    const body = JSON.stringify({ jsonrpc: "2.0", id: 7, method: "test.echo", params: { text: "pieces" } });
    const frame = `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    const answer = new Promise<string>((resolve) => {
      let text = "";
      socket.on("data", (chunk) => {
        text += chunk;
        if (text.includes("pieces")) resolve(text);
      });
    });
    for (const char of frame) {
      socket.write(char);
      await new Promise((r) => setImmediate(r));
    }
    assert.match(await answer, /"result":\{"text":"pieces"\}/);
    socket.destroy();
  });
});

describe("RPC server shutdown", () => {
  test("close waits for a running call to finish, then refuses new connections", async () => {
    const h = await startServer();
    try {
      const seen: ProgressValue[] = [];
      const pending = call(
        { socketPath: h.socketPath, timeoutMs: 5000, onProgress: (v) => seen.push(v) },
        slow,
        {
          steps: 1,
        },
      );
      while (seen.length < 1) await new Promise((r) => setImmediate(r));
      const closing = h.server.close(5000);
      await new Promise((r) => setTimeout(r, 50));
      const refused = await errorOf(call({ socketPath: h.socketPath, timeoutMs: 1000 }, echo, { text: "x" }));
      assert.equal(refused.code, "DAEMON_UNREACHABLE");
      h.release();
      assert.deepEqual(await pending, { finished: true });
      assert.deepEqual(await closing, { drained: true, cancelled: 0 });
    } finally {
      rmSync(h.dir, { recursive: true, force: true });
    }
  });

  test("a call that outlives the drain bound is cancelled and told the daemon is stopping", async () => {
    const h = await startServer();
    try {
      const seen: ProgressValue[] = [];
      const pending = call(
        { socketPath: h.socketPath, timeoutMs: 5000, onProgress: (v) => seen.push(v) },
        slow,
        {
          steps: 1,
        },
      );
      while (seen.length < 1) await new Promise((r) => setImmediate(r));
      const failure = errorOf(pending);
      const result = await h.server.close(100);
      assert.deepEqual(result, { drained: false, cancelled: 1 });
      const error = await failure;
      assert.equal(error.code, "DAEMON_SHUTTING_DOWN");
    } finally {
      rmSync(h.dir, { recursive: true, force: true });
    }
  });
});

describe("socket group", () => {
  test("groupId reads the gid of a named group and nothing else", async () => {
    const { groupId } = await import("../../src/config/socket-group.js");
    const { writeFileSync } = await import("node:fs");
    const dir = mkdtempSync(join(tmpdir(), "agentlab-group-"));
    const file = join(dir, "group");
    writeFileSync(file, "root:x:0:\nagentlabx:x:998:\nagentlab:x:997:alice,bob\nbroken-line\n");
    assert.equal(groupId("agentlab", file), 997);
    assert.equal(groupId("agent", file), undefined);
    assert.equal(groupId("agentlab", join(dir, "missing")), undefined);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe("RPC server: the per-call log line", () => {
  test("at info a quick success writes no line, a slow one and a failure write theirs with method and request id", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agentlab-rpc-log-"));
    const socketPath = join(dir, "rpc.sock");
    const lines: Array<Record<string, unknown>> = [];
    const log = pino(
      { level: "info" },
      { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
    );
    const server = new RpcServer({ log });
    server.register(echo, (params) => ({ text: params.text }));
    server.register(boom, () => {
      throw new Error("kaput");
    });
    server.register(slow, async () => {
      await new Promise((resolve) => setTimeout(resolve, SLOW_CALL_MS + 50));
      return { finished: true };
    });
    await server.listen(socketPath);
    try {
      const opts = { socketPath, timeoutMs: 10_000 };
      await call(opts, echo, { text: "quick" });
      await errorOf(call(opts, boom, {}));
      await call(opts, slow, { steps: 0 });
      const calls = lines.filter((line) => line.msg === "rpc ok" || line.msg === "rpc failed");
      assert.deepEqual(
        calls.map((line) => [line.msg, line.method]),
        [
          ["rpc failed", "test.boom"],
          ["rpc ok", "test.slow"],
        ],
      );
      for (const line of calls) assert.match(String(line.req), /^r\d+$/);
    } finally {
      await server.close(100);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
