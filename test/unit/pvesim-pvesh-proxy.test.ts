/**
 * The simulator's pvesh on a two-node cluster behaves like pvesh's SSH proxy (pve-manager
 * PVE/CLI/pvesh.pm:86-144): what it prints for a call that another node runs.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createSim, inspect, runTool, type Sim, setControl } from "../pvesim/harness.js";
import { proxiedOutcome, runCommandLines } from "../pvesim/pvesh-proxy.js";

const UPID_LINE = /^UPID:pve2:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:qmclone:9001:root@pam:$/;

describe("pvesim pvesh: proxying to another node", () => {
  let sim: Sim;
  const onPve = { PVESIM_NODE: "pve" };
  const pvesh = (args: string[], env: NodeJS.ProcessEnv = onPve) => runTool(sim, "pvesh", args, env);
  /** A linked clone of pve2's template 9001, asked from pve unless `env` says otherwise. */
  const cloneOnPve2 = (newid: number, env?: NodeJS.ProcessEnv) =>
    pvesh(
      ["create", "/nodes/pve2/qemu/9001/clone", "--newid", String(newid), "--output-format", "json"],
      env,
    );
  before(async () => {
    sim = createSim({ nodes: ["pve", "pve2"], knobs: { clone_ms: 20, task_ms: 10, fail_ms: 10 } });
  });
  after(() => sim.cleanup());

  test("a worker's log and JSON-quoted UPID come back as one JSON string, not as lines", async () => {
    const r = await cloneOnPve2(101);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split("\n").length, 2, "one line and its newline");
    const data = JSON.parse(r.stdout) as string;
    assert.equal(typeof data, "string");
    const m = /^create linked clone of drive scsi0 \(local-zfs:base-9001-disk-0\)(.*)"(UPID:[^"]+)"$/.exec(
      data,
    );
    assert.ok(m, data);
    assert.match(m[2]!, UPID_LINE);
    // The same call made on pve2 itself prints the log lines and then the bare UPID as its last line.
    const local = await cloneOnPve2(102, { PVESIM_NODE: "pve2" });
    const lines = local.stdout.trimEnd().split("\n");
    assert.ok(lines.length > 1, local.stdout);
    assert.match(JSON.parse(lines.at(-1)!) as string, /^UPID:pve2:/);
  });

  test("a task that fails on the other node: exit 0, its error on stderr, the UPID inside the string", async () => {
    await setControl(sim.dir, {}, ["fail_clone=clone failed: zfs error: out of space"]);
    const r = await cloneOnPve2(103);
    assert.equal(r.code, 0);
    assert.equal(r.stderr, "clone failed: zfs error: out of space\n");
    const data = JSON.parse(r.stdout) as string;
    assert.match(data, /"UPID:pve2:[^"]+:qmclone:9001:root@pam:"$/);
  });

  test("a failure before the fork on the other node: its last stderr line after 'proxy handler failed: ', exit 255", async () => {
    const r = await cloneOnPve2(101);
    assert.equal(r.code, 255);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, "proxy handler failed: unable to create VM 101: config file already exists\n");
  });

  test("a synchronous PUT config prints nothing (its return type is null); the change is made on pve2", async () => {
    const r = await pvesh(["set", "/nodes/pve2/qemu/101/config", "--cores", "3", "--output-format", "json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["101"]?.config["cores"]), "3");
  });

  test("parameters are checked before proxying, with the local 400", async () => {
    const r = await pvesh([
      "set",
      "/nodes/pve2/qemu/101/config",
      "--cores",
      "abc",
      "--output-format",
      "json",
    ]);
    assert.equal(r.code, 255);
    assert.match(
      r.stderr,
      /^400 Parameter verification failed\.\ncores: type check \('integer'\) failed - got 'abc'\n/,
    );
  });

  test("a GET answer is plain JSON and decodes as before; handlers without proxyto run locally", async () => {
    const status = await pvesh(["get", "/nodes/pve2/qemu/101/status/current", "--output-format", "json"]);
    assert.equal(status.code, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { vmid: number }).vmid, 101);
    // upid_index has no proxyto (Tasks.pm:262), so --noproxy does not trip the loop check.
    const tasks = await inspect(sim.dir, (ctx) =>
      ctx.state.tasks.filter((t) => t.node === "pve2").map((t) => t.upid),
    );
    const index = await pvesh([
      "--noproxy",
      "get",
      `/nodes/pve2/tasks/${tasks[0]}`,
      "--output-format",
      "json",
    ]);
    assert.equal(index.code, 0, index.stderr);
    assert.deepEqual(JSON.parse(index.stdout), [{ name: "log" }, { name: "status" }]);
  });

  test("--noproxy refuses a call another node must run", async () => {
    const r = await pvesh(["--noproxy", "get", "/nodes/pve2/qemu/101/config", "--output-format", "json"]);
    assert.equal(r.code, 255);
    assert.equal(r.stderr, "proxy loop detected - aborting\n");
  });
});

describe("pvesim pvesh-proxy: run_command's reading of the remote output", () => {
  test("lines end at \\n, \\r\\n, \\r or backspaces; a last unterminated line counts", () => {
    assert.deepEqual(runCommandLines("a\nb\r\nc\rd\x08\x08e"), ["a", "b", "c", "d", "e"]);
    assert.deepEqual(runCommandLines(""), []);
  });

  test("stderr: every line but the last is printed; on failure the last is the error; without one, the exit code", () => {
    assert.deepEqual(proxiedOutcome({ code: 2, stdout: "", stderr: "x\n\ny\n", returnsNull: false }), {
      ok: false,
      stderr: ["x"],
      error: "proxy handler failed: y",
    });
    assert.deepEqual(proxiedOutcome({ code: 5, stdout: "", stderr: "", returnsNull: false }), {
      ok: false,
      stderr: [],
      error: "proxy handler failed: exit code 5",
    });
    assert.deepEqual(proxiedOutcome({ code: 0, stdout: '{"a":\n1}\n', stderr: "w\n", returnsNull: false }), {
      ok: true,
      stderr: ["w"],
      data: { a: 1 },
      returnsNull: false,
    });
  });
});
