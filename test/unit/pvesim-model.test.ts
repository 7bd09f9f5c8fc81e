import assert from "node:assert/strict";
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync, writeFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { PveError } from "../pvesim/errors.js";
import { api, apiTask, createSim, inspect, type Sim, setControl, waitTask } from "../pvesim/harness.js";
import { removeVmBehindBack } from "../pvesim/lifecycle.js";
import { storageRoot } from "../pvesim/paths.js";
import { readState } from "../pvesim/store.js";
import { decodeUpid, encodeUpid } from "../pvesim/upid.js";

const FAST = {
  clone_ms: 60,
  full_clone_ms: 80,
  start_ms: 30,
  stop_ms: 20,
  shutdown_ms: 20,
  task_ms: 20,
  agent_ready_ms: 80,
};
const VM = "/nodes/pve/qemu";

async function rejects(p: Promise<unknown>, status: number, message: string | RegExp): Promise<PveError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof PveError, `expected PveError, got ${String(err)}`);
    assert.equal(err.status, status);
    if (typeof message === "string") assert.equal(err.message, message);
    else assert.match(err.message, message);
    return err;
  }
  assert.fail("expected the call to fail");
}

function head(path: string, n: number): string {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, 0);
    return buf.toString();
  } finally {
    closeSync(fd);
  }
}

async function linkedClone(sim: Sim, newid: number, name = `sbx-${newid}`): Promise<void> {
  const task = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: String(newid), name, full: "0" });
  assert.equal(task.exitstatus, "OK", task.log.join("\n"));
}

