import assert from "node:assert/strict";
import { closeSync, existsSync, openSync, readSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { addAcl, addToken } from "../pvesim/access.js";
import { PveError } from "../pvesim/errors.js";
import {
  api,
  apiTask,
  createSim,
  inspect,
  runTool,
  type Sim,
  setControl,
  waitTask,
} from "../pvesim/harness.js";
import { storageRoot } from "../pvesim/paths.js";
import { DEFAULT_STORAGES, parseStorageSpecs } from "../pvesim/seed.js";

const FAST = { clone_ms: 40, full_clone_ms: 60, start_ms: 20, stop_ms: 20, task_ms: 20, agent_ready_ms: 40 };
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

function writeAt(path: string, text: string, at = 0): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, Buffer.from(text), 0, text.length, at);
  } finally {
    closeSync(fd);
  }
}

function readAt(path: string, length: number, at = 0): string {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, at);
    return buf.toString();
  } finally {
    closeSync(fd);
  }
}

async function config(
  sim: Sim,
  vmid: number,
  params: Record<string, string> = {},
): Promise<Record<string, unknown>> {
  return (await api(sim, "GET", `${VM}/${vmid}/config`, params)).data as Record<string, unknown>;
}

const holder = (
  storage: string,
  gib: string,
  extra: Record<string, string> = {},
): Record<string, string> => ({
  name: "ws-demo",
  scsihw: "virtio-scsi-pci",
  scsi0: `${storage}:${gib}`,
  onboot: "0",
  protection: "1",
  tags: "agentlab-ws",
  description: "agentlab workspace holder - do not destroy",
  ...extra,
});

