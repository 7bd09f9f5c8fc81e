import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { afterEach, beforeEach, describe, it } from "node:test";
import { hashReportToken, MAX_REPORT_MESSAGE, RunnerApi } from "../../src/daemon/services/jobs/runner-api.js";
import type { Job } from "../../src/daemon/store/jobs.js";
import { insertJob, JOB_ID, type JobRig, jobRig, recordingEffects } from "../helpers/job-rig.js";

const FETCH_SHAPE = '{"token": "<job_token from /etc/agentlab/bootstrap.json>", "vmid": <number>}';
const BAD_TOKEN = "invalid or expired bootstrap token";

let rig: JobRig;
let recorded: ReturnType<typeof recordingEffects>;
let api: RunnerApi;

beforeEach(() => {
  rig = jobRig({ controllerUrl: "http://10.77.0.1:8844/agentlab" });
  recorded = recordingEffects();
  api = new RunnerApi(rig.ctx, recorded.effects);
});
afterEach(() => rig.close());

const fetchBody = (token: unknown, vmid: unknown) => JSON.stringify({ token, vmid });
const jobRow = (id = JOB_ID): Job => {
  const job = rig.store.jobs.get(id);
  assert.ok(job, `job ${id} exists`);
  return job;
};
const reportEvents = (id = JOB_ID) => rig.store.events.listForJob(id).filter((e) => e.kind === "job.report");

/** A QUEUED job bound to `vmid` whose runner fetched it; returns the report token it got. */
function fetched(vmid = 101, id = JOB_ID): string {
  insertJob(rig.store, vmid, { id });
  const answer = api.fetch(fetchBody(rig.readiness.issueJobToken(vmid), vmid));
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return (answer.body as { report: { token: string } }).report.token;
}

const reportBody = (fields: Record<string, unknown>) =>
  JSON.stringify({ job_id: JOB_ID, vmid: 101, status: "RUNNING", message: "bootstrap fetched", ...fields });

