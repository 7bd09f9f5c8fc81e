/**
 * Remote control end to end: a real daemon with control_listen on loopback (real TLS, its self-signed
 * certificate made by openssl), the real CLI as a remote client, the simulator behind the API backend.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type CliResult, runCli, spawnDaemon, startDaemon, writeConfig } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, inspect, setControl } from "../pvesim/harness.js";

interface ErrorBody {
  code: string;
  message: string;
  hint: string;
  details: Record<string, unknown>;
}

/** A client machine: its own config dir (client.json) and environment. */
interface Client {
  home: string;
  env: NodeJS.ProcessEnv;
  cli(args: string[], env?: NodeJS.ProcessEnv): Promise<CliResult>;
  json<T = Record<string, unknown>>(
    args: string[],
    env?: NodeJS.ProcessEnv,
  ): Promise<{ code: number | null; body: T; stderr: string }>;
  cleanup(): void;
}

function client(): Client {
  const home = mkdtempSync(join(tmpdir(), "agentlab-client-"));
  const env = { XDG_CONFIG_HOME: home, AGENTLAB_ENDPOINT: "", AGENTLAB_TOKEN: "", AGENTLAB_SOCKET: "" };
  const cli = (args: string[], extra: NodeJS.ProcessEnv = {}) => runCli(args, { env: { ...env, ...extra } });
  return {
    home,
    env,
    cli,
    async json<T>(args: string[], extra: NodeJS.ProcessEnv = {}) {
      const result = await cli(["--json", ...args], extra);
      let body: T;
      try {
        body = JSON.parse(result.stdout) as T;
      } catch {
        throw new Error(`not JSON (exit ${result.code}): ${result.stdout}\n${result.stderr}`);
      }
      return { code: result.code, body, stderr: result.stderr };
    },
    cleanup: () => rmSync(home, { recursive: true, force: true }),
  };
}

async function createToken(h: SimHost, name: string, scope: string, extra: string[] = []): Promise<string> {
  const created = await h.json<{ secret: string }>([
    "token",
    "create",
    "--name",
    name,
    "--scope",
    scope,
    ...extra,
  ]);
  assert.equal(created.code, 0, JSON.stringify(created.body));
  assert.match(created.body.secret, /^alt_[A-Za-z0-9_-]{43}$/);
  return created.body.secret;
}

/** Replace the control_tls_* lines of the daemon's config (for the next start). */
function writeConfigLine(h: SimHost, lines: string): void {
  const text = readFileSync(h.host.configPath, "utf8").replace(/^control_tls_(cert|key):.*\n/gm, "");
  writeConfig(h.host.configPath, `${text}\n${lines}`);
}

function remoteEvents(
  h: SimHost,
): Array<{ kind: string; sandbox_vmid: number | null; msg: string; json: string }> {
  const db = new Database(h.host.dbPath, { readonly: true });
  try {
    return db
      .prepare("SELECT kind, sandbox_vmid, msg, json FROM events WHERE kind LIKE 'remote.%' ORDER BY id")
      .all() as Array<{ kind: string; sandbox_vmid: number | null; msg: string; json: string }>;
  } finally {
    db.close();
  }
}