describe("pvesim: VM create (qmcreate)", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST });
  });
  after(() => sim.cleanup());

  it("creates a holder VM with a new disk; the VM shows lock: create while the task runs", async () => {
    await setControl(sim.dir, { task_ms: 300 });
    const started = await api(sim, "POST", VM, { vmid: "500", ...holder("local-lvm", "1") });
    const upid = String(started.data);
    assert.match(upid, /^UPID:pve:[0-9A-F]{8}:[0-9A-F]{8,9}:[0-9A-F]{8}:qmcreate:500:root@pam:$/);
    assert.deepEqual(Object.keys(await config(sim, 500)).sort(), ["digest", "lock"]);
    assert.equal((await config(sim, 500))["lock"], "create");
    const task = await waitTask(sim, upid);
    await setControl(sim.dir, { task_ms: FAST.task_ms });
    assert.equal(task.exitstatus, "OK", task.log.join("\n"));
    assert.ok(task.log.includes('  Logical volume "vm-500-disk-0" created.'));
    const c = await config(sim, 500);
    assert.equal(c["scsi0"], "local-lvm:vm-500-disk-0,size=1G");
    assert.equal(c["protection"], 1);
    assert.equal(c["onboot"], 0);
    assert.equal(c["tags"], "agentlab-ws");
    assert.equal(c["name"], "ws-demo");
    assert.equal(c["boot"], "order=scsi0");
    assert.equal(c["lock"], undefined);
    assert.match(String(c["smbios1"]), /^uuid=[0-9a-f-]{36}$/);
    assert.match(String(c["meta"]), /^creation-qemu=/);
    const file = join(storageRoot(sim.dir, "local-lvm"), "vm-500-disk-0");
    assert.equal(statSync(file).size, 1024 ** 3);
    assert.ok(statSync(file).blocks * 512 < 1024 * 1024, "a new disk is sparse (reads as zeros)");
  });

  it("refuses a taken VMID at once, in Proxmox's words, and leaves the VM alone", async () => {
    await rejects(
      api(sim, "POST", VM, { vmid: "500", scsi0: "local-lvm:1" }),
      500,
      "unable to create VM 500 - VM 500 already exists on node 'pve'",
    );
    await rejects(
      api(sim, "POST", VM, { vmid: "9000", scsi0: "local-zfs:1" }),
      500,
      "unable to create VM 9000 - VM 9000 already exists on node 'pve'",
    );
    assert.equal((await config(sim, 500))["scsi0"], "local-lvm:vm-500-disk-0,size=1G");
  });

  it("qm create and pvesh create work through the same route; dir storage gives a qcow2 volume", async () => {
    const qm = await runTool(sim, "qm", [
      "create",
      "501",
      "--name",
      "ws-qm",
      "--scsihw",
      "virtio-scsi-pci",
      "--scsi0",
      "local:2,format=qcow2",
      "--onboot",
      "0",
      "--protection",
      "1",
      "--tags",
      "agentlab-ws",
    ]);
    assert.equal(qm.code, 0, qm.stderr);
    assert.match(qm.stdout, /^Formatting '.*\/images\/501\/vm-501-disk-0\.qcow2', fmt=qcow2 /);
    const shown = await runTool(sim, "qm", ["config", "501"]);
    assert.match(shown.stdout, /^scsi0: local:501\/vm-501-disk-0\.qcow2,size=2G$/m);
    const pvesh = await runTool(sim, "pvesh", [
      "create",
      "/nodes/pve/qemu",
      "--vmid",
      "502",
      "--scsi0",
      "local-zfs:1",
      "--protection",
      "1",
      "--output-format",
      "json",
    ]);
    assert.equal(pvesh.code, 0, pvesh.stderr);
    assert.match(pvesh.stdout.trim().split("\n").at(-1)!, /^"UPID:pve:.*:qmcreate:502:root@pam:"$/);
    assert.equal((await config(sim, 502))["scsi0"], "local-zfs:vm-502-disk-0,size=1G");
    const again = await runTool(sim, "qm", ["create", "502", "--scsi0", "local-zfs:1"]);
    assert.equal(again.code, 255);
    assert.equal(again.stderr, "unable to create VM 502 - VM 502 already exists on node 'pve'\n");
  });

  it("a failed create frees the volumes it made and removes the config", async () => {
    await setControl(sim.dir, {}, ["fail_task=qmcreate"]);
    const task = await apiTask(sim, "POST", VM, { vmid: "503", scsi0: "local-lvm:1", scsi1: "local-zfs:1" });
    assert.match(task.exitstatus ?? "", /^unable to create VM 503 - /);
    assert.equal((await inspect(sim.dir, (ctx) => ctx.state.vms["503"])) ?? null, null);
    const left = await inspect(sim.dir, (ctx) =>
      Object.values(ctx.state.volumes).filter((v) => v.vmid === 503),
    );
    assert.deepEqual(left, []);
    assert.equal(existsSync(join(storageRoot(sim.dir, "local-lvm"), "vm-503-disk-0")), false);
    // A bad drive fails inside the task the same way, after undoing the disk it had already made.
    const bad = await apiTask(sim, "POST", VM, {
      vmid: "503",
      scsi0: "local-zfs:1",
      scsi1: "local-zfs:vm-999-disk-9",
    });
    assert.equal(bad.exitstatus, "unable to create VM 503 - volume 'local-zfs:vm-999-disk-9' does not exist");
    assert.equal(existsSync(join(storageRoot(sim.dir, "local-zfs"), "vm-503-disk-0")), false);
    assert.equal((await inspect(sim.dir, (ctx) => ctx.state.vms["503"])) ?? null, null);
  });

  it("a config may reference an existing volume instead of allocating one", async () => {
    const alloc = await api(sim, "POST", "/nodes/pve/storage/local-zfs/content", {
      vmid: "504",
      filename: "vm-504-disk-0",
      size: "1G",
    });
    assert.equal(alloc.data, "local-zfs:vm-504-disk-0");
    const task = await apiTask(sim, "POST", VM, {
      vmid: "504",
      scsi0: "local-zfs:vm-504-disk-0",
      protection: "1",
    });
    assert.equal(task.exitstatus, "OK", task.log.join("\n"));
    assert.equal((await config(sim, 504))["scsi0"], "local-zfs:vm-504-disk-0,size=1G");
  });

  it("needs VM.Allocate, and Datastore.AllocateSpace for a new disk", async () => {
    await inspect(sim.dir, (ctx) => {
      addToken(ctx.state, "creator@pve!tok", false);
      addAcl(ctx.state, "/vms", "PVEVMAdmin", "creator@pve");
    });
    const auth = { user: "creator@pve", tokenid: "tok" };
    await rejects(
      api(sim, "POST", VM, { vmid: "505", scsi0: "local-zfs:1" }, auth),
      403,
      "Permission check failed (/storage/local-zfs, Datastore.AllocateSpace)",
    );
    await inspect(sim.dir, (ctx) => addAcl(ctx.state, "/storage", "PVEDatastoreUser", "creator@pve"));
    const ok = await api(sim, "POST", VM, { vmid: "505", scsi0: "local-zfs:1" }, auth);
    assert.equal((await waitTask(sim, String(ok.data))).exitstatus, "OK");
  });
});

