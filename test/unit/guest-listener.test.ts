import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { pino } from "pino";
import {
  GuestListener,
  type GuestListenerOptions,
  MAX_BODY_BYTES,
  READY_PATH,
} from "../../src/daemon/guest/listener.js";
import { RateLimiter } from "../../src/daemon/guest/rate-limit.js";
import { firstGuestAddress, GuestReadiness } from "../../src/daemon/guest/ready-waiters.js";
import { BootstrapTokens, hashBootstrapToken } from "../../src/daemon/guest/tokens.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const log = pino({ level: "silent" });
const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Rig {
  store: Store;
  readiness: GuestReadiness;
  listener: GuestListener;
  port: number;
  /** The token clock (expiry) and the rate-limit clock, both in epoch ms; tests move them. */
  clock: { t: number };
  rate: { t: number };
}

/** A real listener on 127.0.0.1 (free port) over a real SQLite file, with injected time. */
async function rig(options: Partial<GuestListenerOptions> & { controllerUrl?: string } = {}): Promise<Rig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-guest-"));
  const clock = { t: Date.parse("2026-03-01T10:00:00.000Z") };
  const rate = { t: 1_000_000 };
  const now = () => new Date(clock.t);
  const store = openStore(path.join(dir, "agentlab.db"), { now });
  const readiness = new GuestReadiness({
    tokens: new BootstrapTokens(createBootstrapTokenRepo(store), { now }),
    clock: { now },
    controllerUrl: options.controllerUrl ?? "http://127.0.0.1:0",
    listenAddress: options.listen ?? "127.0.0.1:0",
    log,
  });
  const listener = new GuestListener({
    listen: "127.0.0.1:0",
    agentSubnet: "127.0.0.0/8",
    readiness,
    log,
    rateLimit: { qps: 1, burst: 100 },
    now: () => rate.t,
    ...options,
  });
  const state = await listener.start();
  cleanups.push(async () => {
    await listener.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const port = state.url ? Number(new URL(state.url).port) : 0;
  return { store, readiness, listener, port, clock, rate };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  error?: string;
}

function request(
  port: number,
  opts: {
    method?: string;
    path?: string;
    body?: string | Buffer;
    localAddress?: string;
    headers?: Record<string, string>;
  } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        method: opts.method ?? "POST",
        path: opts.path ?? READY_PATH,
        agent: false,
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
        headers: { "Content-Type": "application/json", ...opts.headers },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let error: string | undefined;
          try {
            error = (JSON.parse(text) as { error?: string }).error;
          } catch {
            // plain text
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, ...(error ? { error } : {}) });
        });
      },
    );
    req.on("error", reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

const report = (port: number, body: Record<string, unknown>, localAddress?: string) =>
  request(port, { body: JSON.stringify(body), ...(localAddress ? { localAddress } : {}) });

describe("guest listener: routes and refusals", () => {
  it("answers /healthz with 200 ok, and 404 for anything it does not serve", async () => {
    const { port } = await rig();
    const health = await request(port, { method: "GET", path: "/healthz" });
    assert.equal(health.status, 200);
    assert.equal(health.text, "ok");
    const wrong = await request(port, { method: "POST", path: "/healthz" });
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.allow, "GET, HEAD");
    const missing = await request(port, { method: "GET", path: "/v1/bootstrap/fetch" });
    assert.equal(missing.status, 404);
    assert.equal(missing.error, "no such endpoint: GET /v1/bootstrap/fetch");
  });

  it("refuses other methods than POST on the ready route with 405 and Allow", async () => {
    const { port } = await rig();
    for (const method of ["GET", "PUT", "DELETE"]) {
      const reply = await request(port, { method });
      assert.equal(reply.status, 405, method);
      assert.equal(reply.headers.allow, "POST");
      assert.equal(reply.error, "method not allowed; use POST");
    }
  });

  it("refuses sources outside agent_subnet with 403 before rate limit and body checks", async () => {
    const { port, readiness } = await rig({ agentSubnet: "10.77.0.0/16", rateLimit: { qps: 1, burst: 1 } });
    const { token } = readiness.issue(101);
    for (let i = 0; i < 3; i++) {
      const reply = await report(port, { vmid: 101, token, extra: 1 });
      assert.equal(reply.status, 403);
      assert.equal(reply.error, "bootstrap access restricted to agent subnet");
    }
    // A valid token from outside the subnet does not get through either, and is not used up.
    assert.equal((await report(port, { vmid: 101, token })).status, 403);
    assert.equal(readiness.report(101, token, "10.77.0.5"), true);
  });

  it("limits each source IP to a token bucket: 429 rate limit exceeded with Retry-After: 1", async () => {
    const { port, rate } = await rig({ rateLimit: { qps: 1, burst: 3 } });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await report(port, {})).status);
    assert.deepEqual(statuses, [400, 400, 400, 429]);
    const limited = await report(port, {});
    assert.equal(limited.status, 429);
    assert.equal(limited.error, "rate limit exceeded");
    assert.equal(limited.headers["retry-after"], "1");
    // Another guest's address has its own bucket.
    assert.equal((await report(port, {}, "127.0.0.2")).status, 400);
    // One second later exactly one more request fits.
    rate.t += 1000;
    assert.equal((await report(port, {})).status, 400);
    assert.equal((await report(port, {})).status, 429);
  });

  it("answers bad bodies with 400 and a message that says what is wrong, using nothing up", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    const cases: Array<[string | Buffer, string | RegExp]> = [
      [
        "",
        'request body is empty; expected JSON {"vmid": <number>, "token": "<token from /etc/agentlab/bootstrap.json>", "ip": "<optional>", "host_keys": ["<optional: ssh-ed25519 AAAA...>"]}',
      ],
      ["{vmid: 101", /^request body is not valid JSON \(.+\); expected \{"vmid"/],
      ["[1,2]", /^request body must be a JSON object: /],
      [
        JSON.stringify({ vmid: 101, token, extra: true }),
        'unknown field "extra"; allowed fields: vmid, token, ip, host_keys',
      ],
      [JSON.stringify({ vmid: 101 }), "token is required"],
      [JSON.stringify({ vmid: 101, token: 42 }), "token must be a string"],
      [JSON.stringify({ token }), "vmid is required"],
      [JSON.stringify({ vmid: 0, token }), "vmid must be positive"],
      [JSON.stringify({ vmid: -5, token }), "vmid must be positive"],
      [
        JSON.stringify({ vmid: "101", token }),
        "vmid must be a whole number (the VMID from /etc/agentlab/bootstrap.json)",
      ],
      [
        JSON.stringify({ vmid: 1.5, token }),
        "vmid must be a whole number (the VMID from /etc/agentlab/bootstrap.json)",
      ],
      [
        JSON.stringify({ vmid: 101, token, ip: "10.77.0.999" }),
        "ip must be an IPv4 or IPv6 address, or left out",
      ],
      [Buffer.alloc(MAX_BODY_BYTES + 1, 0x20), `request body too large (limit ${MAX_BODY_BYTES} bytes)`],
    ];
    for (const [body, message] of cases) {
      const reply = await request(port, { body });
      assert.equal(reply.status, 400, `body ${String(body).slice(0, 40)}`);
      if (typeof message === "string") assert.equal(reply.error, message);
      else assert.match(reply.error ?? "", message);
    }
    // A body exactly at the limit is read (and then judged on its content).
    const padded = JSON.stringify({ vmid: 101, token }).padEnd(MAX_BODY_BYTES, " ");
    const atLimit = await request(port, { body: padded });
    assert.equal(atLimit.status, 200, atLimit.text);
  });
});