describe("RunnerApi.fetch: refusals", () => {
  it("answers a malformed body with 400 saying what to send, and uses no token up", () => {
    insertJob(rig.store, 101);
    const token = rig.readiness.issueJobToken(101);
    const invalidJson = new RegExp(
      `^request body is not valid JSON \\(.+\\); expected ${FETCH_SHAPE.replace(/[{}()|[\]\\^$.*+?]/g, "\\$&")}$`,
    );
    for (const text of ["", "{token:", "not json"]) {
      const answer = api.fetch(text);
      assert.equal(answer.status, 400, text);
      assert.match(String(answer.body.error), invalidJson);
    }
    for (const text of ["[1,2]", "null", '"token"', "42"]) {
      assert.deepEqual(api.fetch(text), {
        status: 400,
        body: { error: `request body must be a JSON object: ${FETCH_SHAPE}` },
      });
    }
    for (const body of [{ vmid: 101 }, { token: "", vmid: 101 }, { token: 7, vmid: 101 }, { token: null }]) {
      assert.deepEqual(
        api.fetch(JSON.stringify(body)),
        { status: 400, body: { error: "token is required" } },
        JSON.stringify(body),
      );
    }
    for (const vmid of [0, -101, "101", 1.5, null, undefined, 2 ** 53]) {
      assert.deepEqual(
        api.fetch(fetchBody(token, vmid)),
        { status: 400, body: { error: "vmid must be positive" } },
        String(vmid),
      );
    }
    assert.equal(jobRow().report_token_hash, null);
    assert.equal(api.fetch(fetchBody(token, 101)).status, 200, "the token survived every bad request");
  });

  it("checks the token first: without it, no job and an ended job both look like a bad token (issue 16 item 9)", () => {
    rig.store.sandboxes.insert({ vmid: 202, name: "plain", profile: "p", state: "RUNNING" });
    insertJob(rig.store, 101);
    rig.store.jobs.end(JOB_ID, "FAILED", "provisioning failed");
    const refused = { status: 403, body: { error: BAD_TOKEN } };
    assert.deepEqual(api.fetch(fetchBody("0".repeat(32), 202)), refused, "no job");
    assert.deepEqual(api.fetch(fetchBody("0".repeat(32), 999)), refused, "no sandbox");
    assert.deepEqual(api.fetch(fetchBody("0".repeat(32), 101)), refused, "an ended job");
    // With the VMID's own token the answers say what is wrong, and do not spend the token.
    const token = rig.readiness.issueJobToken(202);
    assert.deepEqual(api.fetch(fetchBody(token, 202)), { status: 404, body: { error: "job not found" } });
    const ended = rig.readiness.issueJobToken(101);
    assert.deepEqual(api.fetch(fetchBody(ended, 101)), {
      status: 409,
      body: { error: "job already finalized" },
    });
    // Once a job is bound, the same token fetches it.
    insertJob(rig.store, 202, { id: "job_00000000000000bb" });
    assert.equal(api.fetch(fetchBody(token, 202)).status, 200);
  });

  it("refuses a wrong token, another VM's token and the ready token with 403; the ready token stays usable", () => {
    insertJob(rig.store, 101);
    insertJob(rig.store, 102, { id: "job_00000000000000bb" });
    const ready = rig.readiness.issue(101).token;
    const job = rig.readiness.issueJobToken(101);
    const other = rig.readiness.issueJobToken(102);
    for (const token of ["0".repeat(32), other, ready, job.toUpperCase(), "not-a-token", `${job}0`]) {
      assert.deepEqual(api.fetch(fetchBody(token, 101)), { status: 403, body: { error: BAD_TOKEN } }, token);
    }
    assert.equal(jobRow().report_token_hash, null, "a refused fetch hands out no report token");
    assert.equal(rig.store.events.listForJob(JOB_ID).length, 0);
    // Purpose separation works both ways: the ready report still takes the ready token, and the job
    // token still fetches once.
    assert.equal(rig.readiness.report(101, ready, "10.77.0.101"), true);
    assert.equal(api.fetch(fetchBody(job, 101)).status, 200);
    assert.equal(rig.readiness.report(101, job, "10.77.0.101"), false, "a job token is no ready token");
  });

  it("lets the job token fetch once: a second use is 403 and keeps the first report token", () => {
    insertJob(rig.store, 101);
    const token = rig.readiness.issueJobToken(101);
    const first = api.fetch(fetchBody(token, 101));
    assert.equal(first.status, 200);
    const hash = jobRow().report_token_hash;
    assert.deepEqual(api.fetch(fetchBody(token, 101)), { status: 403, body: { error: BAD_TOKEN } });
    assert.equal(jobRow().report_token_hash, hash);
  });

  it("refuses a job token 10 minutes after it was issued", () => {
    insertJob(rig.store, 101);
    insertJob(rig.store, 102, { id: "job_00000000000000bb" });
    const early = rig.readiness.issueJobToken(101);
    const late = rig.readiness.issueJobToken(102);
    rig.clock.t += 10 * 60_000 - 1;
    assert.equal(api.fetch(fetchBody(early, 101)).status, 200, "still valid a millisecond before");
    rig.clock.t += 1;
    assert.deepEqual(api.fetch(fetchBody(late, 102)), { status: 403, body: { error: BAD_TOKEN } });
    assert.equal(jobRow("job_00000000000000bb").report_token_hash, null);
  });

  it("honours only the newest job token of a VMID", () => {
    insertJob(rig.store, 101);
    const older = rig.readiness.issueJobToken(101);
    const newer = rig.readiness.issueJobToken(101);
    assert.equal(api.fetch(fetchBody(older, 101)).status, 403);
    assert.equal(api.fetch(fetchBody(newer, 101)).status, 200);
  });
});

