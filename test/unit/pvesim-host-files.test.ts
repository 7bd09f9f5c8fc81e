import assert from "node:assert/strict";
import { existsSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, beforeEach, describe, it } from "node:test";
import { createSim, runTool, type Sim } from "../pvesim/harness.js";

/**
 * The simulator's pvesh/qm write where the real ones write on the node (task logs, config lock files,
 * QEMU run files, the cloud-init run dir), below the host root (DIR/host here), and a failure to write
 * surfaces with Proxmox's text, as the call's failure or the task's. A path blocked by a plain file
 * gives ENOTDIR without privileges; test/system/unit-namespace.test.ts does the same with a read-only
 * mount namespace built from the systemd unit.
 */

const FAST = { clone_ms: 40, start_ms: 20, stop_ms: 20, task_ms: 20, agent_ready_ms: 40 };

/** Replace a host directory by a file, so that creating anything below it fails with ENOTDIR. */
function block(sim: Sim, real: string): void {
  const path = join(sim.dir, "host", real);
  rmSync(path, { recursive: true, force: true });
  writeFileSync(path, "");
}

describe("pvesim: host files of the shell face", () => {
  let sim: Sim;
  beforeEach(() => {
    sim?.cleanup();
    sim = createSim({ knobs: FAST });
  });
  after(() => sim.cleanup());

  it("a worker's task log is created under /var/log/pve/tasks/<last hex digit of the start time>/<UPID>", async () => {
    const r = await runTool(sim, "pvesh", ["create", "/nodes/pve/qemu/9000/clone", "--newid", "101"]);
    assert.equal(r.code, 0, r.stderr);
    const upid = r.stdout.trim().split("\n").pop()!;
    const sub = upid.split(":")[4]!.slice(-1);
    assert.ok(existsSync(join(sim.dir, "host/var/log/pve/tasks", sub, upid)), `task log of ${upid}`);
    assert.ok(existsSync(join(sim.dir, "host/run/lock/qemu-server/lock-101.conf")), "the clone's lock file");
  });

  it("no task log, no worker: the clone fails synchronously with create_owned_file_fh's text and no VM appears", async () => {
    block(sim, "var/log/pve/tasks");
    const r = await runTool(sim, "pvesh", ["create", "/nodes/pve/qemu/9000/clone", "--newid", "101"]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      /^unable to create file '\/var\/log\/pve\/tasks\/[0-9A-F]\/UPID:pve:[^']+' - Not a directory\n$/,
    );
    const status = await runTool(sim, "qm", ["status", "101"]);
    assert.equal(status.code, 2, "VM 101 was never made");
  });

  it("a config change that cannot open its lock file fails with lock_file_full's text and changes nothing", async () => {
    block(sim, "run/lock/qemu-server");
    const r = await runTool(sim, "pvesh", ["set", "/nodes/pve/qemu/9000/config", "--description", "x"]);
    assert.notEqual(r.code, 0);
    assert.equal(
      r.stderr,
      "can't lock file '/var/lock/qemu-server/lock-9000.conf' - can't open file - Not a directory\n",
    );
    const config = await runTool(sim, "pvesh", [
      "get",
      "/nodes/pve/qemu/9000/config",
      "--output-format",
      "json",
    ]);
    assert.equal(JSON.parse(config.stdout).description, undefined);
  });

  it("a start writes the cloud-init run dir and QEMU's pid and QMP files; a blocked run dir fails the task as QEMU does", async () => {
    assert.equal((await runTool(sim, "qm", ["clone", "9000", "101"])).code, 0);
    assert.equal((await runTool(sim, "qm", ["clone", "9000", "102"])).code, 0);
    const started = await runTool(sim, "qm", ["start", "101"]);
    assert.equal(started.code, 0, started.stderr);
    assert.ok(existsSync(join(sim.dir, "host/var/run/qemu-server/101.pid")));
    assert.ok(existsSync(join(sim.dir, "host/run/qemu-server/101.qmp")), "/var/run is Debian's link to /run");
    assert.ok(readdirSync(join(sim.dir, "host/run/pve/cloudinit/101")).length > 0);

    block(sim, "run/qemu-server");
    const failed = await runTool(sim, "qm", ["start", "102"]);
    assert.notEqual(failed.code, 0);
    assert.match(failed.stdout, /kvm: cannot create PID file: Cannot open pid file: Not a directory/);
    assert.match(failed.stderr, /start failed: QEMU exited with code 1/);
    assert.match((await runTool(sim, "qm", ["status", "102"])).stdout, /status: stopped/);
  });

  it("a blocked cloud-init run dir fails the start with mkpath's croak", async () => {
    assert.equal((await runTool(sim, "qm", ["clone", "9000", "101"])).code, 0);
    block(sim, "run/pve");
    const failed = await runTool(sim, "qm", ["start", "101"]);
    assert.notEqual(failed.code, 0);
    assert.match(
      failed.stderr,
      /mkdir \/run\/pve\/cloudinit\/101: Not a directory at \/usr\/share\/perl5\/PVE\/QemuServer\/Cloudinit\.pm line 25\./,
    );
  });

  it("PVESIM_HOST_ROOT moves the host files", async () => {
    const root = join(sim.dir, "elsewhere");
    const r = await runTool(sim, "qm", ["clone", "9000", "101"], { PVESIM_HOST_ROOT: root });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(root, "var/lock/qemu-server/lock-101.conf")));
    assert.equal(readdirSync(join(root, "var/log/pve/tasks")).length, 1, "one task log subdirectory");
  });
});