describe("pvesim: protection blocks disk removal", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    await apiTask(sim, "POST", VM, { vmid: "600", ...holder("local-zfs", "1") });
  });
  after(() => sim.cleanup());

  it("refuses to remove a drive or an unused disk of a protected VM, and delete=protection lifts it", async () => {
    await rejects(
      api(sim, "PUT", `${VM}/600/config`, { delete: "scsi0" }),
      500,
      "can't remove drive 'scsi0' - protection mode enabled",
    );
    await rejects(
      api(sim, "PUT", `${VM}/600/unlink`, { idlist: "scsi0", force: "1" }),
      500,
      "can't remove drive 'scsi0' - protection mode enabled",
    );
    // Replacing the disk is not a removal: the old owned volume becomes unused0.
    await api(sim, "PUT", `${VM}/600/config`, { scsi0: "local-zfs:1" });
    const c = await config(sim, 600);
    assert.equal(c["unused0"], "local-zfs:vm-600-disk-0");
    await rejects(
      api(sim, "PUT", `${VM}/600/config`, { delete: "unused0" }),
      500,
      "can't remove unused disk 'local-zfs:vm-600-disk-0' - protection mode enabled",
    );
    const qm = await runTool(sim, "qm", ["set", "600", "--delete", "scsi0"]);
    assert.equal(qm.code, 255);
    assert.equal(qm.stderr, "can't remove drive 'scsi0' - protection mode enabled\n");
    await rejects(
      api(sim, "DELETE", `${VM}/600`, { purge: "1" }),
      500,
      "can't remove VM 600 - protection mode enabled",
    );
    await api(sim, "PUT", `${VM}/600/config`, { delete: "protection" });
    await api(sim, "PUT", `${VM}/600/config`, { delete: "unused0" });
    assert.equal(existsSync(join(storageRoot(sim.dir, "local-zfs"), "vm-600-disk-0")), false);
    assert.equal((await config(sim, 600))["unused0"], undefined);
  });
});