describe("RunnerApi.fetch: the job", () => {
  it("answers 200 with the contract's shape and stores only the report token's SHA-256", () => {
    insertJob(rig.store, 101);
    const answer = api.fetch(fetchBody(rig.readiness.issueJobToken(101), 101));
    assert.equal(answer.status, 200);
    const report = answer.body.report as { token: string };
    assert.match(report.token, /^[0-9a-f]{64}$/);
    assert.deepEqual(answer.body, {
      job: {
        id: JOB_ID,
        repo_url: "git://10.77.0.1:9418/smoke.git",
        ref: "main",
        task: "write result.txt",
        mode: "dangerous",
        profile: "yolo-ephemeral",
        keepalive: false,
        ttl_minutes: 60,
      },
      report: { url: "http://10.77.0.1:8844/agentlab/v1/runner/report", token: report.token },
      log: { url: "http://10.77.0.1:8844/agentlab/v1/runner/log" },
      artifact: { url: "http://10.77.0.1:8844/agentlab/v1/runner/artifact" },
    });
    const job = jobRow();
    assert.equal(job.report_token_hash, createHash("sha256").update(report.token).digest("hex"));
    assert.equal(job.report_token_hash, hashReportToken(report.token));
    assert.equal(job.status, "QUEUED", "fetching does not start the job; its RUNNING report does");
    const raw = JSON.stringify(rig.store.db.prepare("SELECT * FROM jobs").all());
    assert.ok(!raw.includes(report.token), "the report token itself is not in the database");
    const events = rig.store.events.listForJob(JOB_ID);
    assert.deepEqual(
      events.map((e) => [e.kind, e.job_id, e.sandbox_vmid]),
      [["job.fetched", JOB_ID, 101]],
    );
  });

  it("gives each fetch its own report token", () => {
    fetched(101);
    fetched(102, "job_00000000000000bb");
    const a = jobRow().report_token_hash;
    const b = jobRow("job_00000000000000bb").report_token_hash;
    assert.ok(a && b && a !== b);
  });

  it("shows ttl_minutes null, keepalive and the newest job bound to the VMID", () => {
    insertJob(rig.store, 101, { id: "job_00000000000000a1" });
    rig.clock.t += 1000;
    insertJob(rig.store, 101, { id: "job_00000000000000a2", ttl_minutes: null, keepalive: true });
    const answer = api.fetch(fetchBody(rig.readiness.issueJobToken(101), 101));
    const job = answer.body.job as Record<string, unknown>;
    assert.equal(job.id, "job_00000000000000a2");
    assert.equal(job.ttl_minutes, null);
    assert.equal(job.keepalive, true);
  });

  it("points report.url at the listener's real port when the controller URL says port 0", () => {
    const local = jobRig({ controllerUrl: "http://127.0.0.1:0" });
    try {
      local.readiness.setListener({ address: "127.0.0.1:0", listening: true, url: "http://127.0.0.1:45123" });
      insertJob(local.store, 101);
      const answer = new RunnerApi(local.ctx, recordingEffects().effects).fetch(
        fetchBody(local.readiness.issueJobToken(101), 101),
      );
      assert.equal((answer.body.report as { url: string }).url, "http://127.0.0.1:45123/v1/runner/report");
    } finally {
      local.close();
    }
  });
});

