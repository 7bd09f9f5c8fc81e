import assert from "node:assert/strict";
import http from "node:http";
import { after, describe, it } from "node:test";
import { pino } from "pino";
import {
  bearerToken,
  type GuestAnswer,
  type GuestJobEndpoints,
  GuestListener,
  type GuestListenerOptions,
  JOB_FETCH_PATH,
  MAX_BODY_BYTES,
  RUNNER_REPORT_PATH,
  RUNNER_REPORT_RATE_LIMIT,
} from "../../src/daemon/guest/listener.js";
import { RunnerApi } from "../../src/daemon/services/jobs/runner-api.js";
import { insertJob, JOB_ID, type JobRig, jobRig, recordingEffects } from "../helpers/job-rig.js";

const log = pino({ level: "silent" });
const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Call {
  kind: "fetch" | "report";
  body: string;
  bearer: string | undefined;
}

/** GuestJobEndpoints that record what the listener hands them and answer with `answer`. */
function fakeJobs(answer: (call: Call) => Promise<GuestAnswer> | GuestAnswer = () => ok) {
  const calls: Call[] = [];
  const endpoints: GuestJobEndpoints = {
    fetch(body) {
      const call: Call = { kind: "fetch", body, bearer: undefined };
      calls.push(call);
      return answer(call);
    },
    report(body, bearer) {
      const call: Call = { kind: "report", body, bearer };
      calls.push(call);
      return answer(call);
    },
  };
  return { calls, endpoints };
}
const ok: GuestAnswer = { status: 200, body: { ok: true } };

interface Rig {
  job: JobRig;
  listener: GuestListener;
  port: number;
  /** The rate limiter's clock, epoch ms. */
  rate: { t: number };
}

/** A real listener on 127.0.0.1 (free port) over a real store, with `jobs` endpoints when given. */
async function rig(options: Partial<GuestListenerOptions> = {}): Promise<Rig> {
  const job = jobRig({ controllerUrl: "http://127.0.0.1:0" });
  const rate = { t: 5_000_000 };
  const listener = new GuestListener({
    listen: "127.0.0.1:0",
    agentSubnet: "127.0.0.0/8",
    readiness: job.readiness,
    log,
    rateLimit: { qps: 1, burst: 100 },
    now: () => rate.t,
    ...options,
  });
  const state = await listener.start();
  assert.equal(state.listening, true, state.error);
  cleanups.push(async () => {
    await listener.close();
    job.close();
  });
  return { job, listener, port: Number(new URL(state.url!).port), rate };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  json: Record<string, unknown> | undefined;
}