describe("pvesim: UPIDs and the task lifecycle", () => {
  let sim: Sim;
  before(() => {
    // Long enough that the clone is still running when the test reads its status, however loaded the
    // machine; the describe makes one clone.
    sim = createSim({ knobs: { ...FAST, clone_ms: 3000 } });
  });
  after(() => sim.cleanup());

  it("encodes and decodes Proxmox's exact UPID format, trailing colon included", () => {
    const upid = encodeUpid({
      node: "pve",
      pid: 0x35d677,
      pstart: 0x3ab00c3,
      starttime: 0x66dc5987,
      type: "qmclone",
      id: "9000",
      user: "root@pam",
    });
    assert.equal(upid, "UPID:pve:0035D677:03AB00C3:66DC5987:qmclone:9000:root@pam:");
    assert.deepEqual(decodeUpid(upid)?.type, "qmclone");
    assert.equal(decodeUpid(upid.slice(0, -1)), undefined);
    assert.equal(decodeUpid("UPID:pve:1:2:3:qmclone:9000:root@pam:"), undefined);
  });

  it("clone returns a UPID at once, shows lock: clone while running, then stops with OK", async () => {
    const before = Math.floor(Date.now() / 1000);
    const result = await api(sim, "POST", `${VM}/9000/clone`, { newid: "101", name: "sbx-101" });
    const upid = String(result.data);
    assert.match(upid, /^UPID:pve:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:qmclone:9000:root@pam:$/);
    const starttime = decodeUpid(upid)!.starttime;
    assert.ok(starttime >= before && starttime <= before + 2);

    const running = (await api(sim, "GET", `/nodes/pve/tasks/${upid}/status`)).data as Record<
      string,
      unknown
    >;
    assert.equal(running["status"], "running");
    assert.equal(running["exitstatus"], undefined);
    assert.equal(running["type"], "qmclone");
    assert.equal(running["id"], "9000");
    const status = (await api(sim, "GET", `${VM}/101/status/current`)).data as Record<string, unknown>;
    assert.equal(status["lock"], "clone");

    await waitTask(sim, upid);
    const done = (await api(sim, "GET", `/nodes/pve/tasks/${upid}/status`)).data as Record<string, unknown>;
    assert.equal(done["status"], "stopped");
    assert.equal(done["exitstatus"], "OK");
    const log = (await api(sim, "GET", `/nodes/pve/tasks/${upid}/log`)).data as Array<{
      n: number;
      t: string;
    }>;
    assert.equal(log[0]?.t, "create linked clone of drive scsi0 (local-zfs:base-9000-disk-0)");
    assert.equal(log.at(-1)?.t, "TASK OK");
    assert.deepEqual(
      log.map((l) => l.n),
      log.map((_, i) => i + 1),
    );
    const config = (await api(sim, "GET", `${VM}/101/config`)).data as Record<string, unknown>;
    assert.equal(config["lock"], undefined);
    assert.equal(config["scsi0"], "local-zfs:base-9000-disk-0/vm-101-disk-0,discard=on,iothread=1,size=8G");
    assert.equal(config["ide2"], "local-zfs:vm-101-cloudinit,media=cdrom");
    assert.equal(config["memory"], "2048", "memory is a string since PVE 8.1");
    assert.equal(config["cores"], 2);
    assert.equal(config["template"], undefined);
    assert.match(String(config["net0"]), /^virtio=BC:24:11:[0-9A-F:]{8},bridge=vmbr1$/);
    assert.match(String(config["digest"]), /^[0-9a-f]{40}$/);
  });

  it("an unknown or malformed UPID is a 400 on the upid parameter", async () => {
    const err = await rejects(
      api(sim, "GET", "/nodes/pve/tasks/UPID:nope/status"),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(err.errors, { upid: "unable to parse worker upid" });
    const unknown = "UPID:pve:00000001:00000002:00000003:qmstart:101:root@pam:";
    const err2 = await rejects(
      api(sim, "GET", `/nodes/pve/tasks/${unknown}/status`),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(err2.errors, { upid: "no such task" });
  });

  it("nextid answers a string, lowest free from 100, and refuses taken IDs", async () => {
    assert.equal((await api(sim, "GET", "/cluster/nextid")).data, "100");
    assert.equal((await api(sim, "GET", "/cluster/nextid", { vmid: "105" })).data, "105");
    const taken = await rejects(
      api(sim, "GET", "/cluster/nextid", { vmid: "101" }),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(taken.errors, { vmid: "VM 101 already exists" });
    const small = await rejects(
      api(sim, "GET", "/cluster/nextid", { vmid: "99" }),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(small.errors, { vmid: "value does not look like a valid VM ID" });
  });

  it("state survives a restart: a fresh reader sees what the last writer left", async () => {
    const state = readState(sim.dir);
    assert.equal(state.vms["101"]?.config["name"], "sbx-101");
    assert.ok(state.tasks.some((t) => t.type === "qmclone" && t.exitstatus === "OK"));
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["101"]?.runtime.status), "stopped");
  });
});

describe("pvesim: Proxmox's refusals", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    await linkedClone(sim, 101);
  });
  after(() => sim.cleanup());

  it("a linked clone of a VM that is not a template fails in the task and leaves nothing behind", async () => {
    const task = await apiTask(sim, "POST", `${VM}/101/clone`, { newid: "102", full: "0" });
    assert.equal(
      task.exitstatus,
      "Linked clone feature is not supported for 'local-zfs:base-9000-disk-0/vm-101-disk-0' (scsi0)",
    );
    assert.equal(task.log.at(-1), `TASK ERROR: ${task.exitstatus}`);
    await rejects(
      api(sim, "GET", `${VM}/102/config`),
      500,
      "Configuration file 'nodes/pve/qemu-server/102.conf' does not exist",
    );
    assert.equal(existsSync(`${storageRoot(sim.dir, "local-zfs")}/vm-102-disk-0`), false);
  });

  it("storage is refused for linked clones, and a clone onto an existing VM is refused before the task", async () => {
    await rejects(
      api(sim, "POST", `${VM}/9000/clone`, { newid: "103", full: "0", storage: "local-lvm" }),
      500,
      "parameter 'storage' not allowed for linked clones",
    );
    await rejects(
      api(sim, "POST", `${VM}/9000/clone`, { newid: "101" }),
      500,
      "unable to create VM 101: config file already exists",
    );
  });

  it("a locked VM refuses changes with `VM is locked (<lock>)`", async () => {
    await api(sim, "PUT", `${VM}/101/config`, { lock: "backup" });
    await rejects(api(sim, "PUT", `${VM}/101/config`, { cores: "4" }), 500, "VM is locked (backup)");
    const start = await apiTask(sim, "POST", `${VM}/101/status/start`);
    assert.equal(start.exitstatus, "VM is locked (backup)");
    await api(sim, "PUT", `${VM}/101/config`, { delete: "lock", skiplock: "1" });
    await api(sim, "PUT", `${VM}/101/config`, { cores: "4" });
  });

  it("skiplock is for root@pam only", async () => {
    const err = await rejects(
      api(
        sim,
        "PUT",
        `${VM}/101/config`,
        { cores: "2", skiplock: "1" },
        { user: "root@pam", tokenid: "agentlab" },
      ),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(err.errors, { skiplock: "Only root may use this option." });
  });

  it("starting a running VM fails in the task; destroying it fails at once", async () => {
    assert.equal((await apiTask(sim, "POST", `${VM}/101/status/start`)).exitstatus, "OK");
    const again = await apiTask(sim, "POST", `${VM}/101/status/start`);
    assert.equal(again.exitstatus, "VM 101 already running");
    await rejects(api(sim, "DELETE", `${VM}/101`), 500, "VM 101 is running - destroy failed");
    assert.equal((await apiTask(sim, "POST", `${VM}/101/status/stop`)).exitstatus, "OK");
  });

  it("a template cannot start and its base volume cannot go while linked clones use it", async () => {
    assert.equal(
      (await apiTask(sim, "POST", `${VM}/9000/status/start`)).exitstatus,
      "you can't start a vm if it's a template",
    );
    const destroy = await apiTask(sim, "DELETE", `${VM}/9000`);
    assert.equal(
      destroy.exitstatus,
      "base volume 'local-zfs:base-9000-disk-0' is still in use by linked cloned",
    );
    assert.ok(await inspect(sim.dir, (ctx) => ctx.state.vms["9000"] !== undefined));
  });

  it("a missing VM is a 500 naming the config file, with CLI exit code 2", async () => {
    const err = await rejects(
      api(sim, "GET", `${VM}/999/status/current`),
      500,
      "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist",
    );
    assert.equal(err.exitCode, 2);
  });

  it("parameter errors come back per parameter", async () => {
    const err = await rejects(
      api(sim, "PUT", `${VM}/101/config`, { cores: "abc", bogus: "1" }),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(err.errors, {
      cores: "type check ('integer') failed - got 'abc'",
      bogus: "property is not defined in schema and the schema does not allow additional properties",
    });
    const net = await rejects(
      api(sim, "PUT", `${VM}/101/config`, { net0: "virtio,bridge=vmbr1,fwgroup=agent_nat_default" }),
      400,
      "Parameter verification failed.",
    );
    assert.match(String(net.errors?.["net0"]), /net0\.fwgroup: property is not defined in schema/);
  });
});

describe("pvesim: config flock, pending changes, snapshots", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    await linkedClone(sim, 101);
  });
  after(() => sim.cleanup());

  it("a config change waits for a running task's flock, and times out like flock when it is too long", async () => {
    await setControl(sim.dir, { start_ms: 250 });
    const started = Date.now();
    const start = await api(sim, "POST", `${VM}/101/status/start`);
    await api(sim, "PUT", `${VM}/101/config`, { description: "waited" });
    assert.ok(Date.now() - started >= 200, "PUT config waited for the start task");
    assert.equal((await waitTask(sim, String(start.data))).exitstatus, "OK");

    await setControl(sim.dir, { task_ms: 1500 });
    const snap = await api(sim, "POST", `${VM}/101/snapshot`, { snapname: "slow" });
    const before = Date.now();
    await rejects(
      api(sim, "POST", `${VM}/101/clone`, { newid: "150", full: "1" }),
      500,
      "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout",
    );
    assert.ok(Date.now() - before >= 950, "a clone waits 1 s for the source's flock");
    await setControl(sim.dir, { task_ms: 20 });
    assert.equal((await waitTask(sim, String(snap.data))).exitstatus, "OK");
    assert.equal((await apiTask(sim, "DELETE", `${VM}/101/snapshot/slow`)).exitstatus, "OK");
  });

  it("changes to a running VM wait in [PENDING] until a cold start; hotpluggable ones apply at once", async () => {
    await api(sim, "PUT", `${VM}/101/config`, { cores: "4", name: "renamed" });
    const current = (await api(sim, "GET", `${VM}/101/config`, { current: "1" })).data as Record<
      string,
      unknown
    >;
    const merged = (await api(sim, "GET", `${VM}/101/config`)).data as Record<string, unknown>;
    assert.equal(current["cores"], 2);
    assert.equal(merged["cores"], 4);
    assert.equal(current["name"], "renamed");
    await apiTask(sim, "POST", `${VM}/101/status/stop`);
    await apiTask(sim, "POST", `${VM}/101/status/start`);
    const applied = (await api(sim, "GET", `${VM}/101/config`, { current: "1" })).data as Record<
      string,
      unknown
    >;
    assert.equal(applied["cores"], 4);
    await apiTask(sim, "POST", `${VM}/101/status/stop`);
  });

  it("snapshots keep a parent chain, roll back disk bytes, and ZFS only rolls back to the newest", async () => {
    const disk = `${storageRoot(sim.dir, "local-zfs")}/vm-101-disk-0`;
    writeFileSync(disk, "first", { flag: "r+" });
    assert.equal((await apiTask(sim, "POST", `${VM}/101/snapshot`, { snapname: "one" })).exitstatus, "OK");
    writeFileSync(disk, "SECOND", { flag: "r+" });
    assert.equal(
      (await apiTask(sim, "POST", `${VM}/101/snapshot`, { snapname: "two", description: "note" })).exitstatus,
      "OK",
    );
    const list = (await api(sim, "GET", `${VM}/101/snapshot`)).data as Array<Record<string, unknown>>;
    const byName = Object.fromEntries(list.map((s) => [s["name"], s]));
    assert.equal(byName["two"]?.["parent"], "one");
    assert.equal(byName["current"]?.["parent"], "two");
    assert.equal(byName["current"]?.["description"], "You are here!");

    const old = await apiTask(sim, "POST", `${VM}/101/snapshot/one/rollback`);
    assert.equal(
      old.exitstatus,
      "can't rollback, 'one' is not most recent snapshot on 'local-zfs:base-9000-disk-0/vm-101-disk-0'",
    );
    writeFileSync(disk, "THIRD!", { flag: "r+" });
    assert.equal((await apiTask(sim, "POST", `${VM}/101/snapshot/two/rollback`)).exitstatus, "OK");
    assert.equal(head(disk, 6), "SECOND");
    assert.equal(statSync(disk).size, 8 * 1024 ** 3);

    assert.equal((await apiTask(sim, "DELETE", `${VM}/101/snapshot/two`)).exitstatus, "OK");
    const after = (await api(sim, "GET", `${VM}/101/snapshot`)).data as Array<Record<string, unknown>>;
    assert.equal(after.find((s) => s["name"] === "current")?.["parent"], "one");
    const missing = await apiTask(sim, "POST", `${VM}/101/snapshot/nope/rollback`);
    assert.equal(missing.exitstatus, "snapshot 'nope' does not exist");
  });
  it("a rollback lists a disk the snapshot lacks as unusedN (another VM's too), keeping unused entries and the description", async () => {
    assert.equal((await apiTask(sim, "POST", `${VM}/101/snapshot`, { snapname: "bare" })).exitstatus, "OK");
    await inspect(sim.dir, (ctx) => {
      const config = ctx.state.vms["101"]!.config;
      config["scsi1"] = "local-zfs:vm-4242-disk-0,backup=0,discard=on";
      config["unused0"] = "local-zfs:vm-101-disk-9";
      config["description"] = "kept";
    });
    assert.equal((await apiTask(sim, "POST", `${VM}/101/snapshot/bare/rollback`)).exitstatus, "OK");
    const config = (await api(sim, "GET", `${VM}/101/config`)).data as Record<string, unknown>;
    assert.equal(config["scsi1"], undefined, "the drive is gone from the config");
    assert.equal(config["unused0"], "local-zfs:vm-101-disk-9");
    assert.equal(config["unused1"], "local-zfs:vm-4242-disk-0", "listed as unused, not silently dropped");
    assert.equal(config["description"], "kept");
    assert.equal(config["parent"], "bare");
    await inspect(sim.dir, (ctx) => {
      const vm = ctx.state.vms["101"]!;
      delete vm.config["unused0"];
      delete vm.config["unused1"];
    });
    assert.equal((await apiTask(sim, "DELETE", `${VM}/101/snapshot/bare`)).exitstatus, "OK");
  });
});

