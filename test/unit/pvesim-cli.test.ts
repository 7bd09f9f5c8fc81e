import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { realpathSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createSim, inspect, PVESIM_CLI, runTool, type Sim, setControl } from "../pvesim/harness.js";

const FAST = {
  clone_ms: 60,
  full_clone_ms: 80,
  start_ms: 30,
  stop_ms: 20,
  shutdown_ms: 20,
  task_ms: 20,
  agent_ready_ms: 80,
};

function pvesim(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [PVESIM_CLI, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("pvesim: qm through the real executable on PATH", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST });
  });
  after(() => sim.cleanup());

  it("a missing VM exits 2 with the config-file text on stderr", async () => {
    const r = await runTool(sim, "qm", ["status", "999"]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n");
  });

  it("clone waits for its task, printing the task log, then list/status/config show the VM", async () => {
    const clone = await runTool(sim, "qm", ["clone", "9000", "101", "--full", "0", "--name", "sbx-101"]);
    assert.equal(clone.code, 0, clone.stderr);
    assert.equal(
      clone.stdout,
      "create linked clone of drive scsi0 (local-zfs:base-9000-disk-0)\ncreate full clone of drive ide2 (local-zfs:vm-9000-cloudinit)\n",
    );
    const list = await runTool(sim, "qm", ["list"]);
    assert.equal(
      list.stdout,
      [
        "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID       ",
        "       101 sbx-101              stopped    2048               8.00 0         ",
        "      9000 agentlab-template    stopped    2048               8.00 0         ",
        "",
      ].join("\n"),
    );
    assert.equal((await runTool(sim, "qm", ["status", "101"])).stdout, "status: stopped\n");
    const config = await runTool(sim, "qm", ["config", "101"]);
    assert.match(config.stdout, /^agent: 1\nboot: order=scsi0\n/);
    assert.match(
      config.stdout,
      /\nscsi0: local-zfs:base-9000-disk-0\/vm-101-disk-0,discard=on,iothread=1,size=8G\n/,
    );
    assert.doesNotMatch(config.stdout, /digest/);
  });

  it("a linked clone of a non-template fails with exit 255 and the task error on stderr", async () => {
    const r = await runTool(sim, "qm", ["clone", "101", "102", "--full", "0"]);
    assert.equal(r.code, 255);
    assert.equal(
      r.stderr,
      "Linked clone feature is not supported for 'local-zfs:base-9000-disk-0/vm-101-disk-0' (scsi0)\n",
    );
  });

  it("set prints the update line; start/status/guest cmd behave like the real ones", async () => {
    const set = await runTool(sim, "qm", ["set", "101", "--cores", "4", "--memory", "4096"]);
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, "update VM 101: -cores 4 -memory 4096\n");
    const start = await runTool(sim, "qm", ["start", "101"]);
    assert.equal(start.code, 0, start.stderr);
    assert.equal((await runTool(sim, "qm", ["status", "101"])).stdout, "status: running\n");
    const again = await runTool(sim, "qm", ["start", "101"]);
    assert.equal(again.code, 255);
    assert.equal(again.stderr, "VM 101 already running\n");
    const destroy = await runTool(sim, "qm", ["destroy", "101", "--purge", "1"]);
    assert.equal(destroy.code, 255);
    assert.equal(destroy.stderr, "VM 101 is running - destroy failed\n");

    let agent = await runTool(sim, "qm", ["guest", "cmd", "101", "network-get-interfaces"]);
    if (agent.code !== 0) {
      assert.equal(agent.stderr, "QEMU guest agent is not running\n");
      await sleep(100);
      agent = await runTool(sim, "qm", ["guest", "cmd", "101", "network-get-interfaces"]);
    }
    assert.equal(agent.code, 0, agent.stderr);
    assert.match(agent.stdout, /^\[\n {3}\{\n {6}"hardware-address" : "00:00:00:00:00:00",\n/);
    assert.match(agent.stdout, /"ip-address" : "10\.77\.0\.103"/);
    const ping = await runTool(sim, "qm", ["guest", "cmd", "101", "ping"]);
    assert.equal(ping.code, 0);
    assert.equal(ping.stdout, "");
  });

  it("locks refuse with `VM is locked (...)` until unlocked", async () => {
    assert.equal((await runTool(sim, "qm", ["set", "101", "--lock", "backup"])).code, 0);
    const refused = await runTool(sim, "qm", ["set", "101", "--cores", "2"]);
    assert.equal(refused.code, 255);
    assert.equal(refused.stderr, "VM is locked (backup)\n");
    assert.equal((await runTool(sim, "qm", ["unlock", "101"])).code, 0);
    assert.equal((await runTool(sim, "qm", ["set", "101", "--cores", "2"])).code, 0);
  });

  it("snapshot, listsnapshot, stop, destroy", async () => {
    const snap = await runTool(sim, "qm", ["snapshot", "101", "clean"]);
    assert.equal(snap.code, 0, snap.stderr);
    assert.equal(snap.stdout, "snapshotting 'drive-scsi0' (local-zfs:base-9000-disk-0/vm-101-disk-0)\n");
    const list = await runTool(sim, "qm", ["listsnapshot", "101"]);
    const lines = list.stdout.split("\n");
    assert.match(lines[0]!, /^`-> clean {24}\d{4}-\d\d-\d\d \d\d:\d\d:\d\d {5}no-description$/);
    assert.match(lines[1]!, /^ `-> current {45}You are here!$/);
    assert.equal((await runTool(sim, "qm", ["stop", "101"])).code, 0);
    const destroy = await runTool(sim, "qm", ["destroy", "101", "--purge", "1"]);
    assert.equal(destroy.code, 0, destroy.stderr);
    assert.equal((await runTool(sim, "qm", ["status", "101"])).code, 2);
  });

  it("parameter errors print the 400 block and usage, exit 255", async () => {
    const r = await runTool(sim, "qm", ["set", "9000", "--cores", "many"]);
    assert.equal(r.code, 255);
    assert.match(
      r.stderr,
      /^400 Parameter verification failed\.\ncores: type check \('integer'\) failed - got 'many'\nUSAGE: qm set <vmid>/,
    );
  });
});