describe("guest listener: the guest's SSH host keys in its report", () => {
  // Real keys, as ssh-keygen writes them (type, base64 wire blob, comment).
  const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIECV+JSy7WlV0VDV5ppnexjjyfLJHHTOeWixBSgYtUPY";
  const ECDSA =
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAUEAJOoS/lURtUUcZMbrriDEJm0HZ3+8Q7cybBzXCCwV9/5H/xQlI6YCkXkaAGbjX1uvMycWaK1W5gWztUNfdo=";

  it("keeps valid keys as type and base64 (comments dropped, duplicates once) and hands them to the waiter", async () => {
    const { port, readiness } = await rig({ agentSubnet: "0.0.0.0/1" });
    const issued = readiness.issue(101);
    const waiting = readiness.wait(101, new AbortController().signal);
    const ok = await report(port, {
      vmid: 101,
      token: issued.token,
      host_keys: [`${ED25519} root@sandbox-101`, ECDSA, `  ${ED25519}  `],
    });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual((await waiting).hostKeys, [ED25519, ECDSA]);
  });

  it("refuses a report with a bad key with 400 and says which one and why, using nothing up", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    const [type, blob] = ED25519.split(" ") as [string, string];
    const cases: Array<[unknown, string]> = [
      ["ssh-ed25519 AAAA", 'host_keys must be an array of OpenSSH public key lines ("ssh-ed25519 AAAA...")'],
      [[42], 'host_keys[0] must be a string ("ssh-ed25519 AAAA...")'],
      [
        [ED25519, "ssh-ed25519"],
        'host_keys[1] must be an OpenSSH public key line: "<type> <base64> [comment]"',
      ],
      [
        [`ssh-dss ${blob}`],
        'host_keys[0] has key type "ssh-dss"; allowed: ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-rsa, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com',
      ],
      [[`${type} ${blob.slice(0, -1)}"`], 'host_keys[0]: the key after "ssh-ed25519" is not base64'],
      // An ed25519 blob labelled as RSA: the blob names its own type.
      [[`ssh-rsa ${blob}`], "host_keys[0]: the key's data is not a ssh-rsa key"],
      [Array(9).fill(ED25519), "host_keys has 9 keys; at most 8"],
      [[`${type} ${"A".repeat(5000)}`], "host_keys[0] is longer than 4096 characters; not an SSH host key"],
    ];
    for (const [hostKeys, message] of cases) {
      const reply = await report(port, { vmid: 101, token, host_keys: hostKeys });
      assert.equal(reply.status, 400, JSON.stringify(hostKeys).slice(0, 60));
      assert.equal(reply.error, message);
    }
    // The token is still good: a bad report used nothing up.
    assert.equal((await report(port, { vmid: 101, token, host_keys: [ED25519] })).status, 200);
  });
});