describe("pvesim: clones from snapshots and full copies", () => {
  let sim: Sim;
  before(async () => {
    sim = createSim({ knobs: FAST });
    for (const [vmid, storage] of [
      [700, "local-lvm"],
      [710, "local-zfs"],
      [720, "local"],
    ] as const) {
      const extra: Record<string, string> = storage === "local" ? { scsi0: "local:1,format=qcow2" } : {};
      const t = await apiTask(sim, "POST", VM, { vmid: String(vmid), ...holder(storage, "1", extra) });
      assert.equal(t.exitstatus, "OK", t.log.join("\n"));
    }
  });
  after(() => sim.cleanup());

  async function pathOf(vmid: number): Promise<string> {
    const c = await config(sim, vmid);
    const volid = String(c["scsi0"]).split(",")[0]!;
    const info = (await api(sim, "GET", `/nodes/pve/storage/${volid.split(":")[0]}/content/${volid}`))
      .data as Record<string, unknown>;
    return String(info["path"]);
  }

  /** Writes A, snapshots s1, writes B: the VM's disk now reads B, its snapshot s1 reads A. */
  async function twoStates(vmid: number): Promise<void> {
    writeAt(await pathOf(vmid), "AAAA");
    assert.equal((await apiTask(sim, "POST", `${VM}/${vmid}/snapshot`, { snapname: "s1" })).exitstatus, "OK");
    writeAt(await pathOf(vmid), "BBBB");
  }

  it("lvmthin: a linked clone of a non-template from a snapshot holds the snapshot's bytes", async () => {
    await twoStates(700);
    const linked = await apiTask(sim, "POST", `${VM}/700/clone`, {
      newid: "701",
      name: "ws-fork",
      snapname: "s1",
      full: "0",
    });
    assert.equal(linked.exitstatus, "OK", linked.log.join("\n"));
    assert.ok(linked.log.includes("create linked clone of drive scsi0 (local-lvm:vm-700-disk-0)"));
    assert.equal((await config(sim, 701))["scsi0"], "local-lvm:vm-701-disk-0,size=1G");
    assert.equal(readAt(await pathOf(701), 4), "AAAA");
    assert.equal(readAt(await pathOf(700), 4), "BBBB");
    // The clone is independent: writes do not leak either way, and the snapshot can go.
    writeAt(await pathOf(701), "CCCC");
    assert.equal(readAt(await pathOf(700), 4), "BBBB");
    assert.equal((await apiTask(sim, "DELETE", `${VM}/700/snapshot/s1`)).exitstatus, "OK");
    assert.equal(readAt(await pathOf(701), 4), "CCCC");
    // Without a snapshot a linked clone of a non-template is refused.
    const refused = await apiTask(sim, "POST", `${VM}/700/clone`, { newid: "702", full: "0" });
    assert.equal(
      refused.exitstatus,
      "Linked clone feature is not supported for 'local-lvm:vm-700-disk-0' (scsi0)",
    );
  });

  it("full clones from a snapshot: lvmthin and dir qcow2 copy the snapshot; zfspool refuses", async () => {
    await twoStates(720);
    const dir = await apiTask(sim, "POST", `${VM}/720/clone`, {
      newid: "721",
      snapname: "s1",
      full: "1",
      format: "qcow2",
    });
    assert.equal(dir.exitstatus, "OK", dir.log.join("\n"));
    assert.equal((await config(sim, 721))["scsi0"], "local:721/vm-721-disk-0.qcow2,size=1G");
    assert.equal(readAt(await pathOf(721), 4), "AAAA");

    await apiTask(sim, "POST", `${VM}/700/snapshot`, { snapname: "s2" });
    writeAt(await pathOf(700), "DDDD");
    const thin = await apiTask(sim, "POST", `${VM}/700/clone`, { newid: "703", snapname: "s2", full: "1" });
    assert.equal(thin.exitstatus, "OK", thin.log.join("\n"));
    assert.equal(readAt(await pathOf(703), 4), "BBBB");

    await twoStates(710);
    const zfs = await apiTask(sim, "POST", `${VM}/710/clone`, { newid: "711", snapname: "s1", full: "1" });
    assert.equal(
      zfs.exitstatus,
      "Full clone feature is not supported for a snapshot of 'local-zfs:vm-710-disk-0' (scsi0)",
    );
    assert.equal((await inspect(sim.dir, (ctx) => ctx.state.vms["711"])) ?? null, null);
    const zfsLinked = await apiTask(sim, "POST", `${VM}/710/clone`, {
      newid: "711",
      snapname: "s1",
      full: "0",
    });
    assert.equal(
      zfsLinked.exitstatus,
      "Linked clone feature is not supported for a snapshot of 'local-zfs:vm-710-disk-0' (scsi0)",
    );
  });

  it("a full clone of a stopped VM copies the current bytes", async () => {
    const full = await apiTask(sim, "POST", `${VM}/710/clone`, { newid: "712", full: "1", name: "ws-copy" });
    assert.equal(full.exitstatus, "OK", full.log.join("\n"));
    assert.equal(readAt(await pathOf(712), 4), "BBBB");
    assert.equal((await config(sim, 712))["name"], "ws-copy");
  });

  it("reads a snapshot's config; snapshot and current together are refused", async () => {
    const snap = await config(sim, 710, { snapshot: "s1" });
    assert.equal(snap["scsi0"], "local-zfs:vm-710-disk-0,size=1G");
    assert.equal(typeof snap["snaptime"], "string");
    const qm = await runTool(sim, "qm", ["config", "710", "--snapshot", "s1"]);
    assert.match(qm.stdout, /^scsi0: local-zfs:vm-710-disk-0,size=1G$/m);
    const both = await rejects(
      api(sim, "GET", `${VM}/710/config`, { snapshot: "s1", current: "1" }),
      400,
      "Parameter verification failed.",
    );
    assert.equal(both.errors?.["snapshot"], "cannot use 'snapshot' parameter with 'current'");
    await rejects(
      api(sim, "GET", `${VM}/710/config`, { snapshot: "nope" }),
      500,
      "snapshot 'nope' does not exist",
    );
  });

  it("lists the running tasks of a VM with source=active", async () => {
    await setControl(sim.dir, { task_ms: 400 });
    const started = String((await api(sim, "POST", `${VM}/710/snapshot`, { snapname: "busy" })).data);
    const active = (await api(sim, "GET", "/nodes/pve/tasks", { vmid: "710", source: "active" }))
      .data as Array<Record<string, unknown>>;
    await setControl(sim.dir, { task_ms: FAST.task_ms });
    assert.deepEqual(
      active.map((t) => [t["upid"], t["type"], t["status"], t["endtime"]]),
      // Tasks.pm:233: a running task in the active list has status "RUNNING".
      [[started, "qmsnapshot", "RUNNING", undefined]],
    );
    await waitTask(sim, started);
    const after = (await api(sim, "GET", "/nodes/pve/tasks", { vmid: "710", source: "active" }))
      .data as unknown[];
    assert.deepEqual(after, []);
    // Finished but not yet archived: still listed, with its status (Tasks.pm:228-236).
    await setControl(sim.dir, { task_archive_ms: 3_600_000 });
    try {
      const lingering = (await api(sim, "GET", "/nodes/pve/tasks", { vmid: "710", source: "active" }))
        .data as Array<Record<string, unknown>>;
      const done = lingering.find((t) => t["upid"] === started);
      assert.deepEqual([done?.["status"], typeof done?.["endtime"]], ["OK", "number"]);
    } finally {
      await setControl(sim.dir, { task_archive_ms: 0 });
    }
  });
});