describe("pvesim: pvesh and pvesm through the real executables", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST });
  });
  after(() => sim.cleanup());

  it("pvesh get prints the data as one sorted JSON line", async () => {
    const r = await runTool(sim, "pvesh", ["get", "/nodes", "--output-format", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const nodes = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
    assert.equal(nodes[0]?.["node"], "pve");
    assert.ok(r.stdout.startsWith('[{"cpu":'), "keys are sorted");
    assert.equal(r.stdout.split("\n").length, 2);
  });

  it("pvesh create on a worker prints the task log, then the UPID, and exits 0 even when the task fails", async () => {
    const ok = await runTool(sim, "pvesh", [
      "create",
      "/nodes/pve/qemu/9000/clone",
      "--newid",
      "101",
      "--output-format",
      "json",
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    const lines = ok.stdout.trim().split("\n");
    assert.equal(lines[0], "create linked clone of drive scsi0 (local-zfs:base-9000-disk-0)");
    assert.match(
      JSON.parse(lines.at(-1)!) as string,
      /^UPID:pve:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:qmclone:9000:root@pam:$/,
    );
    const bad = await runTool(sim, "pvesh", [
      "create",
      "/nodes/pve/qemu/101/clone",
      "--newid",
      "102",
      "--full",
      "0",
      "--output-format",
      "json",
    ]);
    assert.equal(bad.code, 0);
    assert.match(bad.stderr, /Linked clone feature is not supported/);
    assert.match(bad.stdout.trim().split("\n").at(-1)!, /^"UPID:.*:qmclone:101:root@pam:"$/);
  });

  it("pvesh: agent errors on stderr, unknown paths refused", async () => {
    const r = await runTool(sim, "pvesh", [
      "get",
      "/nodes/pve/qemu/101/agent/network-get-interfaces",
      "--output-format",
      "json",
    ]);
    assert.notEqual(r.code, 0);
    assert.equal(r.stderr, "VM 101 is not running\n");
    const unknown = await runTool(sim, "pvesh", ["get", "/nodes/pve/nothing"]);
    assert.equal(unknown.code, 255);
    assert.equal(unknown.stderr, "no 'get' handler for '/nodes/pve/nothing'\n");
  });

  it("pvesm alloc enforces vm-<vmid>-* names and pvesm path is a real sparse file of the size asked", async () => {
    const bad = await runTool(sim, "pvesm", ["alloc", "local-zfs", "101", "workspace-abc", "1G"]);
    assert.equal(bad.code, 255);
    assert.equal(bad.stderr, "illegal name 'workspace-abc' - should be 'vm-101-*'\n");
    const zero = await runTool(sim, "pvesm", ["alloc", "local-zfs", "0", "workspace-abc", "1G"]);
    assert.equal(zero.code, 255);
    assert.match(
      zero.stderr,
      /^400 Parameter verification failed\.\nvmid: value does not look like a valid VM ID\n/,
    );

    const ok = await runTool(sim, "pvesm", ["alloc", "local-zfs", "101", "vm-101-disk-7", "2G"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, "successfully created 'local-zfs:vm-101-disk-7'\n");
    // Like the real one, the zvol device path; it is a link to the volume's real sparse file.
    const path = await runTool(sim, "pvesm", ["path", "local-zfs:vm-101-disk-7"]);
    assert.equal(path.stdout, `${join(sim.dir, "dev", "zvol", "rpool", "data", "vm-101-disk-7")}\n`);
    assert.equal(realpathSync(path.stdout.trim()), join(sim.dir, "storage", "local-zfs", "vm-101-disk-7"));
    const st = statSync(path.stdout.trim());
    assert.equal(st.size, 2 * 1024 ** 3);
    assert.ok(st.blocks * 512 < 1024 * 1024, "sparse");

    const dup = await runTool(sim, "pvesm", ["alloc", "local-zfs", "101", "vm-101-disk-7", "2G"]);
    assert.equal(dup.stderr, "zfs error: cannot create 'rpool/data/vm-101-disk-7': dataset already exists\n");
    const dir = await runTool(sim, "pvesm", [
      "alloc",
      "local",
      "101",
      "vm-101-disk-1.raw",
      "1G",
      "--format",
      "qcow2",
    ]);
    assert.equal(
      dir.stderr,
      "illegal name 'vm-101-disk-1.raw' - wrong extension for format ('raw != 'qcow2')\n",
    );

    const list = await runTool(sim, "pvesm", ["list", "local-zfs", "--vmid", "101"]);
    // The volid column is as wide as the longest volid (here the linked clone's).
    assert.equal(
      list.stdout,
      [
        "Volid                                    Format  Type             Size VMID",
        "local-zfs:base-9000-disk-0/vm-101-disk-0 raw     images     8589934592 101",
        "local-zfs:vm-101-cloudinit               raw     images        4194304 101",
        "local-zfs:vm-101-disk-7                  raw     images     2147483648 101",
        "",
      ].join("\n"),
    );

    const free = await runTool(sim, "pvesm", ["free", "local-zfs:vm-101-disk-7"]);
    assert.equal(free.code, 0, free.stderr);
    assert.equal(free.stdout, "Removed volume 'local-zfs:vm-101-disk-7'\n");
    const again = await runTool(sim, "pvesm", ["free", "local-zfs:vm-101-disk-7"]);
    assert.equal(again.code, 255);
    assert.equal(again.stderr, "zfs error: cannot open 'rpool/data/vm-101-disk-7': dataset does not exist\n");
  });

  it("pvesm status has the printf layout and no JSON output", async () => {
    const r = await runTool(sim, "pvesm", ["status"]);
    const lines = r.stdout.split("\n");
    assert.equal(
      lines[0],
      "Name             Type     Status     Total (KiB)      Used (KiB) Available (KiB)        %",
    );
    assert.match(lines[3]!, /^local-zfs {5}zfspool {5}active {7}471859200 +\d+ +\d+ +\d+\.\d\d%$/);
    const json = await runTool(sim, "pvesm", ["status", "--output-format", "json"]);
    assert.equal(json.code, 255);
    assert.match(
      json.stderr,
      /^400 Parameter verification failed\.\noutput-format: property is not defined in schema/,
    );
  });

  it("the state survives across processes and `pvesim control` changes behaviour for the next call", async () => {
    const removed = await pvesim(["control", sim.dir, "--remove-vm", "101"]);
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal((await runTool(sim, "qm", ["config", "101"])).code, 2);
    const faulted = await pvesim(["control", sim.dir, "--fault", "fail_clone=clone failed: injected"]);
    assert.equal(faulted.code, 0, faulted.stderr);
    const clone = await runTool(sim, "qm", ["clone", "9000", "105"]);
    assert.equal(clone.code, 255);
    assert.equal(clone.stderr, "clone failed: injected\n");
    await setControl(sim.dir, { clone_ms: 10 });
    assert.equal((await runTool(sim, "qm", ["clone", "9000", "105"])).code, 0);
  });

  it("`pvesim control --add-role` makes a role the ACLs of the same call can name, as pveum would", async () => {
    const made = await pvesim([
      "control",
      sim.dir,
      "--add-role",
      "Ops:VM.Audit,Datastore.Audit",
      "--add-token",
      "ops@pve!cli",
      "--acl",
      "/vms:Ops:ops@pve",
      "--acl",
      "/vms:Ops:ops@pve!cli",
    ]);
    assert.equal(made.code, 0, made.stderr);
    assert.deepEqual(await inspect(sim.dir, (ctx) => ctx.state.roles?.["Ops"]), [
      "VM.Audit",
      "Datastore.Audit",
    ]);
    const again = await pvesim(["control", sim.dir, "--add-role", "Ops:VM.Audit"]);
    assert.equal(again.code, 1);
    assert.equal(again.stderr, "pvesim: role 'Ops' already exists\n");
    const builtin = await pvesim(["control", sim.dir, "--add-role", "PVEOps:VM.Audit"]);
    assert.equal(
      builtin.stderr,
      "pvesim: roleid: cannot use role ID starting with the (case-insensitive) 'PVE' namespace\n",
    );
    // PVE 9 dropped VM.Monitor (pve-access-control commit 0706945).
    const monitor = await pvesim(["control", sim.dir, "--add-role", "Mon:VM.Monitor"]);
    assert.equal(monitor.stderr, "pvesim: invalid privilege 'VM.Monitor'\n");
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.roles?.["Mon"]), undefined);
  });

  it("qm set --sshkeys reads a file and stores it URL-encoded", async () => {
    const keyFile = join(sim.dir, "key.pub");
    writeFileSync(
      keyFile,
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host\n",
    );
    const r = await runTool(sim, "qm", ["set", "105", "--sshkeys", keyFile]);
    assert.equal(r.code, 0, r.stderr);
    const config = await runTool(sim, "qm", ["config", "105"]);
    assert.match(
      config.stdout,
      /\nsshkeys: ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl%20me%40host%0A\n/,
    );
  });
});

describe("pvesim: many processes, one state", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST });
  });
  after(() => sim.cleanup());

  it("parallel qm clones from separate processes all land, each with its own disk", async () => {
    const ids = [301, 302, 303, 304, 305, 306];
    const results = await Promise.all(
      ids.map((id) => runTool(sim, "qm", ["clone", "9000", String(id), "--name", `sbx-${id}`])),
    );
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    const list = await runTool(sim, "qm", ["list"]);
    for (const id of ids) assert.match(list.stdout, new RegExp(`\\n +${id} sbx-${id} +stopped `));
    for (const id of ids) statSync(join(sim.dir, "storage", "local-zfs", `vm-${id}-disk-0`));
  });

  it("a lock file left by a dead process is recovered", async () => {
    const dead = await new Promise<number>((resolve) => {
      const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
      child.on("exit", () => resolve(child.pid ?? 999_999));
    });
    // Dated ten minutes ahead, so the lock never looks old: only its dead holder makes it stale. Were
    // that not seen, the call would wait out the simulator's lock timeout and fail.
    writeFileSync(join(sim.dir, "state.lock"), `${dead} ${Date.now() + 600_000} stale`);
    const r = await runTool(sim, "qm", ["status", "301"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "status: stopped\n");
  });
});
