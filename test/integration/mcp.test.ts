/**
 * The MCP server with the SDK's own client: `agentlab mcp` spawned over stdio against a real daemon on
 * the simulator (its calls through the local socket), and the control listener's /mcp over Streamable
 * HTTP with real TLS and control tokens. A job completes on the simulator through the real guest runner
 * and a real git daemon (as in job-output.test.ts), so its artifacts are real uploads.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { Agent, fetch as undiciFetch } from "undici";
import { createSmokeRepo, type RepoServer, startRepoServer } from "../../src/cli/init/repo-server.js";
import { type GuestRig, guestRigSkipReason, startGuestRig } from "../helpers/guest-rig.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl } from "../pvesim/harness.js";

const RUN_ARTIFACTS = `#!/bin/sh
set -eu
mkdir -p "$AGENTLAB_ARTIFACTS_DIR/out"
echo "result of $AGENTLAB_JOB_ID" > "$AGENTLAB_ARTIFACTS_DIR/out/result.txt"
echo "mcp-agent done"
`;

/** Calls that provision wait for the simulator; the SDK's own default is 60 s. */
const LONG = { timeout: 180_000 };

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function structured(result: unknown): Record<string, unknown> {
  const r = result as CallToolResult;
  assert.ok(r.structuredContent, JSON.stringify(r));
  return r.structuredContent as Record<string, unknown>;
}

function text(result: unknown): string {
  return ((result as CallToolResult).content ?? []).map((c) => (c.type === "text" ? c.text : "")).join("");
}

/** `agentlab mcp` on the daemon's socket, as an MCP client would start it. */
async function stdioClient(socket: string, extraArgs: string[] = []): Promise<Client> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [AGENTLAB_BIN, "--socket", socket, ...extraArgs, "mcp"],
    env: { ...(process.env as Record<string, string>), AGENTLAB_SOCKET: "", AGENTLAB_ENDPOINT: "" },
    stderr: "pipe",
  });
  const client = new Client({ name: "agentlab-test", version: "1.0.0" });
  await client.connect(transport);
  return client;
}