describe("pvesim: storage configuration and storages without snapshots", () => {
  let sim: Sim;
  before(() => {
    sim = createSim({ knobs: FAST, storages: [...DEFAULT_STORAGES, "thick:lvm:vmdata"] });
  });
  after(() => sim.cleanup());

  it("GET /storage/{storage} gives the pool, volume group and path the host tools need", async () => {
    const get = async (id: string) =>
      (await api(sim, "GET", `/storage/${id}`)).data as Record<string, unknown>;
    const zfs = await get("local-zfs");
    assert.equal(zfs["type"], "zfspool");
    assert.equal(zfs["pool"], "rpool/data");
    const thin = await get("local-lvm");
    assert.equal(thin["vgname"], "pve");
    assert.equal(thin["thinpool"], "data");
    assert.equal((await get("local"))["path"], storageRoot(sim.dir, "local"));
    const thick = await get("thick");
    assert.equal(thick["type"], "lvm");
    assert.equal(thick["vgname"], "vmdata");
    await rejects(api(sim, "GET", "/storage/nope"), 500, "storage 'nope' does not exist");
    const pvesh = await runTool(sim, "pvesh", ["get", "/storage/local-lvm", "--output-format", "json"]);
    assert.equal(JSON.parse(pvesh.stdout)["thinpool"], "data");
    const types = ((await api(sim, "GET", "/nodes/pve/storage")).data as Array<Record<string, unknown>>)
      .map((s) => s["type"])
      .sort();
    assert.deepEqual(types, ["dir", "lvm", "lvmthin", "zfspool"]);
  });

  it("init --storages takes the defaults by name and ID:TYPE[:ARG]; bad specs are refused clearly", () => {
    const specs = parseStorageSpecs([
      "local-zfs",
      "fast:lvmthin:ssd/pool",
      "tank:zfspool:tank/vms",
      "scratch:dir",
    ]);
    assert.deepEqual(
      specs.map((s) => [s.id, s.type, s.vgname ?? s.pool ?? "", s.thinpool ?? ""]),
      [
        ["local-zfs", "zfspool", "rpool/data", ""],
        ["fast", "lvmthin", "ssd", "pool"],
        ["tank", "zfspool", "tank/vms", ""],
        ["scratch", "dir", "", ""],
      ],
    );
    assert.throws(() => parseStorageSpecs(["xy:btrfs"]), /bad storage 'xy:btrfs': unknown type 'btrfs'/);
    assert.throws(
      () => parseStorageSpecs(["local-lvm", "other:lvm:pve"]),
      /two storages use the same volume group pve/,
    );
    assert.throws(() => parseStorageSpecs(["ab:lvmthin:novg"]), /lvmthin wants VG\/THINPOOL/);
    assert.throws(() => createSim({ storages: ["local"] }), /the template's disks live on local-zfs/);
  });

  it("thick LVM and raw images on dir cannot snapshot; thick LVM cannot clone linked", async () => {
    for (const [vmid, scsi0] of [
      [800, "thick:1"],
      [801, "local:1,format=raw"],
    ] as const) {
      const created = await apiTask(sim, "POST", VM, { vmid: String(vmid), scsi0 });
      assert.equal(created.exitstatus, "OK", created.log.join("\n"));
      const snap = await apiTask(sim, "POST", `${VM}/${vmid}/snapshot`, { snapname: "s1" });
      assert.equal(snap.exitstatus, "snapshot feature is not available");
      assert.equal((await config(sim, vmid))["lock"], undefined);
    }
    assert.equal((await config(sim, 800))["scsi0"], "thick:vm-800-disk-0,size=1G");
    assert.equal((await config(sim, 801))["scsi0"], "local:801/vm-801-disk-0.raw,size=1G");
    const linked = await apiTask(sim, "POST", `${VM}/800/clone`, { newid: "802", full: "0" });
    assert.equal(
      linked.exitstatus,
      "Linked clone feature is not supported for 'thick:vm-800-disk-0' (scsi0)",
    );
    const full = await apiTask(sim, "POST", `${VM}/800/clone`, { newid: "802", full: "1" });
    assert.equal(full.exitstatus, "OK", full.log.join("\n"));
    assert.equal((await config(sim, 802))["scsi0"], "thick:vm-802-disk-0,size=1G");
  });
});