describe("pvesim: faults", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    await linkedClone(sim, 101);
  });
  after(() => sim.cleanup());

  it("lock contention for N operations clears after N refusals", async () => {
    await setControl(sim.dir, {}, ["lock=vmid=101,times=2,lock=backup"]);
    await rejects(api(sim, "PUT", `${VM}/101/config`, { cores: "3" }), 500, "VM is locked (backup)");
    await rejects(api(sim, "PUT", `${VM}/101/config`, { cores: "3" }), 500, "VM is locked (backup)");
    await api(sim, "PUT", `${VM}/101/config`, { cores: "3" });
  });

  it("time-boxed lock contention shows in status and ends by itself", async () => {
    await setControl(sim.dir, {}, ["lock=vmid=101,ms=400,lock=backup"]);
    const status = (await api(sim, "GET", `${VM}/101/status/current`)).data as Record<string, unknown>;
    assert.equal(status["lock"], "backup");
    await rejects(api(sim, "PUT", `${VM}/101/config`, { cores: "2" }), 500, "VM is locked (backup)");
    await sleep(420);
    await api(sim, "PUT", `${VM}/101/config`, { cores: "2" });
  });

  it("a failed clone task reports its error as exitstatus and removes the half-made VM", async () => {
    await setControl(sim.dir, {}, ["fail_clone"]);
    const failed = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: "120", name: "sbx-120" });
    assert.equal(
      failed.exitstatus,
      "clone failed: zfs error: cannot create 'rpool/data/vm-120-disk-0': out of space",
    );
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["120"]), undefined);
    const next = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: "120", name: "sbx-120" });
    assert.equal(next.exitstatus, "OK");
  });

  it("a failed start carries the given message", async () => {
    await setControl(sim.dir, {}, ["fail_task=type=start,message=start failed: QEMU exited with code 1"]);
    const failed = await apiTask(sim, "POST", `${VM}/120/status/start`);
    assert.equal(failed.exitstatus, "start failed: QEMU exited with code 1");
    assert.equal(await inspect(sim.dir, (ctx) => ctx.state.vms["120"]?.runtime.status), "stopped");
  });

  it("a VM removed behind the daemon's back is simply gone, volumes included", async () => {
    const disk = `${storageRoot(sim.dir, "local-zfs")}/vm-120-disk-0`;
    assert.ok(existsSync(disk));
    await inspect(sim.dir, (ctx) => removeVmBehindBack(ctx, 120));
    await rejects(
      api(sim, "GET", `${VM}/120/status/current`),
      500,
      "Configuration file 'nodes/pve/qemu-server/120.conf' does not exist",
    );
    assert.equal(existsSync(disk), false);
  });
});