describe("guest listener: the bootstrap token", () => {
  it("accepts the issued token once, resolves the waiter with the reported address, refuses a second use", async () => {
    const { port, readiness, store } = await rig({ agentSubnet: "0.0.0.0/1" });
    const issued = readiness.issue(101);
    assert.match(issued.token, /^[0-9a-f]{32}$/);
    // Only the hash is stored.
    const row = createBootstrapTokenRepo(store).get(hashBootstrapToken(issued.token));
    assert.equal(row?.vmid, 101);
    assert.equal(row?.consumed_at, null);
    assert.equal(row?.expires_at.getTime(), row!.created_at.getTime() + 10 * 60_000);
    const raw = store.db.prepare("SELECT token_hash FROM bootstrap_tokens").all() as Array<{
      token_hash: string;
    }>;
    assert.ok(raw.every((r) => r.token_hash !== issued.token));

    const waiting = readiness.wait(101, new AbortController().signal);
    const ok = await report(port, { vmid: 101, token: issued.token, ip: "10.77.0.103" });
    assert.equal(ok.status, 200);
    assert.deepEqual(JSON.parse(ok.text), { vmid: 101, ip: "10.77.0.103" });
    const ready = await waiting;
    assert.equal(ready.ip, "10.77.0.103");
    assert.equal(ready.via, "phone-home");
    assert.notEqual(createBootstrapTokenRepo(store).get(hashBootstrapToken(issued.token))?.consumed_at, null);

    const again = await report(port, { vmid: 101, token: issued.token, ip: "10.77.0.103" });
    assert.equal(again.status, 403);
    assert.equal(again.error, "invalid or expired bootstrap token");
  });

  it("refuses a wrong token, a token of another VM, and a malformed one with the same 403", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    readiness.issue(102);
    for (const body of [
      { vmid: 101, token: "0".repeat(32) },
      { vmid: 102, token },
      { vmid: 101, token: "not-a-token" },
      { vmid: 101, token: token.toUpperCase() },
    ]) {
      const reply = await report(port, body);
      assert.equal(reply.status, 403, JSON.stringify(body));
      assert.equal(reply.error, "invalid or expired bootstrap token");
    }
    assert.equal((await report(port, { vmid: 101, token })).status, 200);
  });

  it("takes two reports of one token at the same moment exactly once", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    const replies = await Promise.all([1, 2, 3, 4].map(() => report(port, { vmid: 101, token })));
    assert.deepEqual(replies.map((r) => r.status).sort(), [200, 403, 403, 403]);
  });

  it("expires a token 10 minutes after it was issued", async () => {
    const { port, readiness, clock } = await rig();
    const early = readiness.issue(101);
    clock.t += 10 * 60_000 - 1;
    assert.equal((await report(port, { vmid: 101, token: early.token })).status, 200);

    const late = readiness.issue(102);
    clock.t += 10 * 60_000;
    const reply = await report(port, { vmid: 102, token: late.token });
    assert.equal(reply.status, 403);
    assert.equal(reply.error, "invalid or expired bootstrap token");
  });

  it("lets only the newest token of a VM report, and a cancelled wait refuses a late report", async () => {
    const { port, readiness } = await rig();
    const first = readiness.issue(101);
    const second = readiness.issue(101);
    assert.equal((await report(port, { vmid: 101, token: first.token })).status, 403);

    const aborted = readiness.wait(101, new AbortController().signal);
    readiness.cancel(101);
    await assert.rejects(
      aborted,
      (error: unknown) => error instanceof AgentlabError && error.code === "CANCELLED",
    );
    assert.equal((await report(port, { vmid: 101, token: second.token })).status, 403);
  });

  it("remembers a report that came before anyone waited", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    assert.equal((await report(port, { vmid: 101, token })).status, 200);
    const ready = await readiness.wait(101, AbortSignal.timeout(1000));
    assert.equal(ready.ip, "127.0.0.1");
  });

  it("uses the reported ip only inside agent_subnet, else the connection's source address", async () => {
    const { port, readiness } = await rig({ agentSubnet: "127.0.0.0/8" });
    const a = readiness.issue(101);
    const b = readiness.issue(102);
    assert.deepEqual(JSON.parse((await report(port, { vmid: 101, token: a.token, ip: "127.9.9.9" })).text), {
      vmid: 101,
      ip: "127.9.9.9",
    });
    const outside = await report(port, { vmid: 102, token: b.token, ip: "192.168.1.50" }, "127.0.0.3");
    assert.deepEqual(JSON.parse(outside.text), { vmid: 102, ip: "127.0.0.3" });
  });
});