describe("RunnerApi.report: refusals", () => {
  it("answers 401 missing bearer token before anything else", () => {
    fetched();
    for (const text of [reportBody({}), "garbage", ""]) {
      assert.deepEqual(api.report(text, undefined), {
        status: 401,
        body: { error: "missing bearer token" },
      });
    }
    assert.equal(jobRow().status, "QUEUED");
  });

  it("answers 403 invalid report token for a wrong token and for a job whose runner never fetched", () => {
    const token = fetched();
    insertJob(rig.store, 102, { id: "job_00000000000000bb" });
    const cases: Array<[string, string]> = [
      [reportBody({}), "f".repeat(64)],
      [reportBody({}), token.toUpperCase()],
      [reportBody({}), token.slice(0, 63)],
      [reportBody({}), "x"],
      [reportBody({ job_id: "job_00000000000000bb", vmid: 102 }), token],
      [reportBody({ job_id: "job_00000000000000bb", vmid: 102 }), "f".repeat(64)],
    ];
    for (const [body, bearer] of cases) {
      assert.deepEqual(
        api.report(body, bearer),
        { status: 403, body: { error: "invalid report token" } },
        `${body} with ${bearer}`,
      );
    }
    assert.equal(jobRow().status, "QUEUED");
    assert.equal(jobRow().result_json, null);
    assert.equal(jobRow("job_00000000000000bb").status, "QUEUED");
    assert.equal(reportEvents().length, 0);
    assert.deepEqual([recorded.started.length, recorded.ended.length], [0, 0]);
  });

  it("does not accept one job's report token for another job", () => {
    const a = fetched(101);
    const b = fetched(102, "job_00000000000000bb");
    assert.equal(api.report(reportBody({ job_id: "job_00000000000000bb", vmid: 102 }), a).status, 403);
    assert.equal(api.report(reportBody({ job_id: "job_00000000000000bb", vmid: 102 }), b).status, 200);
  });

  it("answers 400 for a bad body, naming the field, and changes nothing", () => {
    const token = fetched();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ status: "QUEUED" }, "invalid job status"],
      [{ status: "queued" }, "invalid job status"],
      [{ status: "DONE" }, "invalid job status"],
      [{ status: "" }, "invalid job status"],
      [{ status: 3 }, "invalid job status"],
      [{ status: undefined }, "invalid job status"],
      [{ job_id: undefined }, "job_id is required"],
      [{ job_id: "" }, "job_id is required"],
      [{ job_id: 42 }, "job_id is required"],
      [{ vmid: 0 }, "vmid must be positive"],
      [{ vmid: -101 }, "vmid must be positive"],
      [{ vmid: "101" }, "vmid must be positive"],
      [{ vmid: 101.5 }, "vmid must be positive"],
      [{ vmid: undefined }, "vmid must be positive"],
      [{ message: 7 }, "message must be a string"],
      [{ message: { text: "x" } }, "message must be a string"],
    ];
    for (const [fields, error] of cases) {
      assert.deepEqual(
        api.report(reportBody(fields), token),
        { status: 400, body: { error } },
        JSON.stringify(fields),
      );
    }
    const malformed = api.report('{"job_id": ', token);
    assert.equal(malformed.status, 400);
    assert.match(
      String(malformed.body.error),
      /^request body is not valid JSON \(.+\); expected \{"job_id": /,
    );
    assert.deepEqual(api.report("[]", token), {
      status: 400,
      body: {
        error:
          'request body must be a JSON object: {"job_id": "<id>", "vmid": <number>, "status": "RUNNING|COMPLETED|FAILED|TIMEOUT", "message": "<text>", "result": <any>}',
      },
    });
    assert.equal(jobRow().status, "QUEUED");
    assert.equal(jobRow().result_json, null);
    assert.equal(reportEvents().length, 0);
  });

  it("answers 404 job not found for an unknown job id", () => {
    const token = fetched();
    assert.deepEqual(api.report(reportBody({ job_id: "job_ffffffffffffffff" }), token), {
      status: 404,
      body: { error: "job not found" },
    });
  });

  it("answers 409 job sandbox mismatch when the VMID is not the job's sandbox", () => {
    const token = fetched(101);
    rig.store.sandboxes.insert({ vmid: 102, name: "other", profile: "p", state: "RUNNING" });
    for (const vmid of [102, 999]) {
      assert.deepEqual(api.report(reportBody({ vmid, status: "COMPLETED" }), token), {
        status: 409,
        body: { error: "job sandbox mismatch" },
      });
    }
    assert.equal(jobRow().status, "QUEUED");
    assert.equal(jobRow().result_json, null);
    assert.equal(reportEvents().length, 0);
    assert.equal(recorded.ended.length, 0);
  });
});