describe("pvesim: the guest agent and the guest hook", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    await linkedClone(sim, 101);
  });
  after(() => sim.cleanup());

  it("answers `QEMU guest agent is not running` until the guest booted, then a 10.77/16 address on net0's MAC", async () => {
    await rejects(api(sim, "GET", `${VM}/101/agent/network-get-interfaces`), 500, "VM 101 is not running");
    const snippet = `${storageRoot(sim.dir, "local")}/snippets/sbx-101-user.yaml`;
    writeFileSync(snippet, "#cloud-config\n");
    const marker = `${sim.dir}/hook-101.out`;
    await setControl(sim.dir, {
      agent_ready_ms: 400,
      guest_hook: `echo "$PVESIM_VMID $PVESIM_USER_DATA $PVESIM_DIR" > "$PVESIM_DIR/hook-$PVESIM_VMID.out"`,
    });
    await api(sim, "PUT", `${VM}/101/config`, { cicustom: "user=local:snippets/sbx-101-user.yaml" });
    await apiTask(sim, "POST", `${VM}/101/status/start`);
    await rejects(
      api(sim, "GET", `${VM}/101/agent/network-get-interfaces`),
      500,
      "QEMU guest agent is not running",
    );
    await sleep(420);
    const result = (await api(sim, "GET", `${VM}/101/agent/network-get-interfaces`)).data as {
      result: Array<{
        name: string;
        "hardware-address": string;
        "ip-addresses"?: Array<Record<string, unknown>>;
      }>;
    };
    const config = (await api(sim, "GET", `${VM}/101/config`)).data as Record<string, unknown>;
    const mac = /virtio=([0-9A-F:]+)/.exec(String(config["net0"]))![1]!.toLowerCase();
    assert.deepEqual(
      result.result.map((i) => i.name),
      ["lo", "eth0"],
    );
    const eth0 = result.result[1]!;
    assert.equal(eth0["hardware-address"], mac);
    assert.deepEqual(eth0["ip-addresses"]?.[0], {
      "ip-address": "10.77.0.103",
      "ip-address-type": "ipv4",
      prefix: 16,
    });

    for (let i = 0; i < 50 && !existsSync(marker); i++) await sleep(20);
    assert.equal(readFileSync(marker, "utf8").trim(), `101 ${snippet} ${sim.dir}`);
  });

  it("a VM without an agent says so, and the never-ready fault keeps the agent silent", async () => {
    await setControl(sim.dir, { guest_hook: "" }, ["agent_never_ready=101"]);
    await rejects(
      api(sim, "GET", `${VM}/101/agent/network-get-interfaces`),
      500,
      "QEMU guest agent is not running",
    );
    await apiTask(sim, "POST", `${VM}/101/status/stop`);
    await api(sim, "PUT", `${VM}/101/config`, { delete: "agent" });
    await apiTask(sim, "POST", `${VM}/101/status/start`);
    await rejects(
      api(sim, "GET", `${VM}/101/agent/network-get-interfaces`),
      500,
      "No QEMU guest agent configured",
    );
  });

  it("plugs each bridged NIC with nic_plug before the VM runs; a failing plug fails the start as QEMU does", async () => {
    await setControl(sim.dir, { guest_hook: "", nic_plug: "" });
    await apiTask(sim, "POST", `${VM}/101/status/stop`);
    await api(sim, "PUT", `${VM}/101/config`, { net1: "virtio,bridge=vmbr2,firewall=1" });
    const plugged = `${sim.dir}/plugged`;
    await setControl(sim.dir, {
      nic_plug: `echo "$PVESIM_VMID $PVESIM_NET $PVESIM_IFACE $PVESIM_BRIDGE $PVESIM_FIREWALL" >> "${plugged}"`,
    });
    const started = await apiTask(sim, "POST", `${VM}/101/status/start`);
    assert.equal(started.exitstatus, "OK");
    // Synchronous: the ports exist when the start task reports OK, as pve-bridge runs inside QEMU's start.
    assert.deepEqual(readFileSync(plugged, "utf8").trim().split("\n"), [
      "101 net0 tap101i0 vmbr1 0",
      "101 net1 tap101i1 vmbr2 1",
    ]);

    await apiTask(sim, "POST", `${VM}/101/status/stop`);
    await setControl(sim.dir, { nic_plug: "echo no such bridge >&2; exit 1" });
    const failed = await apiTask(sim, "POST", `${VM}/101/status/start`);
    assert.equal(failed.exitstatus, "start failed: QEMU exited with code 1");
    assert.equal(
      ((await api(sim, "GET", `${VM}/101/status/current`)).data as { status: string }).status,
      "stopped",
    );
    const guestLog = readFileSync(`${sim.dir}/guests/101.log`, "utf8");
    assert.match(guestLog, /no such bridge/);
    assert.match(guestLog, /network script \/usr\/libexec\/qemu-server\/pve-bridge failed with status 256/);
    await setControl(sim.dir, { nic_plug: "" });
    await api(sim, "PUT", `${VM}/101/config`, { delete: "net1" });
  });
});