describe("guest listener: robustness and start-up", () => {
  it("survives garbage on the wire and clients that vanish mid-body", async () => {
    const { port } = await rig();
    const garbage = await new Promise<string>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => socket.write("\x00\x01 NOT HTTP\r\n\r\n"));
      let text = "";
      socket.on("data", (chunk) => (text += chunk));
      socket.on("close", () => resolve(text));
      socket.on("error", () => resolve(text));
    });
    assert.match(garbage, /^HTTP\/1\.1 400/);
    await new Promise<void>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.write(`POST ${READY_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"vmid":`);
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 50);
      });
    });
    assert.equal((await request(port, { method: "GET", path: "/healthz" })).text, "ok");
  });

  it("closes a connection whose headers do not arrive within 5 s", { timeout: 15_000 }, async () => {
    const { port } = await rig();
    const started = Date.now();
    const answer = await new Promise<string>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () =>
        socket.write(`POST ${READY_PATH} HTTP/1.1\r\nHost: x\r\n`),
      );
      let text = "";
      socket.on("data", (chunk) => (text += chunk));
      socket.on("close", () => resolve(text));
      socket.on("error", () => resolve(text));
    });
    const waited = Date.now() - started;
    assert.match(answer, /^HTTP\/1\.1 408/);
    assert.ok(waited >= 4_900 && waited < 8_000, `closed after ${waited} ms`);
  });

  it("does not fail when its address is missing: it reports why and how to fix it", async () => {
    const local = new Set(
      Object.values(os.networkInterfaces())
        .flat()
        .map((i) => i?.address),
    );
    const absent = ["10.77.0.1", "198.51.100.77", "203.0.113.77"].find((a) => !local.has(a))!;
    const { readiness, listener } = await rig({ listen: `${absent}:8844` });
    const state = listener.state();
    assert.equal(state.listening, false);
    assert.equal(state.error, `cannot listen on ${absent}:8844: no interface of this host has that address`);
    assert.match(state.hint ?? "", /setup_vmbr1\.sh --apply.*or set bootstrap_listen/);
    assert.deepEqual(readiness.listener(), state);
    assert.equal(readiness.phoneHomeAvailable, false);
  });

  it("reports a taken port the same way", async () => {
    const first = await rig();
    const { listener } = await rig({ listen: `127.0.0.1:${first.port}` });
    assert.equal(listener.state().listening, false);
    assert.equal(
      listener.state().error,
      `cannot listen on 127.0.0.1:${first.port}: the port is already in use`,
    );
    assert.match(listener.state().hint ?? "", new RegExp(`ss -ltnp 'sport = :${first.port}'`));
  });

  it("gives guests the real port when the config asked for port 0", async () => {
    const { readiness, port } = await rig({ controllerUrl: "http://127.0.0.1:0" });
    assert.equal(readiness.phoneHomeAvailable, true);
    assert.equal(readiness.issue(101).controllerUrl, `http://127.0.0.1:${port}`);
    const fixed = await rig({ controllerUrl: "https://lab.example:9443/agentlab/" });
    assert.equal(fixed.readiness.issue(101).controllerUrl, "https://lab.example:9443/agentlab");
  });
});