describe("RunnerApi.report: moving the job", () => {
  it("a RUNNING report moves QUEUED to RUNNING and calls started once", () => {
    const token = fetched();
    assert.deepEqual(api.report(reportBody({}), token), {
      status: 200,
      body: { job_status: "RUNNING", sandbox_status: "RUNNING" },
    });
    assert.equal(jobRow().status, "RUNNING");
    rig.clock.t += 2000;
    assert.equal(api.report(reportBody({ message: "repo ready" }), token).status, 200);
    assert.equal(recorded.started.length, 1);
    assert.equal(recorded.started[0]!.status, "RUNNING");
    assert.equal(recorded.started[0]!.id, JOB_ID);
    assert.equal(recorded.ended.length, 0);
    assert.deepEqual(JSON.parse(jobRow().result_json ?? "null"), {
      status: "RUNNING",
      message: "repo ready",
      reported_at: "2026-03-01T10:00:02.000Z",
    });
  });

  it("a job the daemon already marked RUNNING does not start again", () => {
    const token = fetched();
    rig.store.jobs.markRunning(JOB_ID);
    assert.equal(api.report(reportBody({}), token).status, 200);
    assert.equal(recorded.started.length, 0);
  });

  it("a terminal report stores {status, message, result, reported_at} and calls ended once", () => {
    const token = fetched();
    api.report(reportBody({}), token);
    rig.clock.t += 5 * 60_000;
    const result = { exit_code: 0, duration_seconds: 12, commit: "a".repeat(40), mode: "dangerous" };
    assert.deepEqual(
      api.report(reportBody({ status: "COMPLETED", message: "agent finished", result }), token),
      { status: 200, body: { job_status: "COMPLETED", sandbox_status: "RUNNING" } },
    );
    const job = jobRow();
    assert.equal(job.status, "COMPLETED");
    assert.equal(job.failure_reason, null);
    assert.deepEqual(JSON.parse(job.result_json ?? "null"), {
      status: "COMPLETED",
      message: "agent finished",
      result,
      reported_at: "2026-03-01T10:05:00.000Z",
    });
    assert.equal(recorded.ended.length, 1);
    assert.equal(recorded.ended[0]!.status, "COMPLETED");
    assert.equal(recorded.ended[0]!.result_json, job.result_json);
  });

  it("refuses every report after the end with 409 job already finalized and changes nothing", () => {
    const token = fetched();
    api.report(reportBody({ status: "FAILED", message: "clone failed", result: { exit_code: null } }), token);
    const before = jobRow();
    const events = rig.store.events.listForJob(JOB_ID).length;
    rig.clock.t += 60_000;
    for (const status of ["COMPLETED", "FAILED", "TIMEOUT", "RUNNING"]) {
      assert.deepEqual(api.report(reportBody({ status, message: "late" }), token), {
        status: 409,
        body: { error: "job already finalized" },
      });
    }
    assert.deepEqual(jobRow(), before);
    assert.equal(rig.store.events.listForJob(JOB_ID).length, events);
    assert.equal(recorded.ended.length, 1);
  });

  it("refuses a report for a job the daemon ended (e.g. its sandbox was destroyed)", () => {
    const token = fetched();
    rig.store.jobs.end(JOB_ID, "FAILED", "sandbox 101 was destroyed");
    assert.deepEqual(api.report(reportBody({ status: "COMPLETED" }), token), {
      status: 409,
      body: { error: "job already finalized" },
    });
    assert.equal(jobRow().status, "FAILED");
    assert.equal(jobRow().result_json, null);
    assert.equal(jobRow().failure_reason, "sandbox 101 was destroyed");
  });

  it("takes the status in any case", () => {
    const token = fetched();
    assert.equal(api.report(reportBody({ status: "running" }), token).body.job_status, "RUNNING");
    assert.equal(api.report(reportBody({ status: "Timeout" }), token).body.job_status, "TIMEOUT");
    assert.equal(jobRow().status, "TIMEOUT");
    assert.equal(JSON.parse(jobRow().result_json ?? "{}").status, "TIMEOUT");
  });

  it("cuts messages longer than 8192 characters, in the stored result and in the event", () => {
    const token = fetched();
    assert.equal(MAX_REPORT_MESSAGE, 8192);
    const exact = "e".repeat(8192);
    api.report(reportBody({ message: exact }), token);
    assert.equal(JSON.parse(jobRow().result_json ?? "{}").message, exact);
    const long = `${"m".repeat(8192)}TAIL`;
    api.report(reportBody({ message: long }), token);
    assert.equal(JSON.parse(jobRow().result_json ?? "{}").message, "m".repeat(8192));
    const last = reportEvents().at(-1)!;
    assert.equal(last.payload?.message, "m".repeat(8192));
    assert.equal(last.msg, `RUNNING: ${"m".repeat(8192)}`);
  });

  it("records job.report events with the job id and the VMID, and leaves out what was not sent", () => {
    const token = fetched();
    api.report(reportBody({ message: "bootstrap fetched" }), token);
    api.report(JSON.stringify({ job_id: JOB_ID, vmid: 101, status: "COMPLETED" }), token);
    const events = reportEvents();
    assert.deepEqual(
      events.map((e) => ({ job_id: e.job_id, vmid: e.sandbox_vmid, msg: e.msg, payload: e.payload })),
      [
        {
          job_id: JOB_ID,
          vmid: 101,
          msg: "RUNNING: bootstrap fetched",
          payload: { status: "RUNNING", message: "bootstrap fetched" },
        },
        { job_id: JOB_ID, vmid: 101, msg: "COMPLETED", payload: { status: "COMPLETED" } },
      ],
    );
    assert.deepEqual(JSON.parse(jobRow().result_json ?? "null"), {
      status: "COMPLETED",
      reported_at: "2026-03-01T10:00:00.000Z",
    });
  });

  it("answers with the sandbox's current state", () => {
    const token = fetched();
    rig.store.sandboxes.update(101, { state: "READY" });
    assert.deepEqual(api.report(reportBody({}), token).body, {
      job_status: "RUNNING",
      sandbox_status: "READY",
    });
  });
});