describe("agentlab mcp over stdio and /mcp over Streamable HTTP", () => {
  let h: SimHost;
  let root: string;
  let controlPort: number;
  let repo: RepoServer;
  let client: Client;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-mcp-"));
    const port = await freePort();
    controlPort = await freePort();
    h = await startSimHost(
      "shell",
      `bootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\nartifact_dir: ${join(root, "artifacts")}\n` +
        `control_listen: 127.0.0.1:${controlPort}\n`,
    );
    await setControl(h.sim.dir, FAST_KNOBS);
    repo = await startRepoServer(
      "git-daemon",
      await createSmokeRepo(join(root, "repo"), RUN_ARTIFACTS),
      "127.0.0.1",
    );
    client = await stdioClient(h.host.socketPath);
  });
  after(async () => {
    await client?.close();
    await repo?.stop();
    await h?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test("tools list: every tool has a description and an object input schema", async () => {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    for (const wanted of [
      "sandbox_create",
      "sandbox_list",
      "sandbox_show",
      "sandbox_destroy",
      "sandbox_renew",
      "sandbox_exec",
      "file_read",
      "file_write",
      "file_upload",
      "file_download",
      "job_run",
      "job_status",
      "job_logs",
      "job_cancel",
      "job_artifacts",
      "job_artifact_read",
      "workspace_list",
      "workspace_snapshot",
      "workspace_fork",
    ]) {
      assert.ok(names.includes(wanted), `${wanted} missing from ${names.join(", ")}`);
    }
    for (const tool of tools) {
      assert.ok((tool.description ?? "").length > 40, `${tool.name} has no real description`);
      assert.equal(tool.inputSchema.type, "object", tool.name);
    }
    // The protocol's own schema: its limits and descriptions, and no progress_token.
    const create = tools.find((t) => t.name === "sandbox_create")!;
    const props = create.inputSchema.properties as Record<string, { description?: string }>;
    assert.deepEqual(create.inputSchema.required, ["profile"]);
    assert.ok(props.workspace?.description?.includes("scsi1"));
    assert.equal(props.progress_token, undefined);
    const { resourceTemplates } = await client.listResourceTemplates();
    assert.deepEqual(resourceTemplates.map((r) => r.uriTemplate).sort(), [
      "agentlab://jobs/{id}/log",
      "agentlab://sandboxes/{vmid}/events",
    ]);
  });

  test("sandbox_create reports progress and returns the RUNNING sandbox; its events are a resource", async () => {
    const steps: string[] = [];
    const created = await client.callTool(
      { name: "sandbox_create", arguments: { profile: "yolo-ephemeral", name: "mcp-one" } },
      undefined,
      { ...LONG, onprogress: (p) => steps.push(p.message ?? "") },
    );
    assert.notEqual(created.isError, true, text(created));
    const sandbox = structured(created);
    assert.equal(sandbox.state, "RUNNING");
    assert.equal(sandbox.name, "mcp-one");
    assert.ok(steps.length >= 3, `progress: ${JSON.stringify(steps)}`);
    const listed = structured(await client.callTool({ name: "sandbox_list", arguments: {} }));
    assert.ok((listed.sandboxes as Array<{ vmid: number }>).some((s) => s.vmid === sandbox.vmid));
    const events = await client.readResource({ uri: `agentlab://sandboxes/${sandbox.vmid}/events` });
    const body = JSON.parse((events.contents[0] as { text: string }).text) as {
      events: Array<{ kind: string }>;
    };
    assert.ok(body.events.length > 0);
    const destroyed = await client.callTool(
      { name: "sandbox_destroy", arguments: { vmid: sandbox.vmid } },
      undefined,
      LONG,
    );
    assert.equal(structured(destroyed).state, "DESTROYED", text(destroyed));
  });

  test("a daemon error comes back as a tool error with its message and hint", async () => {
    const missing = await client.callTool({ name: "sandbox_show", arguments: { vmid: 987654 } });
    assert.equal(missing.isError, true);
    assert.match(text(missing), /^error: sandbox not found: 987654$/m);
    assert.match(text(missing), /^hint: list sandboxes with agentlab sandbox list --all$/m);
    assert.equal(structured(missing).code, "SANDBOX_NOT_FOUND");
    // Params the protocol refuses are refused before anything runs, naming the field.
    const bad = await client.callTool({
      name: "sandbox_renew",
      arguments: { vmid: 987654, ttl_minutes: -1 },
    });
    assert.equal(bad.isError, true);
    assert.match(text(bad), /ttl_minutes/);
  });

  test("job_run, job_status until COMPLETED, its log resource, job_artifacts and job_artifact_read", async () => {
    const run = await client.callTool(
      { name: "job_run", arguments: { repo_url: repo.url, task: "do it", profile: "yolo-ephemeral" } },
      undefined,
      LONG,
    );
    assert.notEqual(run.isError, true, text(run));
    const id = structured(run).id as string;
    assert.match(id, /^job_[0-9a-f]{16}$/);
    const done = await until("the job to end", async () => {
      const job = structured(await client.callTool({ name: "job_status", arguments: { id } }));
      return ["COMPLETED", "FAILED", "TIMEOUT"].includes(job.status as string) ? job : undefined;
    });
    assert.equal(done.status, "COMPLETED", JSON.stringify(done));
    const logs = await client.callTool({ name: "job_logs", arguments: { id } });
    assert.match(text(logs), /mcp-agent done/);
    const log = await client.readResource({ uri: `agentlab://jobs/${id}/log` });
    assert.match((log.contents[0] as { text: string }).text, /mcp-agent done/);
    const artifacts = structured(await client.callTool({ name: "job_artifacts", arguments: { id } }));
    const names = (artifacts.artifacts as Array<{ name: string }>).map((a) => a.name);
    assert.ok(names.includes("out/result.txt"), names.join(", "));
    const read = await client.callTool({
      name: "job_artifact_read",
      arguments: { id, name: "out/result.txt" },
    });
    assert.notEqual(read.isError, true, text(read));
    assert.equal(text(read), `result of ${id}\n`);
    assert.equal(structured(read).eof, true);
  });

  describe("/mcp on the control listener", () => {
    let endpoint: URL;
    let dispatcher: Agent;
    const fetchVia = ((url: string | URL, init?: RequestInit) =>
      undiciFetch(url, { ...(init as object), dispatcher } as never)) as unknown as typeof fetch;

    async function token(name: string, scope: string): Promise<string> {
      const created = await h.json<{ secret: string }>([
        "token",
        "create",
        "--name",
        name,
        "--scope",
        scope,
        ...(scope === "operate" ? ["--all"] : []),
      ]);
      assert.equal(created.code, 0, JSON.stringify(created.body));
      return created.body.secret;
    }
    async function httpClient(secret: string): Promise<Client> {
      const transport = new StreamableHTTPClientTransport(endpoint, {
        requestInit: { headers: { Authorization: `Bearer ${secret}` } },
        fetch: fetchVia,
      });
      const remote = new Client({ name: "agentlab-remote-test", version: "1.0.0" });
      await remote.connect(transport);
      return remote;
    }

    before(() => {
      endpoint = new URL(`https://127.0.0.1:${controlPort}/mcp`);
      // Trust exactly the daemon's self-signed certificate, as a pinned client does.
      dispatcher = new Agent({
        connect: {
          ca: readFileSync(join(h.host.root, "data", "control-tls", "cert.pem")),
          checkServerIdentity: () => undefined,
        },
      });
    });
    after(async () => {
      await dispatcher?.close();
    });

    test("an operate token lists the tools and calls them; the stdio-only copies are not offered", async () => {
      const remote = await httpClient(await token("mcp-operate", "operate"));
      try {
        const { tools } = await remote.listTools();
        const names = tools.map((t) => t.name);
        assert.ok(names.includes("sandbox_create") && names.includes("job_artifact_read"));
        assert.ok(!names.includes("file_upload") && !names.includes("file_download"));
        const listed = await remote.callTool({ name: "sandbox_list", arguments: {} });
        assert.notEqual(listed.isError, true, text(listed));
        assert.ok(Array.isArray(structured(listed).sandboxes));
        // Progress crosses the HTTP answer (Server-Sent Events) as it does stdio.
        const steps: string[] = [];
        const created = await remote.callTool(
          { name: "sandbox_create", arguments: { profile: "yolo-ephemeral", name: "mcp-remote" } },
          undefined,
          { ...LONG, onprogress: (p) => steps.push(p.message ?? "") },
        );
        assert.notEqual(created.isError, true, text(created));
        assert.equal(structured(created).state, "RUNNING");
        assert.ok(steps.length >= 3, JSON.stringify(steps));
        const vmid = structured(created).vmid as number;
        const gone = await remote.callTool({ name: "sandbox_destroy", arguments: { vmid } }, undefined, LONG);
        assert.equal(structured(gone).state, "DESTROYED", text(gone));
        // Recorded as the token's calls, as over /rpc.
        // sandbox logs --json prints one event per line.
        const logs = await h.cli(["--json", "sandbox", "logs", String(vmid)]);
        assert.equal(logs.code, 0, logs.stderr);
        const events = logs.stdout
          .trim()
          .split("\n")
          .map((line) => JSON.parse(line) as { kind: string; msg: string });
        for (const method of ["sandbox.create", "sandbox.destroy"]) {
          assert.ok(
            events.some(
              (e) => e.kind === "remote.call" && e.msg.startsWith(`${method} by token "mcp-operate"`),
            ),
            `${method}: ${logs.stdout}`,
          );
        }
      } finally {
        await remote.close();
      }
    });

    test("a read-only token's create is refused with SCOPE_REQUIRED and creates nothing", async () => {
      const before = (await h.json<{ sandboxes: unknown[] }>(["sandbox", "list", "--all"])).body.sandboxes
        .length;
      const remote = await httpClient(await token("mcp-read", "read"));
      try {
        const refused = await remote.callTool(
          { name: "sandbox_create", arguments: { profile: "yolo-ephemeral" } },
          undefined,
          LONG,
        );
        assert.equal(refused.isError, true);
        assert.equal(structured(refused).code, "SCOPE_REQUIRED");
        assert.match(
          text(refused),
          /^error: sandbox\.create needs a token with scope operate; token "mcp-read" has scope read$/m,
        );
        assert.match(text(refused), /SCOPE_REQUIRED/);
        // What read allows still works with the same token.
        const listed = await remote.callTool({ name: "sandbox_list", arguments: {} });
        assert.notEqual(listed.isError, true, text(listed));
      } finally {
        await remote.close();
      }
      const after = (await h.json<{ sandboxes: unknown[] }>(["sandbox", "list", "--all"])).body.sandboxes
        .length;
      assert.equal(after, before);
    });

    test("GET is 405, a body that is not JSON is 400, and the endpoint still serves afterwards", async () => {
      const auth = { authorization: `Bearer ${await token("mcp-probe", "read")}` };
      const get = await fetchVia(endpoint, { headers: auth });
      assert.equal(get.status, 405);
      assert.equal(((await get.json()) as { code: string }).code, "USAGE");
      const garbage = await fetchVia(endpoint, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: "{not json",
      });
      assert.equal(garbage.status, 400);
      assert.equal(((await garbage.json()) as { code: string }).code, "INVALID_PARAMS");
      const remote = await httpClient(auth.authorization.slice("Bearer ".length));
      try {
        assert.ok((await remote.listTools()).tools.length > 10);
      } finally {
        await remote.close();
      }
    });

    test("no token, or a wrong one, is a 401 with the daemon's error body", async () => {
      const initialize = JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } },
      });
      const headers = { "content-type": "application/json", accept: "application/json, text/event-stream" };
      for (const extra of [{}, { authorization: "Bearer alt_wrong" }] as Record<string, string>[]) {
        const res = await fetchVia(endpoint, {
          method: "POST",
          headers: { ...headers, ...extra },
          body: initialize,
        });
        assert.equal(res.status, 401);
        assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="agentlabd"');
        const body = (await res.json()) as { code: string; hint: string };
        assert.equal(body.code, "TOKEN_INVALID");
        assert.ok(body.hint.length > 0);
      }
    });
  });
});