describe("remote control over HTTPS + WebSocket", () => {
  let h: SimHost;
  let port: number;
  let endpoint: string;
  let fingerprint: string;
  let reader: string;
  let operator: string;
  let admin: string;
  let c: Client;

  before(async () => {
    port = await freePort();
    endpoint = `https://127.0.0.1:${port}`;
    h = await startSimHost("api", `control_listen: 127.0.0.1:${port}\n`, { knobs: FAST_KNOBS });
    const status = await h.json<{
      control_listener: { listening: boolean; fingerprint: string; url: string };
    }>(["status"]);
    assert.equal(status.body.control_listener.listening, true);
    fingerprint = status.body.control_listener.fingerprint;
    reader = await createToken(h, "reader", "read");
    operator = await createToken(h, "operator", "operate");
    admin = await createToken(h, "admin", "admin");
    c = client();
  });
  after(async () => {
    c?.cleanup();
    await h?.stop();
  });

  test("the self-signed certificate is made once under data_dir, its key 0600", () => {
    const dir = join(h.host.root, "data", "control-tls");
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.equal(statSync(join(dir, "key.pem")).mode & 0o777, 0o600);
    const openssl = execFileSync(
      "openssl",
      ["x509", "-in", join(dir, "cert.pem"), "-noout", "-fingerprint", "-sha256"],
      {
        encoding: "utf8",
      },
    );
    assert.equal(openssl.trim().split("=")[1], fingerprint);
  });

  test("without a pin the self-signed certificate is refused before the token is sent", async () => {
    const result = await c.json<ErrorBody>(["--endpoint", endpoint, "--token", reader, "sandbox", "list"]);
    assert.equal(result.code, 1);
    assert.equal(result.body.code, "CERTIFICATE_UNTRUSTED");
    assert.match(result.body.hint, /agentlab connect --endpoint/);
  });

  test("connect --fingerprint refuses a certificate with another fingerprint and saves nothing", async () => {
    const wrong = "AB:".repeat(31) + "AB";
    const result = await c.cli([
      "connect",
      "--endpoint",
      endpoint,
      "--token",
      reader,
      "--fingerprint",
      wrong,
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      new RegExp(
        `^error: the certificate of ${endpoint} has fingerprint ${fingerprint}, not the ${wrong}`,
        "m",
      ),
    );
    assert.throws(() => statSync(join(c.home, "agentlab", "client.json")), /ENOENT/);
  });

  test("connect pins the certificate on first use, checks health and the token, and saves client.json 0600", async () => {
    const result = await c.cli(["connect", "--endpoint", endpoint, "--token", reader, "--jump-user", "ops"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stdout,
      new RegExp(`^certificate: +SHA-256 ${fingerprint} \\(pinned on first use`, "m"),
    );
    assert.match(result.stdout, /^health: +ok$/m);
    assert.match(result.stdout, /^daemon: +agentlabd /m);
    // The spec's form names no --jump-host: the jump host is the endpoint's host.
    assert.match(result.stdout, /^jump: +ops@127\.0\.0\.1 \(for agentlab ssh\)$/m);
    const file = join(c.home, "agentlab", "client.json");
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(join(c.home, "agentlab")).mode & 0o777, 0o700);
    const saved = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(saved.endpoint, endpoint);
    assert.equal(saved.fingerprint, fingerprint);
    assert.equal(saved.jump_user, "ops");
    assert.equal(saved.jump_host, "127.0.0.1");
    assert.equal(saved.trust, "pin");
    assert.ok(!result.stdout.includes(reader), "the secret is not printed");

    const status = await c.cli(["status"]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(
      status.stdout,
      new RegExp(
        `^connection: +remote ${endpoint} \\(from ${file}; token from ${file}, certificate pinned ${fingerprint}\\)$`,
        "m",
      ),
    );
  });

  test("a read token reads, and is refused what needs operate or admin, naming the scope", async () => {
    const list = await c.json<{ sandboxes: unknown[] }>(["sandbox", "list"]);
    assert.equal(list.code, 0, list.stderr);
    const create = await c.json<ErrorBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(create.code, 1);
    assert.equal(create.body.code, "SCOPE_REQUIRED");
    assert.equal(
      create.body.message,
      'sandbox.create needs a token with scope operate; token "reader" has scope read',
    );
    assert.match(create.body.hint, /agentlab token create --name <name> --scope operate/);
    const tokens = await c.cli(["token", "list"]);
    assert.equal(tokens.code, 1);
    assert.match(
      tokens.stderr,
      /^error: token.list needs a token with scope admin; token "reader" has scope read$/m,
    );
  });

  test("an admin token manages tokens remotely; its secrets are never listed", async () => {
    const list = await c.json<{ tokens: Array<{ name: string; scope: string; status: string }> }>([
      "--token",
      admin,
      "token",
      "list",
    ]);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      list.body.tokens.map((t) => [t.name, t.scope, t.status]),
      [
        ["reader", "read", "active"],
        ["operator", "operate", "active"],
        ["admin", "admin", "active"],
      ],
    );
    assert.ok(!JSON.stringify(list.body).includes(reader.slice(8)));
  });

  test("an operate token creates a sandbox with progress over the WebSocket; the events name the token", async () => {
    const result = await c.cli(["--token", operator, "sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^state: +RUNNING$/m);
    for (const step of ["cloning template 9000", "starting the VM", "waiting for the guest"]) {
      assert.match(result.stderr, new RegExp(step), `progress shows "${step}"`);
    }
    const vmid = Number(/^vmid: +(\d+)$/m.exec(result.stdout)?.[1]);
    const events = remoteEvents(h).filter((e) => e.sandbox_vmid === vmid);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.msg, `sandbox.create by token "operator" from 127.0.0.1: ok`);
    assert.equal(JSON.parse(events[0]!.json).token, "operator");
    assert.ok(!events[0]!.json.includes(operator), "never the secret");
  });

  test("Ctrl-C over the WebSocket cancels sandbox new and the daemon rolls back", async () => {
    await setControl(h.sim.dir, { start_ms: 1500 });
    try {
      const child = spawn(
        process.execPath,
        [AGENTLAB_BIN, "--token", operator, "new", "--profile", "yolo-ephemeral"],
        {
          stdio: ["ignore", "pipe", "pipe"],
          env: { ...process.env, ...c.env },
        },
      );
      let stderr = "";
      child.stderr.on("data", (chunk) => {
        stderr += chunk;
        if (stderr.includes("starting the VM") && !stderr.includes("cancelling")) child.kill("SIGINT");
      });
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      assert.equal(code, 1, stderr);
      assert.match(stderr, /^error: sandbox \d+ cancelled; what was created has been removed$/m);
      const vmid = Number(/sandbox (\d+) cancelled/.exec(stderr)?.[1]);
      const exists = await inspect(h.sim.dir, (ctx) => ctx.state.vms[String(vmid)] !== undefined);
      assert.equal(exists, false);
      const show = await h.json<{ state: string; failure_reason: string }>(["show", String(vmid)]);
      assert.equal(show.body.state, "FAILED");
      assert.match(show.body.failure_reason, /^cancelled/);
    } finally {
      await setControl(h.sim.dir, { start_ms: FAST_KNOBS.start_ms });
    }
  });

  test("an operate token acts only on what it created, unless made with --all", async () => {
    const other = await createToken(h, "other", "operate");
    const everything = await createToken(h, "ops-all", "operate", ["--all"]);
    const mine = await c.json<{ vmid: number }>([
      "--token",
      operator,
      "sandbox",
      "new",
      "--profile",
      "yolo-ephemeral",
    ]);
    assert.equal(mine.code, 0, mine.stderr);
    const vmid = String(mine.body.vmid);
    const refused = await c.json<ErrorBody>(["--token", other, "sandbox", "stop", vmid]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "NOT_OWNER");
    assert.equal(
      refused.body.message,
      `sandbox ${vmid} was not created by token "other", which may act only on what it created`,
    );
    // A sandbox made over the local socket has no owner token: only --all (or admin) may touch it remotely.
    const local = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    const notMine = await c.json<ErrorBody>([
      "--token",
      operator,
      "sandbox",
      "destroy",
      String(local.body.vmid),
    ]);
    assert.equal(notMine.body.code, "NOT_OWNER");
    const byAll = await c.json(["--token", everything, "sandbox", "destroy", String(local.body.vmid)]);
    assert.equal(byAll.code, 0, byAll.stderr);
    const byOwner = await c.json(["--token", operator, "sandbox", "destroy", vmid]);
    assert.equal(byOwner.code, 0, byOwner.stderr);
    const refusedEvent = remoteEvents(h).find((e) => e.msg.startsWith('sandbox.stop by token "other"'));
    assert.equal(refusedEvent?.msg, `sandbox.stop by token "other" from 127.0.0.1: NOT_OWNER`);
  });

  test("workspaces too: another operate token may not destroy one it did not create", async () => {
    const mine = await createToken(h, "ws-owner", "operate");
    const theirs = await createToken(h, "ws-other", "operate");
    const created = await c.json<{ id: string }>([
      "--token",
      mine,
      "workspace",
      "create",
      "--name",
      "remote-ws",
      "--size",
      "1G",
    ]);
    assert.equal(created.code, 0, created.stderr);
    const refused = await c.json<ErrorBody>([
      "--token",
      theirs,
      "workspace",
      "destroy",
      "remote-ws",
      "--force",
    ]);
    assert.equal(refused.body.code, "NOT_OWNER");
    assert.equal(
      refused.body.message,
      'workspace remote-ws was not created by token "ws-other", which may act only on what it created',
    );
    const destroyed = await c.json(["--token", mine, "workspace", "destroy", "remote-ws", "--force"]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
  });

  test("a bad token, an expired one and a revoked one each get their own error", async () => {
    const bad = await c.json<ErrorBody>(["--token", `alt_${"x".repeat(43)}`, "sandbox", "list"]);
    assert.equal(bad.code, 1);
    assert.equal(bad.body.code, "TOKEN_INVALID");
    assert.equal(bad.body.message, "the token is not known to this agentlabd");

    const soon = await createToken(h, "short-lived", "read", ["--ttl", "1h"]);
    const db = new Database(h.host.dbPath);
    db.prepare("UPDATE api_tokens SET expires_at = ? WHERE name = 'short-lived'").run(
      "2020-01-01T00:00:00.000000000Z",
    );
    db.close();
    const expired = await c.json<ErrorBody>(["--token", soon, "sandbox", "list"]);
    assert.equal(expired.body.code, "TOKEN_EXPIRED");
    assert.match(expired.body.message, /^token "short-lived" expired at 2020-01-01T00:00:00.000Z$/);
    assert.match(expired.body.hint, /agentlab token create/);

    const doomed = await createToken(h, "doomed", "read");
    assert.equal((await c.json(["--token", doomed, "sandbox", "list"])).code, 0);
    const revoke = await h.cli(["token", "revoke", "doomed"]);
    assert.equal(revoke.code, 0, revoke.stderr);
    const revoked = await c.json<ErrorBody>(["--token", doomed, "sandbox", "list"]);
    assert.equal(revoked.body.code, "TOKEN_REVOKED");
    assert.match(revoked.body.message, /^token "doomed" was revoked at /);
    const refusals = remoteEvents(h)
      .filter((e) => e.kind === "remote.refused")
      .map((e) => JSON.parse(e.json).outcome);
    assert.deepEqual(refusals.slice(-3), ["TOKEN_INVALID", "TOKEN_EXPIRED", "TOKEN_REVOKED"]);
  });

  test("a pinned certificate that changed is a fingerprint mismatch that says how to re-pin", async () => {
    const file = join(c.home, "agentlab", "client.json");
    const original = readFileSync(file, "utf8");
    const dir = mkdtempSync(join(tmpdir(), "agentlab-othercert-"));
    try {
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=impostor",
          "-keyout",
          join(dir, "k.pem"),
          "-out",
          join(dir, "c.pem"),
        ],
        { stdio: "ignore" },
      );
      const pem = readFileSync(join(dir, "c.pem"), "utf8");
      const other = execFileSync(
        "openssl",
        ["x509", "-in", join(dir, "c.pem"), "-noout", "-fingerprint", "-sha256"],
        {
          encoding: "utf8",
        },
      )
        .trim()
        .split("=")[1]!;
      writeFileSync(file, JSON.stringify({ ...JSON.parse(original), fingerprint: other, certificate: pem }), {
        mode: 0o600,
      });
      const result = await c.cli(["sandbox", "list"]);
      assert.equal(result.code, 1);
      assert.match(
        result.stderr,
        new RegExp(
          `^error: the certificate of ${endpoint} does not match the one pinned \\(${other}\\)$`,
          "m",
        ),
      );
      assert.match(
        result.stderr,
        /^hint: .*pin it again: agentlab connect --endpoint .* --fingerprint <new fingerprint>/m,
      );
    } finally {
      writeFileSync(file, original, { mode: 0o600 });
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("precedence: flags > environment > saved > local socket, and status says which", async () => {
    const file = join(c.home, "agentlab", "client.json");
    // --socket beats the saved connection.
    const local = await c.cli(["--socket", h.host.socketPath, "status"]);
    assert.equal(local.code, 0, local.stderr);
    assert.match(
      local.stdout,
      new RegExp(`^connection: +local socket ${h.host.socketPath} \\(from --socket\\)$`, "m"),
    );
    // AGENTLAB_ENDPOINT beats the saved connection (and a dead endpoint says it is unreachable).
    const dead = `https://127.0.0.1:${await freePort()}`;
    const env = await c.json<ErrorBody>(["status"], { AGENTLAB_ENDPOINT: dead, AGENTLAB_TOKEN: reader });
    assert.equal(env.body.code, "ENDPOINT_UNREACHABLE");
    assert.match(env.body.message, new RegExp(`^cannot reach agentlabd at ${dead}: connection refused`));
    // --endpoint beats AGENTLAB_ENDPOINT; the saved pin applies because it is the saved endpoint.
    const flag = await c.cli(["--endpoint", endpoint, "status"], { AGENTLAB_ENDPOINT: dead });
    assert.equal(flag.code, 0, flag.stderr);
    assert.match(
      flag.stdout,
      new RegExp(`^connection: +remote ${endpoint} \\(from --endpoint; token from ${file}`, "m"),
    );
    // AGENTLAB_SOCKET beats the saved connection too.
    const envSocket = await c.cli(["status"], { AGENTLAB_SOCKET: h.host.socketPath });
    assert.match(envSocket.stdout, /^connection: +local socket .* \(from AGENTLAB_SOCKET\)$/m);

    const gone = await c.cli(["disconnect"]);
    assert.equal(gone.code, 0, gone.stderr);
    assert.match(gone.stdout, /^removed .*client\.json; using the local socket again$/m);
    const fallback = await c.json<ErrorBody>(["status"], { AGENTLAB_SOCKET: "" });
    assert.equal(fallback.body.code, "DAEMON_UNREACHABLE", "back to the default local socket");
    const again = await c.cli(["disconnect"]);
    assert.match(again.stdout, /^not connected/);
  });

  test("GET /health answers ok, and 503 naming Proxmox when the backend is down", async () => {
    const pin = { ca: readFileSync(join(h.host.root, "data", "control-tls", "cert.pem")) };
    const get = () =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        import("node:https").then(({ request }) => {
          const req = request(
            { host: "127.0.0.1", port, path: "/health", ...pin, checkServerIdentity: () => undefined },
            (res) => {
              let body = "";
              res.on("data", (chunk) => (body += chunk));
              res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
            },
          );
          req.on("error", reject);
          req.end();
        }, reject);
      });
    const ok = await get();
    assert.equal(ok.status, 200);
    assert.deepEqual(JSON.parse(ok.body), { status: "ok" });
    await setControl(h.sim.dir, {}, ["api_down"]);
    try {
      const down = await get();
      assert.equal(down.status, 503);
      const body = JSON.parse(down.body);
      assert.equal(body.status, "failing");
      assert.deepEqual(Object.keys(body.failed), ["proxmox"]);
    } finally {
      await clearFaults(h.sim.dir);
    }
  });
});

describe("remote control listener: allowlist and start-up errors", () => {
  test("a client outside control_allow_cidrs is told so", async () => {
    const port = await freePort();
    const h = await startSimHost(
      "shell",
      `control_listen: 127.0.0.1:${port}\ncontrol_allow_cidrs: [10.0.0.0/8]\n`,
    );
    const c = client();
    try {
      const token = await createToken(h, "reader", "read");
      const result = await c.json<ErrorBody>([
        "connect",
        "--endpoint",
        `https://127.0.0.1:${port}`,
        "--token",
        token,
      ]);
      assert.equal(result.code, 1);
      assert.equal(result.body.code, "ADDRESS_NOT_ALLOWED");
      assert.equal(
        result.body.message,
        "connections from 127.0.0.1 are not allowed by this agentlabd (control_allow_cidrs: 10.0.0.0/8)",
      );
      assert.match(result.body.hint, /control_allow_cidrs/);
    } finally {
      c.cleanup();
      await h.stop();
    }
  });

  test("a certificate from a CA the client trusts is checked by CA and host name, so a renewed one still works", async () => {
    const dir = mkdtempSync(join(tmpdir(), "agentlab-ca-"));
    const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
      "req",
      "-x509",
      ...ec,
      "-days",
      "2",
      "-subj",
      "/CN=test ca",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    );
    writeFileSync(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
    const leaf = (name: string) => {
      openssl("req", ...ec, "-subj", "/CN=127.0.0.1", "-keyout", `${name}.key`, "-out", `${name}.csr`);
      openssl(
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        `${name}.pem`,
      );
    };
    leaf("first");
    leaf("renewed");
    const port = await freePort();
    const endpoint = `https://127.0.0.1:${port}`;
    const h = await startSimHost(
      "shell",
      `control_listen: 127.0.0.1:${port}\ncontrol_tls_cert: ${join(dir, "first.pem")}\ncontrol_tls_key: ${join(dir, "first.key")}\n`,
    );
    const c = client();
    const trusting = { NODE_EXTRA_CA_CERTS: join(dir, "ca.pem") };
    try {
      const token = await createToken(h, "reader", "read");
      const connected = await c.cli(["connect", "--endpoint", endpoint, "--token", token], trusting);
      assert.equal(connected.code, 0, connected.stderr);
      assert.match(
        connected.stdout,
        /^certificate: +SHA-256 \S+ \(valid for the host name under the system CAs; checked that way from now on\)$/m,
      );
      assert.equal(JSON.parse(readFileSync(join(c.home, "agentlab", "client.json"), "utf8")).trust, "ca");
      // The operator renews the certificate (same CA, new key): the saved connection keeps working.
      await h.daemon.stop();
      writeConfigLine(
        h,
        `control_tls_cert: ${join(dir, "renewed.pem")}\ncontrol_tls_key: ${join(dir, "renewed.key")}\n`,
      );
      h.daemon = await startDaemon(h.host);
      const status = await c.cli(["status"], trusting);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^connection: +remote .*, certificate checked against the system CAs\)$/m);
      // Without the CA the same certificate is not trusted, and the error says how to pin it.
      const untrusting = await c.json<ErrorBody>(["status"]);
      assert.equal(untrusting.body.code, "CERTIFICATE_UNTRUSTED");
    } finally {
      c.cleanup();
      await h.daemon.stop(); // the restarted one; h.stop() stops the first
      await h.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("control_listen on an address in use stops the start-up, naming the key", async () => {
    const holder = createServer();
    const port = await new Promise<number>((resolve) =>
      holder.listen({ host: "127.0.0.1", port: 0 }, () =>
        resolve((holder.address() as { port: number }).port),
      ),
    );
    const h = await import("../helpers/daemon.js").then(({ makeHostDir }) =>
      makeHostDir(`control_listen: 127.0.0.1:${port}\n`),
    );
    try {
      const daemon = spawnDaemon(h);
      const code = await daemon.exited;
      assert.equal(code, 1);
      assert.match(
        daemon.output().stderr,
        new RegExp(`^agentlabd: error: control_listen: address 127.0.0.1:${port} is already in use$`, "m"),
      );
      assert.match(daemon.output().stderr, /^hint: stop what holds it/m);
    } finally {
      holder.close();
      h.cleanup();
    }
  });
});
