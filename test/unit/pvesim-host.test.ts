import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, readSync, realpathSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { api, apiTask, createSim, hostReboot, PVESIM_CLI, runTool, type Sim } from "../pvesim/harness.js";
import { storageRoot } from "../pvesim/paths.js";

const FAST = { clone_ms: 40, full_clone_ms: 60, start_ms: 20, stop_ms: 20, task_ms: 20, agent_ready_ms: 40 };
const VM = "/nodes/pve/qemu";

function writeAt(path: string, text: string): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, Buffer.from(text), 0, text.length, 0);
  } finally {
    closeSync(fd);
  }
}

function readAt(path: string, length: number): string {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, 0);
    return buf.toString();
  } finally {
    closeSync(fd);
  }
}

async function config(sim: Sim, vmid: number): Promise<Record<string, unknown>> {
  return (await api(sim, "GET", `${VM}/${vmid}/config`)).data as Record<string, unknown>;
}

async function tool(sim: Sim, name: string, args: string[]): Promise<string> {
  const r = await runTool(sim, name, args);
  assert.equal(r.code, 0, `${name} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

describe("pvesim: ZFS clones and what depends on them", () => {
  let sim: Sim;
  const zvol = (name: string): string => join(sim.dir, "dev", "zvol", "rpool", "data", name);
  before(async () => {
    sim = createSim({ knobs: FAST });
    const made = await apiTask(sim, "POST", VM, {
      vmid: "900",
      name: "ws-src",
      scsi0: "local-zfs:1",
      protection: "1",
    });
    assert.equal(made.exitstatus, "OK", made.log.join("\n"));
    writeAt(zvol("vm-900-disk-0"), "AAAA");
    assert.equal((await apiTask(sim, "POST", `${VM}/900/snapshot`, { snapname: "s1" })).exitstatus, "OK");
    writeAt(zvol("vm-900-disk-0"), "BBBB");
  });
  after(() => sim.cleanup());

  it("zfs clone makes a volume from a snapshot's bytes that a new holder can own", async () => {
    await tool(sim, "qm", ["create", "901", "--name", "ws-fork", "--onboot", "0", "--tags", "agentlab-ws"]);
    await tool(sim, "zfs", ["clone", "rpool/data/vm-900-disk-0@s1", "rpool/data/vm-901-disk-0"]);
    assert.equal(
      realpathSync(zvol("vm-901-disk-0")),
      join(storageRoot(sim.dir, "local-zfs"), "vm-901-disk-0"),
    );
    assert.equal(readAt(zvol("vm-901-disk-0"), 4), "AAAA");
    await tool(sim, "qm", ["set", "901", "--scsi0", "local-zfs:vm-901-disk-0", "--protection", "1"]);
    assert.equal((await config(sim, 901))["scsi0"], "local-zfs:vm-901-disk-0,size=1G");
    writeAt(zvol("vm-901-disk-0"), "CCCC");
    assert.equal(readAt(zvol("vm-900-disk-0"), 4), "BBBB");

    const content = (await api(sim, "GET", "/nodes/pve/storage/local-zfs/content", { vmid: "901" }))
      .data as Array<Record<string, unknown>>;
    assert.deepEqual(
      content.map((c) => [c["volid"], c["parent"]]),
      [["local-zfs:vm-901-disk-0", "vm-900-disk-0@s1"]],
    );
    // A template's linked clone reports its base the same way.
    const linked = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: "902", full: "0" });
    assert.equal(linked.exitstatus, "OK");
    const all = (await api(sim, "GET", "/nodes/pve/storage/local-zfs/content", { vmid: "902" }))
      .data as Array<Record<string, unknown>>;
    assert.equal(
      all.find((c) => c["volid"] === "local-zfs:base-9000-disk-0/vm-902-disk-0")?.["parent"],
      "base-9000-disk-0@__base__",
    );
  });

  it("zfs list and zfs get show origins and clones in zfs's formats", async () => {
    const volumes = await tool(sim, "zfs", ["list", "-H", "-t", "volume", "-o", "name,origin"]);
    assert.ok(volumes.split("\n").includes("rpool/data/vm-900-disk-0\t-"), volumes);
    assert.ok(volumes.split("\n").includes("rpool/data/vm-901-disk-0\trpool/data/vm-900-disk-0@s1"), volumes);
    assert.ok(
      volumes.split("\n").includes("rpool/data/vm-902-disk-0\trpool/data/base-9000-disk-0@__base__"),
      volumes,
    );
    const snaps = await tool(sim, "zfs", [
      "list",
      "-H",
      "-t",
      "snapshot",
      "-o",
      "name,clones",
      "rpool/data/vm-900-disk-0",
    ]);
    assert.equal(snaps, "rpool/data/vm-900-disk-0@s1\trpool/data/vm-901-disk-0\n");
    const origin = await tool(sim, "zfs", ["get", "-H", "-o", "value", "origin", "rpool/data/vm-901-disk-0"]);
    assert.equal(origin, "rpool/data/vm-900-disk-0@s1\n");
    const size = await tool(sim, "zfs", ["get", "-Hp", "-o", "value", "volsize", "rpool/data/vm-901-disk-0"]);
    assert.equal(size, `${1024 ** 3}\n`);
    const header = await tool(sim, "zfs", ["list", "-o", "name,volsize", "rpool/data/vm-900-disk-0"]);
    assert.match(header, /^NAME\s+VOLSIZE\nrpool\/data\/vm-900-disk-0\s+1G\n$/);

    const missing = await runTool(sim, "zfs", [
      "clone",
      "rpool/data/vm-900-disk-0@nope",
      "rpool/data/vm-903-disk-0",
    ]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, "cannot open 'rpool/data/vm-900-disk-0@nope': dataset does not exist\n");
    const taken = await runTool(sim, "zfs", [
      "clone",
      "rpool/data/vm-900-disk-0@s1",
      "rpool/data/vm-901-disk-0",
    ]);
    assert.equal(taken.stderr, "cannot create 'rpool/data/vm-901-disk-0': dataset already exists\n");
    const badProp = await runTool(sim, "zfs", ["list", "-o", "name,bogus"]);
    assert.equal(badProp.code, 2);
    assert.match(badProp.stderr, /^bad property list: invalid property 'bogus'\n/);
  });

  it("a snapshot with clones cannot be deleted: zfs refuses, and qmdelsnapshot fails leaving its lock", async () => {
    const direct = await runTool(sim, "zfs", ["destroy", "rpool/data/vm-900-disk-0@s1"]);
    assert.equal(direct.code, 1);
    assert.equal(
      direct.stderr,
      "cannot destroy 'rpool/data/vm-900-disk-0@s1': snapshot has dependent clones\n" +
        "use '-R' to destroy the following datasets:\n" +
        "rpool/data/vm-901-disk-0\n",
    );
    const del = await apiTask(sim, "DELETE", `${VM}/900/snapshot/s1`);
    assert.equal(del.exitstatus, "zfs error: rpool/data/vm-901-disk-0");
    assert.ok(
      del.log.includes("cannot destroy 'rpool/data/vm-900-disk-0@s1': snapshot has dependent clones"),
    );
    const c = await config(sim, 900);
    assert.equal(c["lock"], "snapshot-delete");
    const snaps = (await api(sim, "GET", `${VM}/900/snapshot`)).data as Array<Record<string, unknown>>;
    assert.equal(snaps.find((s) => s["name"] === "s1")?.["snapstate"], "delete");
    await tool(sim, "qm", ["unlock", "900"]);
    assert.equal((await config(sim, 900))["lock"], undefined);
  });

  it("rolling back past a newer snapshot is blocked; the origin snapshot itself can be rolled back to", async () => {
    await api(sim, "PUT", `${VM}/900/snapshot/s1/config`, { description: "origin of ws-fork" });
    assert.equal((await apiTask(sim, "POST", `${VM}/900/snapshot`, { snapname: "s2" })).exitstatus, "OK");
    const older = await apiTask(sim, "POST", `${VM}/900/snapshot/s1/rollback`);
    assert.equal(
      older.exitstatus,
      "can't rollback, 's1' is not most recent snapshot on 'local-zfs:vm-900-disk-0'",
    );
  });

  it("destroying a VM whose volume has clones warns, keeps the volume and removes the config", async () => {
    await api(sim, "PUT", `${VM}/900/config`, { delete: "protection" });
    const destroy = await apiTask(sim, "DELETE", `${VM}/900`, {
      purge: "1",
      "destroy-unreferenced-disks": "1",
    });
    assert.equal(destroy.exitstatus, "WARNINGS: 1", destroy.log.join("\n"));
    assert.ok(destroy.log.includes("cannot destroy 'rpool/data/vm-900-disk-0': volume has dependent clones"));
    assert.ok(
      destroy.log.includes(
        "WARN: Could not remove disk 'local-zfs:vm-900-disk-0', check manually: zfs error: rpool/data/vm-901-disk-0",
      ),
      destroy.log.join("\n"),
    );
    assert.equal(destroy.log.at(-1), "TASK WARNINGS: 1");
    const gone = await runTool(sim, "qm", ["config", "900"]);
    assert.equal(gone.code, 2);
    assert.equal(readAt(zvol("vm-900-disk-0"), 4), "BBBB", "the volume and its bytes are still there");
    const left = await tool(sim, "pvesm", ["list", "local-zfs", "--vmid", "900"]);
    assert.match(left, /^local-zfs:vm-900-disk-0 raw/m);

    // Once the clone is gone, the leftover can be freed.
    await api(sim, "PUT", `${VM}/901/config`, { delete: "protection" });
    assert.equal((await apiTask(sim, "DELETE", `${VM}/901`, { purge: "1" })).exitstatus, "OK");
    assert.equal(existsSync(zvol("vm-901-disk-0")), false);
    const free = await runTool(sim, "pvesm", ["free", "local-zfs:vm-900-disk-0"]);
    assert.equal(free.code, 0, free.stderr);
    assert.equal(existsSync(zvol("vm-900-disk-0")), false);
    assert.equal(existsSync(join(storageRoot(sim.dir, "local-zfs"), "vm-900-disk-0")), false);
  });

  it("zfs destroy: children need -r, a zvol in use is busy", async () => {
    await apiTask(sim, "POST", VM, { vmid: "905", scsi0: "local-zfs:1" });
    await apiTask(sim, "POST", `${VM}/905/snapshot`, { snapname: "kk" });
    const children = await runTool(sim, "zfs", ["destroy", "rpool/data/vm-905-disk-0"]);
    assert.equal(children.code, 1);
    assert.equal(
      children.stderr,
      "cannot destroy 'rpool/data/vm-905-disk-0': volume has children\n" +
        "use '-r' to destroy the following datasets:\n" +
        "rpool/data/vm-905-disk-0@kk\n",
    );
    await apiTask(sim, "POST", `${VM}/905/status/start`);
    const busy = await runTool(sim, "zfs", ["destroy", "-r", "rpool/data/vm-905-disk-0"]);
    assert.equal(busy.stderr, "cannot destroy 'rpool/data/vm-905-disk-0': dataset is busy\n");
    await apiTask(sim, "POST", `${VM}/905/status/stop`);
    await tool(sim, "zfs", ["destroy", "-r", "rpool/data/vm-905-disk-0"]);
    assert.equal(existsSync(zvol("vm-905-disk-0")), false);
    const notModelled = await runTool(sim, "zfs", ["snapshot", "rpool/data/x@y"]);
    assert.equal(notModelled.code, 2);
    assert.match(notModelled.stderr, /not modelled/);
  });
});

describe("pvesim: LVM activation, device links and host reboots", () => {
  let sim: Sim;
  const dev = (lv: string): string => join(sim.dir, "dev", "pve", lv);
  const active = async (lv: string): Promise<string> =>
    (await tool(sim, "lvs", ["--noheadings", "-o", "lv_active", `pve/${lv}`])).trim();
  before(async () => {
    sim = createSim({ knobs: FAST });
    for (const vmid of ["950", "951", "952"]) {
      const t = await apiTask(sim, "POST", VM, { vmid, scsi0: "local-lvm:1" });
      assert.equal(t.exitstatus, "OK", t.log.join("\n"));
    }
  });
  after(() => sim.cleanup());

  it("pvesm path prints /dev/<vg>/<lv>, which exists while the LV is active", async () => {
    assert.equal(await tool(sim, "pvesm", ["path", "local-lvm:vm-950-disk-0"]), `${dev("vm-950-disk-0")}\n`);
    const info = (await api(sim, "GET", "/nodes/pve/storage/local-lvm/content/local-lvm:vm-950-disk-0"))
      .data as Record<string, unknown>;
    assert.equal(info["path"], dev("vm-950-disk-0"));
    assert.equal(
      realpathSync(dev("vm-950-disk-0")),
      join(storageRoot(sim.dir, "local-lvm"), "vm-950-disk-0"),
    );
    assert.equal(await active("vm-950-disk-0"), "active");
    const table = await tool(sim, "lvs", ["pve"]);
    assert.match(table, /^ {2}LV\s+VG\s+Attr\s+LSize\s+Pool\s+Origin\s*$/m);
    assert.match(table, /^ {2}vm-950-disk-0 pve\s+Vwi-a-tz-- +1\.00g data\s*$/m);
    const bytes = await tool(sim, "lvs", [
      "--noheadings",
      "--units",
      "b",
      "--nosuffix",
      "-o",
      "lv_size",
      "pve/vm-950-disk-0",
    ]);
    assert.equal(bytes.trim(), String(1024 ** 3));
  });

  it("a host reboot stops the VMs and deactivates every LV; lvchange -ay -K brings one back", async () => {
    await apiTask(sim, "POST", `${VM}/951/status/start`);
    await hostReboot(sim.dir);
    const status = (await api(sim, "GET", `${VM}/951/status/current`)).data as Record<string, unknown>;
    assert.equal(status["status"], "stopped");
    assert.equal(await active("vm-950-disk-0"), "");
    assert.equal(existsSync(dev("vm-950-disk-0")), false);
    // pvesm path does not activate: it prints the path of a device that is not there.
    assert.equal(await tool(sim, "pvesm", ["path", "local-lvm:vm-950-disk-0"]), `${dev("vm-950-disk-0")}\n`);
    await tool(sim, "lvchange", ["-ay", "-K", "pve/vm-950-disk-0"]);
    assert.equal(await active("vm-950-disk-0"), "active");
    assert.ok(existsSync(dev("vm-950-disk-0")));
    await tool(sim, "lvchange", ["-an", "pve/vm-950-disk-0"]);
    assert.equal(existsSync(dev("vm-950-disk-0")), false);
    // Starting a VM activates its LVs, and an LV in use cannot be deactivated.
    await apiTask(sim, "POST", `${VM}/951/status/start`);
    assert.equal(await active("vm-951-disk-0"), "active");
    const inUse = await runTool(sim, "lvchange", ["-an", "pve/vm-951-disk-0"]);
    assert.equal(inUse.code, 5);
    assert.equal(inUse.stderr, "  Logical volume pve/vm-951-disk-0 in use.\n");
    await apiTask(sim, "POST", `${VM}/951/status/stop`);
    // The control CLI does the same reboot.
    execFileSync(process.execPath, [PVESIM_CLI, "control", sim.dir, "--host-reboot", "pve"]);
    assert.equal(await active("vm-951-disk-0"), "");
  });

  it("a rollback recreates the LV active; template base LVs skip activation unless -K", async () => {
    await apiTask(sim, "POST", `${VM}/950/snapshot`, { snapname: "s1" });
    await hostReboot(sim.dir);
    assert.equal((await apiTask(sim, "POST", `${VM}/950/snapshot/s1/rollback`)).exitstatus, "OK");
    assert.equal(await active("vm-950-disk-0"), "active");

    assert.equal((await apiTask(sim, "POST", `${VM}/952/template`)).exitstatus, "OK");
    const attr = (await tool(sim, "lvs", ["--noheadings", "-o", "lv_attr", "pve/base-952-disk-0"])).trim();
    assert.equal(attr, "Vri---tz-k");
    await tool(sim, "lvchange", ["-ay", "pve/base-952-disk-0"]);
    assert.equal(await active("base-952-disk-0"), "", "an activation-skipped LV stays inactive without -K");
    await tool(sim, "lvchange", ["-ay", "-K", "pve/base-952-disk-0"]);
    assert.equal(await active("base-952-disk-0"), "active");
  });

  it("unknown LVs and volume groups fail like LVM", async () => {
    const lv = await runTool(sim, "lvs", ["pve/vm-1-disk-9"]);
    assert.equal(lv.code, 5);
    assert.equal(lv.stderr, '  Failed to find logical volume "pve/vm-1-disk-9"\n');
    const vg = await runTool(sim, "lvchange", ["-ay", "nope/vm-1-disk-0"]);
    assert.equal(vg.code, 5);
    assert.equal(vg.stderr, '  Volume group "nope" not found\n  Cannot process volume group nope\n');
  });
});