describe("guest readiness: the race against the guest agent", () => {
  const neverUntilAborted = (seen: { aborted: boolean }) => (signal: AbortSignal) =>
    new Promise<string>((_, reject) =>
      signal.addEventListener("abort", () => {
        seen.aborted = true;
        reject(signal.reason);
      }),
    );

  it("phone-home first: the address comes from the report and the agent poll is stopped", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    const seen = { aborted: false };
    const race = firstGuestAddress(readiness, 101, new AbortController().signal, neverUntilAborted(seen));
    await report(port, { vmid: 101, token, ip: "127.0.0.42" });
    assert.deepEqual(await race, { ip: "127.0.0.42", via: "phone-home" });
    assert.equal(seen.aborted, true);
    assert.equal(readiness.isWaiting(101), false);
  });

  it("with a grace period the agent is not asked at all when the guest phones home first", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    let agentCalls = 0;
    const race = firstGuestAddress(
      readiness,
      101,
      new AbortController().signal,
      async () => {
        agentCalls++;
        return "10.77.0.9";
      },
      { graceMs: 60_000 },
    );
    await report(port, { vmid: 101, token, ip: "127.0.0.42" });
    assert.deepEqual(await race, { ip: "127.0.0.42", via: "phone-home" });
    assert.equal(agentCalls, 0, "no guest agent call for a guest that phoned home");
  });

  it("guest agent first: its address wins and the unused token is revoked", async () => {
    const { port, readiness } = await rig();
    const { token } = readiness.issue(101);
    const result = await firstGuestAddress(
      readiness,
      101,
      new AbortController().signal,
      async () => "10.77.0.9",
    );
    assert.deepEqual(result, { ip: "10.77.0.9", via: "guest-agent" });
    assert.equal((await report(port, { vmid: 101, token })).status, 403);
  });

  it("an agent poll error (the deadline) ends the race; an abort ends it too", async () => {
    const { readiness } = await rig();
    readiness.issue(101);
    const deadline = new AgentlabError("PROVISIONING_FAILED", "the guest did not report an address");
    await assert.rejects(
      firstGuestAddress(readiness, 101, new AbortController().signal, async () => {
        throw deadline;
      }),
      deadline,
    );
    readiness.issue(102);
    const controller = new AbortController();
    const race = firstGuestAddress(readiness, 102, controller.signal, neverUntilAborted({ aborted: false }));
    controller.abort(new Error("user pressed Ctrl-C"));
    await assert.rejects(race, /user pressed Ctrl-C/);
  });

  it("without a token (or without readiness at all) only the guest agent is asked", async () => {
    const { readiness } = await rig();
    assert.deepEqual(
      await firstGuestAddress(readiness, 105, new AbortController().signal, async () => "10.77.0.7"),
      {
        ip: "10.77.0.7",
        via: "guest-agent",
      },
    );
    assert.deepEqual(
      await firstGuestAddress(undefined, 105, new AbortController().signal, async () => "10.77.0.7"),
      {
        ip: "10.77.0.7",
        via: "guest-agent",
      },
    );
  });
});

describe("rate limiter", () => {
  it("refills at qps up to burst and forgets quiet clients when many are tracked", () => {
    let t = 0;
    const limiter = new RateLimiter({ qps: 2, burst: 2 }, () => t);
    assert.deepEqual([limiter.allow("a"), limiter.allow("a"), limiter.allow("a")], [true, true, false]);
    t += 500;
    assert.deepEqual([limiter.allow("a"), limiter.allow("a")], [true, false]);
    t += 60_000;
    assert.deepEqual([limiter.allow("a"), limiter.allow("a"), limiter.allow("a")], [true, true, false]);
    for (let i = 0; i < 1100; i++) limiter.allow(`10.0.${i >> 8}.${i & 255}`);
    t += 60_000;
    limiter.allow("late");
    assert.ok(limiter.size < 100, `still tracking ${limiter.size}`);
    assert.throws(() => new RateLimiter({ qps: 0, burst: 1 }), /qps must be a positive number/);
    assert.throws(() => new RateLimiter({ qps: 1, burst: 0 }), /burst must be a whole number of at least 1/);
  });
});