function post(
  port: number,
  path: string,
  opts: { body?: string | Buffer; method?: string; headers?: Record<string, string>; from?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: opts.method ?? "POST",
        agent: false,
        ...(opts.from ? { localAddress: opts.from } : {}),
        headers: { "Content-Type": "application/json", ...opts.headers },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let json: Record<string, unknown> | undefined;
          try {
            json = JSON.parse(text) as Record<string, unknown>;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, json });
        });
      },
    );
    req.on("error", reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

describe("guest listener with jobs: routing", () => {
  it("hands the body to fetch and the body and bearer token to report, and passes their answer back", async () => {
    const fake = fakeJobs((call) =>
      call.kind === "fetch"
        ? { status: 201, body: { seen: "fetch" } }
        : Promise.resolve({ status: 409, body: { error: "job already finalized" } }),
    );
    const { port } = await rig({ jobs: fake.endpoints });
    const fetched = await post(port, JOB_FETCH_PATH, { body: '{"token":"t","vmid":1}' });
    assert.equal(fetched.status, 201);
    assert.deepEqual(fetched.json, { seen: "fetch" });
    assert.equal(fetched.headers["content-type"], "application/json");
    assert.equal(fetched.headers["cache-control"], "no-store");
    const reported = await post(port, `${RUNNER_REPORT_PATH}?attempt=2`, {
      body: '{"status":"RUNNING"}',
      headers: { Authorization: "Bearer abc123" },
    });
    assert.equal(reported.status, 409);
    assert.deepEqual(reported.json, { error: "job already finalized" });
    assert.deepEqual(fake.calls, [
      { kind: "fetch", body: '{"token":"t","vmid":1}', bearer: undefined },
      { kind: "report", body: '{"status":"RUNNING"}', bearer: "abc123" },
    ]);
  });

  it("refuses other methods than POST with 405 and Allow: POST, without calling the endpoints", async () => {
    const fake = fakeJobs();
    const { port } = await rig({ jobs: fake.endpoints });
    for (const path of [JOB_FETCH_PATH, RUNNER_REPORT_PATH]) {
      for (const method of ["GET", "PUT", "DELETE"]) {
        const reply = await post(port, path, { method });
        assert.equal(reply.status, 405, `${method} ${path}`);
        assert.equal(reply.headers.allow, "POST");
        assert.deepEqual(reply.json, { error: "method not allowed; use POST" });
      }
    }
    assert.deepEqual(fake.calls, []);
  });

  it("refuses sources outside agent_subnet with 403 before the rate limit and the endpoints", async () => {
    const fake = fakeJobs();
    const { port } = await rig({
      jobs: fake.endpoints,
      agentSubnet: "10.77.0.0/16",
      rateLimit: { qps: 1, burst: 1 },
    });
    for (let i = 0; i < 3; i++) {
      for (const path of [JOB_FETCH_PATH, RUNNER_REPORT_PATH]) {
        const reply = await post(port, path, { body: "{}", headers: { Authorization: "Bearer x" } });
        assert.equal(reply.status, 403, path);
        assert.deepEqual(reply.json, { error: "bootstrap access restricted to agent subnet" });
      }
    }
    assert.deepEqual(fake.calls, []);
  });

  it("without the jobs option both paths are unknown: 404", async () => {
    const { port } = await rig();
    for (const path of [JOB_FETCH_PATH, RUNNER_REPORT_PATH]) {
      const reply = await post(port, path, { body: "{}" });
      assert.equal(reply.status, 404);
      assert.deepEqual(reply.json, { error: `no such endpoint: POST ${path}` });
    }
  });

  it("answers an oversized body with 400 itself and a throwing endpoint with 500, and keeps serving", async () => {
    const fake = fakeJobs((call) => {
      if (call.body === "boom") throw new Error("endpoint bug");
      return ok;
    });
    const { port } = await rig({ jobs: fake.endpoints });
    const big = await post(port, RUNNER_REPORT_PATH, { body: Buffer.alloc(MAX_BODY_BYTES + 1, 0x20) });
    assert.equal(big.status, 400);
    assert.deepEqual(big.json, { error: `request body too large (limit ${MAX_BODY_BYTES} bytes)` });
    assert.deepEqual(fake.calls, []);
    const crashed = await post(port, JOB_FETCH_PATH, { body: "boom" });
    assert.equal(crashed.status, 500);
    assert.deepEqual(crashed.json, { error: "internal error; see the agentlabd log" });
    assert.equal((await post(port, JOB_FETCH_PATH, { body: "{}" })).status, 200);
  });
});

describe("guest listener with jobs: the bearer token", () => {
  it("takes the token of `Bearer <token>` in any case of the scheme, else passes undefined", async () => {
    const fake = fakeJobs();
    const { port } = await rig({ jobs: fake.endpoints });
    const cases: Array<[Record<string, string>, string | undefined]> = [
      [{ Authorization: "Bearer x" }, "x"],
      [{ Authorization: "bearer tok-1" }, "tok-1"],
      [{ Authorization: "BEARER tok-2" }, "tok-2"],
      [{ Authorization: "Bearer    spaced" }, "spaced"],
      [{}, undefined],
      [{ Authorization: "" }, undefined],
      [{ Authorization: "Bearer" }, undefined],
      [{ Authorization: "Basic dXNlcjpwYXNz" }, undefined],
      [{ Authorization: "Bearer two tokens" }, undefined],
      [{ Authorization: "tok-3" }, undefined],
    ];
    for (const [headers] of cases) {
      assert.equal((await post(port, RUNNER_REPORT_PATH, { body: "{}", headers })).status, 200);
    }
    assert.deepEqual(
      fake.calls.map((c) => c.bearer),
      cases.map(([, bearer]) => bearer),
    );
  });

  it("bearerToken parses the header value the same way", () => {
    assert.equal(bearerToken("Bearer abc"), "abc");
    assert.equal(bearerToken("bEaReR abc "), "abc");
    assert.equal(bearerToken(undefined), undefined);
    assert.equal(bearerToken("Bearer "), undefined);
    assert.equal(bearerToken("Token abc"), undefined);
  });
});

describe("guest listener with jobs: rate limits", () => {
  it("gives reports their own bucket: a burst of reports passes while the fetch bucket is empty", async () => {
    const fake = fakeJobs();
    const { port, rate } = await rig({ jobs: fake.endpoints, rateLimit: { qps: 1, burst: 3 } });
    assert.deepEqual(RUNNER_REPORT_RATE_LIMIT, { qps: 5, burst: 10 });
    const fetches: number[] = [];
    for (let i = 0; i < 4; i++) fetches.push((await post(port, JOB_FETCH_PATH, { body: "{}" })).status);
    assert.deepEqual(fetches, [200, 200, 200, 429]);
    const limited = await post(port, JOB_FETCH_PATH, { body: "{}" });
    assert.equal(limited.status, 429);
    assert.deepEqual(limited.json, { error: "rate limit exceeded" });
    assert.equal(limited.headers["retry-after"], "1");

    const reports: number[] = [];
    for (let i = 0; i < RUNNER_REPORT_RATE_LIMIT.burst; i++) {
      reports.push((await post(port, RUNNER_REPORT_PATH, { body: "{}" })).status);
    }
    assert.deepEqual(
      reports,
      reports.map(() => 200),
    );
    const over = await post(port, RUNNER_REPORT_PATH, { body: "{}" });
    assert.equal(over.status, 429);
    assert.equal(over.headers["retry-after"], "1");
    assert.equal(fake.calls.length, 3 + RUNNER_REPORT_RATE_LIMIT.burst);

    // Reports refill at their own 5 per second, the fetch bucket at 1.
    rate.t += 1000;
    const refilled: number[] = [];
    for (let i = 0; i < 6; i++) refilled.push((await post(port, RUNNER_REPORT_PATH, { body: "{}" })).status);
    assert.deepEqual(refilled, [200, 200, 200, 200, 200, 429]);
    assert.deepEqual(
      [(await post(port, JOB_FETCH_PATH, { body: "{}" })).status, (await post(port, JOB_FETCH_PATH)).status],
      [200, 429],
    );
  });

  it("one VMID and one credential have their own buckets, whatever address they come from (issue 16 item 9)", async () => {
    const fake = fakeJobs();
    const { port } = await rig({ jobs: fake.endpoints, rateLimit: { qps: 1, burst: 2 } });
    // Fetches for VMID 101 from three addresses: the third is over the VMID's bucket...
    const fetch101 = (from: string) =>
      post(port, JOB_FETCH_PATH, { body: JSON.stringify({ vmid: 101, token: "x" }), from });
    const statuses = [
      (await fetch101("127.0.0.2")).status,
      (await fetch101("127.0.0.3")).status,
      (await fetch101("127.0.0.4")).status,
    ];
    assert.deepEqual(statuses, [200, 200, 429]);
    // ...while another VMID from a fresh address still gets through.
    const other = await post(port, JOB_FETCH_PATH, {
      body: JSON.stringify({ vmid: 102, token: "x" }),
      from: "127.0.0.5",
    });
    assert.equal(other.status, 200);
    // One report token from many addresses: limited by the token's own bucket (reports: burst 10).
    const headers = { Authorization: "Bearer r".padEnd(40, "0") };
    const reports: number[] = [];
    for (let i = 0; i <= RUNNER_REPORT_RATE_LIMIT.burst; i++) {
      reports.push(
        (await post(port, RUNNER_REPORT_PATH, { body: "{}", headers, from: `127.0.1.${i + 1}` })).status,
      );
    }
    assert.deepEqual(reports.slice(-2), [200, 429]);
    assert.equal(reports.filter((code) => code === 200).length, RUNNER_REPORT_RATE_LIMIT.burst);
  });

  it("reports do not use up the fetch bucket of the same guest", async () => {
    const fake = fakeJobs();
    const { port } = await rig({ jobs: fake.endpoints, rateLimit: { qps: 1, burst: 1 } });
    for (let i = 0; i < 5; i++) {
      assert.equal((await post(port, RUNNER_REPORT_PATH, { body: "{}", from: "127.0.0.2" })).status, 200);
    }
    assert.equal((await post(port, JOB_FETCH_PATH, { body: "{}", from: "127.0.0.2" })).status, 200);
  });
});

describe("guest listener with the real runner endpoints", () => {
  it("fetch, then reports to the URL the fetch gave, with the bearer token from the header", async () => {
    const job = jobRig({ controllerUrl: "http://127.0.0.1:0" });
    const recorded = recordingEffects();
    const api = new RunnerApi(job.ctx, recorded.effects);
    const listener = new GuestListener({
      listen: "127.0.0.1:0",
      agentSubnet: "127.0.0.0/8",
      readiness: job.readiness,
      log,
      jobs: { fetch: (body) => api.fetch(body), report: (body, bearer) => api.report(body, bearer) },
    });
    const state = await listener.start();
    cleanups.push(async () => {
      await listener.close();
      job.close();
    });
    const port = Number(new URL(state.url!).port);
    insertJob(job.store, 101);
    const token = job.readiness.issueJobToken(101);

    const fetched = await post(port, JOB_FETCH_PATH, { body: JSON.stringify({ token, vmid: 101 }) });
    assert.equal(fetched.status, 200);
    const report = fetched.json?.report as { url: string; token: string };
    assert.equal(report.url, `http://127.0.0.1:${port}${RUNNER_REPORT_PATH}`);
    const again = await post(port, JOB_FETCH_PATH, { body: JSON.stringify({ token, vmid: 101 }) });
    assert.equal(again.status, 403);
    assert.deepEqual(again.json, { error: "invalid or expired bootstrap token" });

    const body = JSON.stringify({
      job_id: JOB_ID,
      vmid: 101,
      status: "completed",
      message: "agent finished",
    });
    const bare = await post(port, new URL(report.url).pathname, { body });
    assert.equal(bare.status, 401);
    assert.deepEqual(bare.json, { error: "missing bearer token" });
    const done = await post(port, new URL(report.url).pathname, {
      body,
      headers: { Authorization: `bearer ${report.token}` },
    });
    assert.equal(done.status, 200);
    assert.deepEqual(done.json, { job_status: "COMPLETED", sandbox_status: "RUNNING" });
    assert.equal(job.store.jobs.get(JOB_ID)?.status, "COMPLETED");
    assert.equal(recorded.ended.length, 1);
  });
});