const skip = guestRigSkipReason();

describe("sandbox_exec and the file tools over stdio against a real sshd", { skip }, () => {
  let rig: GuestRig;
  let client: Client;
  let vmid: number;

  before(async () => {
    rig = await startGuestRig("mcp");
    vmid = (await rig.newSandbox()).vmid;
    client = await stdioClient(rig.host.socketPath);
  });
  after(async () => {
    await client?.close();
    await rig?.stop();
  });

  test("exec streams output as progress and returns the exit code", async () => {
    const seen: string[] = [];
    const result = await client.callTool(
      {
        name: "sandbox_exec",
        arguments: {
          vmid,
          user: "root",
          // The pause keeps the stderr line's progress apart from the result: the SDK's client runs
          // progress handlers a microtask after it reads them, so a notification read in the same
          // chunk as the response finds its handler already gone and is dropped (the result still
          // carries all of stdout and stderr, which is why the tool returns them).
          command: ["sh", "-c", "echo one; echo two >&2; sleep 1; echo three; exit 7"],
        },
      },
      undefined,
      { ...LONG, onprogress: (p) => seen.push(p.message ?? "") },
    );
    assert.notEqual(result.isError, true, text(result));
    const body = structured(result);
    assert.equal(body.exit_code, 7);
    assert.equal(body.stdout, "one\nthree\n");
    assert.equal(body.stderr, "two\n");
    assert.match(text(result), /^exit_code: 7$/m);
    assert.ok(seen.join("").includes("one"), JSON.stringify(seen));
    assert.ok(
      seen.some((line) => line.startsWith("[stderr] two")),
      JSON.stringify(seen),
    );
  });

  test("file_write then file_read give back the same text", async () => {
    const content = "héllo from mcp\n".repeat(1000);
    const written = await client.callTool({
      name: "file_write",
      arguments: { vmid, user: "root", path: "/tmp/mcp-file.txt", content },
    });
    assert.notEqual(written.isError, true, text(written));
    const read = await client.callTool({
      name: "file_read",
      arguments: { vmid, user: "root", path: "/tmp/mcp-file.txt" },
    });
    assert.notEqual(read.isError, true, text(read));
    assert.equal(text(read), content);
  });
});
