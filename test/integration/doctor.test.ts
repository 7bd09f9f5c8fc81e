import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { REDACTED, redact } from "../../src/daemon/services/doctor.js";
import { toDbTime } from "../../src/daemon/store/time.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, runTool, setControl } from "../pvesim/harness.js";

/**
 * Doctor bundles through the real CLI and daemon on the simulator: the archive is unpacked with the real
 * tar(1), and the troubleshooting guide's `--out` forms (file, existing directory, `dir/`, none) are
 * exercised as written there.
 */

interface Meta {
  version: number;
  kind: string;
  id: string;
  related: { sandbox_vmid?: number; job_id?: string; session_id?: string; workspace_id?: string };
  errors?: Array<{ section: string; error: string }>;
}
interface Proxmox {
  vmid?: number;
  status?: { state: string };
  status_error?: string;
  config?: Record<string, string | number>;
  config_error?: string;
}
interface ErrorBody {
  code: string;
  message: string;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

describe("doctor bundles (shell backend)", () => {
  let h: SimHost;
  let root: string;
  let vmid: number;
  let n = 0;

  /** Unpack a bundle with the real tar and return its top directory and a JSON reader. */
  const unpack = (archive: string) => {
    const dir = join(root, `x${++n}`);
    mkdirSync(dir);
    execFileSync("tar", ["-xzf", archive, "-C", dir]);
    const [top, ...more] = readdirSync(dir);
    assert.equal(more.length, 0, "one top directory");
    const read = <T>(path: string): T => JSON.parse(readFileSync(join(dir, top!, path), "utf8")) as T;
    const has = (path: string) => existsSync(join(dir, top!, path));
    return { top: top!, read, has };
  };

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "doctor-it-"));
    h = await startSimHost("shell", "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n");
    await setControl(h.sim.dir, FAST_KNOBS);
    const created = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(created.code, 0, created.stderr);
    vmid = created.body.vmid;
  });
  after(async () => {
    await h.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test("sandbox doctor --out FILE: records, events and live Proxmox view, 0600, one line printed", async () => {
    // Credentials an operator set by hand in the VM config must not reach the bundle.
    const set = await runTool(h.sim, "qm", ["set", String(vmid), "--cipassword", "hunter2-doctor"]);
    assert.equal(set.code, 0, set.stderr);
    const out = join(root, "sb.tar.gz");
    const result = await h.cli(["sandbox", "doctor", String(vmid), "--out", out]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `doctor bundle saved to ${out}\n`);
    assert.equal(statSync(out).mode & 0o777, 0o600, "a bundle describes a host: its owner only");

    const b = unpack(out);
    assert.equal(b.top, `agentlab-doctor-sandbox-${vmid}`);
    const meta = b.read<Meta>("meta.json");
    assert.deepEqual(meta, {
      version: 1,
      kind: "sandbox",
      id: String(vmid),
      related: { sandbox_vmid: vmid },
    });
    const shown = await h.json<{ state: string }>(["sandbox", "show", String(vmid)]);
    const record = b.read<{ vmid: number; state: string }>("records/sandbox.json");
    assert.equal(record.vmid, vmid);
    assert.equal(record.state, shown.body.state);
    const events = b.read<{ events: Array<{ id: number; kind: string }>; last_id: number }>(
      "events/sandbox.json",
    );
    assert.ok(events.events.length > 0, "the sandbox's events are there");
    assert.equal(events.last_id, events.events.at(-1)!.id);
    const proxmox = b.read<Proxmox>("proxmox.json");
    assert.equal(proxmox.vmid, vmid);
    assert.equal(proxmox.status?.state, "running");
    const keys = Object.keys(proxmox.config ?? {});
    assert.ok(keys.length > 3, "the VM config is there");
    assert.deepEqual(keys, [...keys].sort(), "config keys sorted");
    assert.equal(proxmox.config?.cipassword, REDACTED);
    // No job, session or workspace: none of their files.
    assert.equal(b.has("records/job.json"), false);
    assert.equal(b.has("records/workspace.json"), false);
    // The pretty JSON form every file has.
    assert.match(
      readFileSync(join(root, `x${n}`, b.top, "meta.json"), "utf8"),
      /^\{\n {2}"version": 1,[\s\S]*\}\n$/,
    );
  });

  test("--out DIR, --out new-dir/ (created 0750), no --out (CWD) and --json", async () => {
    const name = `agentlab-doctor-sandbox-${vmid}.tar.gz`;
    const existing = join(root, "existing");
    mkdirSync(existing);
    const intoDir = await h.cli(["sandbox", "doctor", String(vmid), "--out", existing]);
    assert.equal(intoDir.code, 0, intoDir.stderr);
    assert.equal(intoDir.stdout, `doctor bundle saved to ${join(existing, name)}\n`);
    assert.ok(statSync(join(existing, name)).isFile());

    const fresh = join(root, "new-dir");
    const intoNew = await h.json<{ kind: string; id: string; out: string }>([
      "sandbox",
      "doctor",
      String(vmid),
      "--out",
      `${fresh}/`,
    ]);
    assert.equal(intoNew.code, 0, intoNew.stderr);
    assert.deepEqual(intoNew.body, { kind: "sandbox", id: String(vmid), out: join(fresh, name) });
    assert.equal(statSync(fresh).mode & 0o777, 0o750);
    assert.equal(unpack(join(fresh, name)).read<Meta>("meta.json").id, String(vmid));

    const cwd = join(root, "cwd");
    mkdirSync(cwd);
    const code = await new Promise<number | null>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [AGENTLAB_BIN, "--socket", h.host.socketPath, "sandbox", "doctor", String(vmid)],
        { cwd, stdio: "ignore", env: { ...process.env, AGENTLAB_SOCKET: "" } },
      );
      child.on("error", reject);
      child.on("close", resolve);
    });
    assert.equal(code, 0);
    assert.deepEqual(readdirSync(cwd), [name]);
  });

  test("an unknown sandbox: exit 1, SANDBOX_NOT_FOUND, nothing written", async () => {
    const dir = join(root, "nothing");
    mkdirSync(dir);
    const result = await h.json<ErrorBody>(["sandbox", "doctor", "99999", "--out", dir]);
    assert.equal(result.code, 1);
    assert.equal(result.body.code, "SANDBOX_NOT_FOUND");
    assert.equal(result.body.message, "sandbox not found: 99999");
    assert.deepEqual(readdirSync(dir), []);
    const job = await h.json<ErrorBody>(["job", "doctor", "job_0000000000000000", "--out", dir]);
    assert.equal(job.body.code, "JOB_NOT_FOUND");
    const session = await h.json<ErrorBody>(["session", "doctor", "nope", "--out", dir]);
    assert.equal(session.body.code, "SESSION_NOT_FOUND");
    assert.deepEqual(readdirSync(dir), []);
  });

  test("session doctor: the workspace and current sandbox; once stopped, no current sandbox", async () => {
    const created = await h.json<{
      session: { id: string };
      workspace: { id: string };
      sandbox: { vmid: number };
    }>([
      "session",
      "create",
      "--name",
      "dr1",
      "--profile",
      "yolo-workspace",
      "--workspace-create",
      "dr1ws",
      "--workspace-size",
      "1G",
    ]);
    assert.equal(created.code, 0, created.stderr);
    const { session, workspace, sandbox } = created.body;

    const out = join(root, "s1.tar.gz");
    assert.equal((await h.cli(["session", "doctor", "dr1", "--out", out])).code, 0);
    const b = unpack(out);
    assert.equal(b.top, `agentlab-doctor-session-${session.id.replaceAll("_", "-")}`);
    const meta = b.read<Meta>("meta.json");
    assert.equal(meta.kind, "session");
    assert.equal(meta.id, session.id);
    assert.deepEqual(meta.related, {
      session_id: session.id,
      workspace_id: workspace.id,
      sandbox_vmid: sandbox.vmid,
    });
    assert.equal(meta.errors, undefined);
    assert.equal(b.read<{ name: string; state: string }>("records/session.json").name, "dr1");
    assert.equal(b.read<{ name: string }>("records/workspace.json").name, "dr1ws");
    assert.equal(b.read<{ vmid: number }>("records/sandbox.json").vmid, sandbox.vmid);
    assert.equal(b.read<Proxmox>("proxmox.json").status?.state, "running");

    assert.equal((await h.cli(["session", "stop", "dr1"])).code, 0);
    const stoppedOut = join(root, "s2.tar.gz");
    assert.equal((await h.cli(["session", "doctor", session.id, "--out", stoppedOut])).code, 0);
    const s = unpack(stoppedOut);
    assert.equal(s.read<{ state: string }>("records/session.json").state, "stopped");
    assert.equal(s.has("records/sandbox.json"), false);
    assert.deepEqual(s.read<Proxmox>("proxmox.json"), {
      status_error: "session has no current sandbox",
      config_error: "session has no current sandbox",
    });
  });

  test("job doctor: a job whose provisioning failed shows its sandbox and the VM that is not there", async () => {
    await setControl(h.sim.dir, {}, ["fail_clone=no space left on the storage"]);
    let jobId = "";
    try {
      const run = await h.json<{ id: string }>([
        "job",
        "run",
        "--repo",
        "git://127.0.0.1/nothing.git",
        "--task",
        "x",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(run.code, 0, run.stderr);
      jobId = run.body.id;
      await until("the job to fail", async () => {
        const job = await h.json<{ status: string }>(["job", "show", jobId]);
        return job.body.status === "FAILED" ? true : undefined;
      });
    } finally {
      await clearFaults(h.sim.dir);
    }
    const dir = join(root, "jobs/");
    const result = await h.json<{ out: string }>(["job", "doctor", jobId, "--out", dir]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.body.out, join(dir, `agentlab-doctor-job-${jobId.replaceAll("_", "-")}.tar.gz`));
    const b = unpack(result.body.out);
    const meta = b.read<Meta>("meta.json");
    assert.equal(meta.kind, "job");
    assert.equal(meta.related.job_id, jobId);
    const job = b.read<{ status: string; sandbox_vmid?: number }>("records/job.json");
    assert.equal(job.status, "FAILED");
    assert.equal(typeof job.sandbox_vmid, "number");
    assert.equal(meta.related.sandbox_vmid, job.sandbox_vmid);
    assert.equal(b.read<{ vmid: number }>("records/sandbox.json").vmid, job.sandbox_vmid);
    assert.ok(b.read<{ events: unknown[] }>("events/job.json").events.length > 0);
    const proxmox = b.read<Proxmox>("proxmox.json");
    assert.equal(proxmox.vmid, job.sandbox_vmid);
    assert.ok(proxmox.status_error, "the VM was never created: status is an error");
    assert.ok(proxmox.config_error, "and so is config");
  });

  test("job doctor: a job without a VM, with a secret in its failure reason", async () => {
    const id = "job_00000000000000d0";
    const now = toDbTime(new Date());
    const db = new Database(h.host.dbPath);
    try {
      db.prepare(
        `INSERT INTO jobs (id, repo_url, ref, profile, status, keepalive, failure_reason, created_at, updated_at)
         VALUES (?, 'git://example.invalid/r.git', 'main', 'yolo-ephemeral', 'FAILED', 0, ?, ?, ?)`,
      ).run(id, "clone failed: GITHUB_TOKEN=ghp_doctorsecret123 rejected", now, now);
    } finally {
      db.close();
    }
    const out = join(root, "nojob.tar.gz");
    assert.equal((await h.cli(["job", "doctor", id, "--out", out])).code, 0);
    const b = unpack(out);
    assert.deepEqual(b.read<Meta>("meta.json").related, { job_id: id });
    assert.deepEqual(b.read<Proxmox>("proxmox.json"), {
      status_error: "sandbox_vmid is not set",
      config_error: "sandbox_vmid is not set",
    });
    assert.equal(
      b.read<{ failure_reason: string }>("records/job.json").failure_reason,
      `clone failed: GITHUB_TOKEN=${REDACTED} rejected`,
    );
    assert.equal(b.has("records/sandbox.json"), false);
  });
});

describe("doctor redaction", () => {
  test("secret keys and key=value / key: value forms in text are replaced", () => {
    assert.deepEqual(
      redact({
        cipassword: "$5$hash",
        SSHKEYS: "ssh-ed25519%20AAAA",
        nested: [{ bootstrap_token: "abc", name: "ok" }],
        msg: `env OPENAI_API_KEY='sk-1' token: tk2 {"access_token": "at3"} keep=this`,
        n: 3,
      }),
      {
        cipassword: REDACTED,
        SSHKEYS: REDACTED,
        nested: [{ bootstrap_token: REDACTED, name: "ok" }],
        msg: `env OPENAI_API_KEY='${REDACTED}' token: ${REDACTED} {"access_token": "${REDACTED}"} keep=this`,
        n: 3,
      },
    );
  });
});
