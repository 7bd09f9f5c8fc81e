/**
 * The MCP tools against a scripted daemon, through the SDK's client on an in-memory transport: their
 * input schemas are the protocol's, a daemon error is a tool error with message and hint, exec output
 * split inside a UTF-8 character comes back whole, and file_write sends bounded chunks and abandons the
 * upload when one fails.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import type { DaemonCall } from "../../src/mcp/caller.js";
import { createMcpServer } from "../../src/mcp/server.js";
import { METHOD_TOOLS } from "../../src/mcp/tools.js";
import { AgentlabError, FILE_CHUNK_BYTES, type Method } from "../../src/protocol/index.js";

type Script = (method: Method, params: Record<string, unknown>, onProgress?: (v: never) => void) => unknown;

async function connect(
  script: Script,
): Promise<{ client: Client; calls: Array<[string, Record<string, unknown>]> }> {
  const calls: Array<[string, Record<string, unknown>]> = [];
  const call = (async (method: Method, params: Record<string, unknown>, options = {}) => {
    calls.push([method.method, params]);
    return script(method, params, (options as { onProgress?: (v: never) => void }).onProgress);
  }) as unknown as DaemonCall;
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await createMcpServer(call).connect(serverSide);
  const client = new Client({ name: "unit", version: "1" });
  await client.connect(clientSide);
  return { client, calls };
}

const text = (result: unknown) =>
  ((result as CallToolResult).content ?? []).map((c) => (c.type === "text" ? c.text : "")).join("");

describe("MCP tools", () => {
  test("each method tool's input is the method's params less progress_token", async () => {
    const { client } = await connect(() => ({}));
    const { tools } = await client.listTools();
    for (const spec of METHOD_TOOLS) {
      const tool = tools.find((t) => t.name === spec.name);
      assert.ok(tool, spec.name);
      const shape = (spec.method.params as unknown as { shape: Record<string, unknown> }).shape;
      const expected = Object.keys(shape)
        .filter((key) => key !== "progress_token" && !(spec.omit ?? []).includes(key))
        .sort();
      assert.deepEqual(Object.keys(tool.inputSchema.properties ?? {}).sort(), expected, spec.name);
    }
  });

  test("a daemon error is a tool error carrying its message, hint and code", async () => {
    const { client } = await connect(() => {
      throw new AgentlabError("JOB_NOT_FOUND", "job not found: job_x");
    });
    const result = (await client.callTool({
      name: "job_status",
      arguments: { id: "job_x" },
    })) as CallToolResult;
    assert.equal(result.isError, true);
    assert.equal(
      text(result),
      "error: job not found: job_x\nhint: list jobs with agentlab job list\ncode: JOB_NOT_FOUND",
    );
    assert.equal((result.structuredContent as { code: string }).code, "JOB_NOT_FOUND");
  });

  test("exec: output split inside a UTF-8 character comes back whole, as progress and in the result", async () => {
    const bytes = Buffer.from("héllo\n", "utf8");
    const { client } = await connect((_method, _params, onProgress) => {
      const send = onProgress as unknown as (v: { step: string; message: string; data: string }) => void;
      send({ step: "stdout", message: "", data: bytes.subarray(0, 2).toString("base64") });
      send({ step: "stdout", message: "", data: bytes.subarray(2).toString("base64") });
      send({ step: "stderr", message: "", data: Buffer.from("warn\n").toString("base64") });
      return { exit_code: 3, duration_ms: 5 };
    });
    const seen: string[] = [];
    const result = (await client.callTool(
      { name: "sandbox_exec", arguments: { vmid: 100, command: ["x"] } },
      undefined,
      { onprogress: (p) => seen.push(p.message ?? "") },
    )) as CallToolResult;
    assert.notEqual(result.isError, true);
    assert.deepEqual(result.structuredContent, {
      exit_code: 3,
      duration_ms: 5,
      stdout: "héllo\n",
      stderr: "warn\n",
    });
    assert.equal(seen.join(""), "héllo\n[stderr] warn\n");
  });

  test("file_write sends bounded chunks, the last one last, and cancels the upload when a chunk fails", async () => {
    const content = "x".repeat(FILE_CHUNK_BYTES * 2 + 10);
    let chunks = 0;
    const { client, calls } = await connect((method, params) => {
      if (method.method === "sandbox.file_cancel") return { cancelled: true };
      chunks++;
      const data = Buffer.from(params.data as string, "base64");
      assert.ok(data.length <= FILE_CHUNK_BYTES);
      const written = (params.offset as number) + data.length;
      return {
        transfer: "0".repeat(32),
        written,
        done: params.last === true,
        path: "/root/f",
        ...(params.last ? { sha256: "ab" } : {}),
      };
    });
    const ok = (await client.callTool({
      name: "file_write",
      arguments: { vmid: 100, path: "f", content },
    })) as CallToolResult;
    assert.notEqual(ok.isError, true, text(ok));
    assert.equal(chunks, 3);
    assert.deepEqual(
      calls.map(([, p]) => [p.offset, p.last, p.transfer !== undefined]),
      [
        [0, false, false],
        [FILE_CHUNK_BYTES, false, true],
        [FILE_CHUNK_BYTES * 2, true, true],
      ],
    );
    assert.equal((ok.structuredContent as { bytes: number }).bytes, content.length);

    let n = 0;
    const failing = await connect((method) => {
      if (method.method === "sandbox.file_cancel") return { cancelled: true };
      if (++n === 2) throw new AgentlabError("FILE_TRANSFER_FAILED", "disk full");
      return { transfer: "f".repeat(32), written: FILE_CHUNK_BYTES, done: false, path: "/root/f" };
    });
    const failed = (await failing.client.callTool({
      name: "file_write",
      arguments: { vmid: 100, path: "f", content },
    })) as CallToolResult;
    assert.equal(failed.isError, true);
    assert.match(text(failed), /^error: disk full$/m);
    assert.deepEqual(failing.calls.at(-1), ["sandbox.file_cancel", { vmid: 100, transfer: "f".repeat(32) }]);
  });
});