describe("RunnerApi.fetch: ended jobs and failed writes", () => {
  it("does not hand out a job that has already ended, so its runner never starts the agent", () => {
    insertJob(rig.store, 101);
    const token = rig.readiness.issueJobToken(101);
    rig.store.jobs.end(JOB_ID, "FAILED", "could not provision the job's sandbox: network binding failed");
    assert.deepEqual(api.fetch(fetchBody(token, 101)), {
      status: 409,
      body: { error: "job already finalized" },
    });
    assert.equal(jobRow().report_token_hash, null);
  });

  it("a fetch that fails after checking the token leaves the token for the runner's retry", () => {
    insertJob(rig.store, 101);
    const token = rig.readiness.issueJobToken(101);
    // A real SQLite failure at the write of the report token (as SQLITE_BUSY or a full disk would be).
    rig.store.db.exec(
      "CREATE TEMP TRIGGER fail_hash BEFORE UPDATE OF report_token_hash ON main.jobs " +
        "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END",
    );
    assert.throws(() => api.fetch(fetchBody(token, 101)), /simulated write failure/);
    rig.store.db.exec("DROP TRIGGER fail_hash");
    // The listener answered that failure with 500, which the runner retries with the same token.
    assert.equal(api.fetch(fetchBody(token, 101)).status, 200);
  });
});