describe("pvesim: disks, templates and several nodes", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST, nodes: ["pve", "pve2"] });
  });
  after(() => sim.cleanup());

  it("gives every node its own template and keeps VMIDs unique cluster-wide", async () => {
    const resources = (await api(sim, "GET", "/cluster/resources", { type: "vm" })).data as Array<
      Record<string, unknown>
    >;
    assert.deepEqual(
      resources.map((r) => [r["vmid"], r["node"], r["template"]]),
      [
        [9000, "pve", 1],
        [9001, "pve2", 1],
      ],
    );
    const onPve2 = await apiTask(sim, "POST", "/nodes/pve2/qemu/9001/clone", {
      newid: "101",
      name: "sbx-101",
    });
    assert.equal(onPve2.exitstatus, "OK");
    assert.match(onPve2.upid, /^UPID:pve2:/);
    await rejects(
      api(sim, "GET", `${VM}/101/config`),
      500,
      "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist",
    );
    const taken = await rejects(
      api(sim, "GET", "/cluster/nextid", { vmid: "101" }),
      400,
      "Parameter verification failed.",
    );
    assert.deepEqual(taken.errors, { vmid: "VM 101 already exists" });
    // The pre-fork check only sees the local node; pmxcfs refuses the file in the worker.
    const clash = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: "101" });
    assert.equal(
      clash.exitstatus,
      "close (rename) atomic file '/etc/pve/nodes/pve/qemu-server/101.conf' failed: File exists",
    );
    await rejects(
      api(sim, "POST", `${VM}/9000/clone`, { newid: "102", target: "pve2" }),
      500,
      "can't clone VM to node 'pve2' (VM uses local storage)",
    );
  });

  it("resize grows disks (never shrinks) and the file follows", async () => {
    const path = "/nodes/pve2/qemu/101";
    assert.equal(
      (await apiTask(sim, "PUT", `${path}/resize`, { disk: "scsi0", size: "+2G" })).exitstatus,
      "OK",
    );
    const config = (await api(sim, "GET", `${path}/config`)).data as Record<string, unknown>;
    assert.match(String(config["scsi0"]), /,size=10G$/);
    assert.equal(statSync(`${storageRoot(sim.dir, "local-zfs")}/vm-101-disk-0`).size, 10 * 1024 ** 3);
    const shrink = await apiTask(sim, "PUT", `${path}/resize`, { disk: "scsi0", size: "4G" });
    assert.equal(shrink.exitstatus, "shrinking disks is not supported");
    const missing = await apiTask(sim, "PUT", `${path}/resize`, { disk: "scsi5", size: "+1G" });
    assert.equal(missing.exitstatus, "disk 'scsi5' does not exist");
  });

  it("a full clone becomes a template with base volumes; a new disk and its detach leave an unused volume", async () => {
    const full = await apiTask(sim, "POST", `${VM}/9000/clone`, {
      newid: "200",
      full: "1",
      storage: "local-lvm",
    });
    assert.equal(full.exitstatus, "OK", full.log.join("\n"));
    assert.ok(full.log.includes("create full clone of drive scsi0 (local-zfs:base-9000-disk-0)"));
    await api(sim, "PUT", `${VM}/200/config`, { scsi1: "local-lvm:1" });
    let config = (await api(sim, "GET", `${VM}/200/config`)).data as Record<string, unknown>;
    assert.equal(config["scsi0"], "local-lvm:vm-200-disk-0,discard=on,iothread=1,size=8G");
    assert.equal(config["scsi1"], "local-lvm:vm-200-disk-1,size=1G");
    await api(sim, "PUT", `${VM}/200/config`, { delete: "scsi1" });
    config = (await api(sim, "GET", `${VM}/200/config`)).data as Record<string, unknown>;
    assert.equal(config["unused0"], "local-lvm:vm-200-disk-1");
    await api(sim, "PUT", `${VM}/200/config`, { delete: "unused0" });
    assert.equal(existsSync(`${storageRoot(sim.dir, "local-lvm")}/vm-200-disk-1`), false);

    const tpl = await apiTask(sim, "POST", `${VM}/200/template`);
    assert.equal(tpl.exitstatus, "OK");
    assert.ok(tpl.log.includes('  Renamed "vm-200-disk-0" to "base-200-disk-0" in volume group "pve"'));
    config = (await api(sim, "GET", `${VM}/200/config`)).data as Record<string, unknown>;
    assert.equal(config["template"], 1);
    assert.equal(config["scsi0"], "local-lvm:base-200-disk-0,discard=on,iothread=1,size=8G");
    const again = await apiTask(sim, "POST", `${VM}/200/template`);
    assert.equal(again.exitstatus, "you can't convert a template to a template");
    const linked = await apiTask(sim, "POST", `${VM}/200/clone`, { newid: "201" });
    assert.equal(linked.exitstatus, "OK");
    assert.ok(linked.log.includes('  Logical volume "vm-201-disk-0" created.'));
    const destroyed = await apiTask(sim, "DELETE", `${VM}/201`, { purge: "1" });
    assert.equal(destroyed.exitstatus, "OK");
    assert.ok(destroyed.log.includes('  Logical volume "vm-201-disk-0" successfully removed.'));
  });
});
