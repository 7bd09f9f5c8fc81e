import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, runTool, setControl } from "../pvesim/harness.js";
import { findVolume } from "../pvesim/storage.js";
import { createWorkspace, forkDigest, volumeBackingFile, writeForkData } from "./workspace-volume.js";

/**
 * `workspace fork` through the real CLI and daemon on the simulator: per storage type, the fork holds
 * the source's data (current state or a snapshot), later writes on either side stay on that side, and
 * copy_mode says how it was copied. The shell backend runs with host tools (the simulator's `zfs` is
 * on the daemon's PATH); the API backend runs without, as a daemon off the node would.
 */

interface WorkspaceBody {
  id: string;
  name: string;
  state: string;
  storage: string;
  volid: string;
  holder_vmid: number;
  forked_from?: string;
  fork_origin_snapshot?: string;
  copy_mode?: "cow" | "full";
  lease_owner?: string;
}
interface ErrorBody {
  code: string;
  message: string;
  hint: string;
  details: Record<string, unknown>;
}
interface SnapshotBody {
  name: string;
  kind: string;
}

const MiB = 1024 * 1024;
const writeData = (h: SimHost, ws: WorkspaceBody, data: Buffer) => writeForkData(h, ws.volid, data);
const digest = (h: SimHost, ws: WorkspaceBody) => forkDigest(h, ws.volid);

async function simVm(h: SimHost, vmid: number) {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    return vm ? { config: { ...vm.config }, snapshots: Object.keys(vm.snapshots).sort() } : undefined;
  });
}

async function fork(h: SimHost, source: string, name: string, fromSnapshot?: string): Promise<WorkspaceBody> {
  const args = [
    "workspace",
    "fork",
    source,
    "--name",
    name,
    ...(fromSnapshot ? ["--from-snapshot", fromSnapshot] : []),
  ];
  const forked = await h.json<WorkspaceBody>(args);
  assert.equal(forked.code, 0, `${forked.stderr}${JSON.stringify(forked.body)}`);
  return forked.body;
}

async function snapshots(h: SimHost, ws: string): Promise<SnapshotBody[]> {
  const listed = await h.json<{ snapshots: SnapshotBody[] }>(["workspace", "snapshot", "list", ws]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.body.snapshots;
}

/** The fork equals the source now, and writes on either side stay there. */
async function assertIndependent(h: SimHost, source: WorkspaceBody, forked: WorkspaceBody): Promise<void> {
  const sourceBefore = await digest(h, source);
  const forkBefore = await digest(h, forked);
  await writeData(h, source, randomBytes(MiB));
  assert.equal(await digest(h, forked), forkBefore, "a write to the source does not reach the fork");
  const sourceNow = await digest(h, source);
  assert.notEqual(sourceNow, sourceBefore);
  await writeData(h, forked, randomBytes(MiB));
  assert.equal(await digest(h, source), sourceNow, "a write to the fork does not reach the source");
}

async function assertHolder(h: SimHost, ws: WorkspaceBody): Promise<void> {
  const vm = await simVm(h, ws.holder_vmid);
  assert.ok(vm, `holder VM ${ws.holder_vmid} exists`);
  assert.equal(vm.config.protection, "1", "the fork's holder is protected");
  assert.equal(vm.config.tags, "agentlab-ws");
  assert.equal(vm.config.name, `ws-${ws.name}`);
  assert.equal(String(vm.config.scsi0).split(",")[0], ws.volid);
  assert.match(
    ws.volid,
    new RegExp(`vm-${ws.holder_vmid}-disk-0`),
    "the fork's volume is owned by its holder",
  );
}

describe("workspace fork with host tools (shell backend)", () => {
  let h: SimHost;

  before(async () => {
    h = await startSimHost("shell", "host_tools: on\n");
    await setControl(h.sim.dir, {
      clone_ms: 50,
      full_clone_ms: 80,
      start_ms: 30,
      stop_ms: 20,
      agent_ready_ms: 60,
      task_ms: 20,
    });
  });
  after(async () => {
    await h.stop();
  });

  test("lvmthin, current state: a copy-on-write linked clone; the internal snapshot is gone", async () => {
    const source = await createWorkspace(h, "lvm-src", "local-lvm");
    await writeData(h, source, randomBytes(MiB));
    const forked = await fork(h, source.name, "lvm-fork");
    assert.equal(forked.copy_mode, "cow");
    assert.equal(forked.state, "ready");
    assert.equal(forked.forked_from, source.id);
    assert.equal(forked.fork_origin_snapshot, undefined);
    assert.notEqual(forked.holder_vmid, source.holder_vmid);
    assert.equal(await digest(h, forked), await digest(h, source));
    await assertHolder(h, forked);
    assert.deepEqual(await snapshots(h, source.name), [], "the internal agentlab-fork snapshot was dropped");
    assert.deepEqual((await simVm(h, source.holder_vmid))?.snapshots, []);
    await assertIndependent(h, source, forked);

    const shown = await h.json<WorkspaceBody & { forks: { name: string }[] }>([
      "workspace",
      "show",
      source.name,
    ]);
    assert.deepEqual(
      shown.body.forks.map((f) => f.name),
      ["lvm-fork"],
    );
    assert.equal(shown.body.lease_owner, undefined, "the fork's lease on the source is released");
  });

  test("lvmthin, from a snapshot: the fork holds the snapshot's data", async () => {
    const source = await createWorkspace(h, "lvm-snap-src", "local-lvm");
    await writeData(h, source, randomBytes(MiB));
    const atSnapshot = await digest(h, source);
    assert.equal((await h.cli(["workspace", "snapshot", "create", source.name, "s1"])).code, 0);
    await writeData(h, source, randomBytes(MiB));
    const forked = await fork(h, source.name, "lvm-snap-fork", "s1");
    assert.equal(forked.copy_mode, "cow");
    assert.equal(forked.fork_origin_snapshot, "s1");
    assert.equal(await digest(h, forked), atSnapshot);
    assert.deepEqual(
      (await snapshots(h, source.name)).map((s) => s.name),
      ["s1"],
    );
    await assertIndependent(h, source, forked);
  });

  test("zfspool with host tools: zfs clone, copy-on-write; the source cannot be destroyed under it", async () => {
    const source = await createWorkspace(h, "zfs-src", "local-zfs");
    await writeData(h, source, randomBytes(MiB));
    const text = await h.cli(["workspace", "fork", source.name, "--name", "zfs-fork"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^workspace zfs-fork forked from zfs-src \(copy-on-write\)$/m);
    const forked = (await h.json<WorkspaceBody>(["workspace", "show", "zfs-fork"])).body;
    assert.equal(forked.copy_mode, "cow");
    const base = `agentlab-fork-${forked.holder_vmid}`;
    assert.equal(forked.fork_origin_snapshot, base);
    assert.equal(await digest(h, forked), await digest(h, source));
    await assertHolder(h, forked);
    // The clone's origin stays: ZFS keeps it alive as long as the fork exists.
    assert.deepEqual(
      (await snapshots(h, source.name)).map((s) => [s.name, s.kind]),
      [[base, "fork-base"]],
    );
    const origin = await inspect(h.sim.dir, (ctx) => findVolume(ctx.state, "pve", forked.volid)?.origin);
    assert.match(String(origin), new RegExp(`vm-${source.holder_vmid}-disk-0@${base}$`));
    await assertIndependent(h, source, forked);

    const refused = await h.json<ErrorBody>(["workspace", "destroy", source.name, "--force"]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "CONFLICT");
    assert.match(refused.body.message, /zfs-fork/);

    // From a user snapshot the fork's origin is that snapshot.
    await writeData(h, source, randomBytes(MiB));
    const atSnapshot = await digest(h, source);
    assert.equal((await h.cli(["workspace", "snapshot", "create", source.name, "s1"])).code, 0);
    await writeData(h, source, randomBytes(MiB));
    const fromSnapshot = await fork(h, source.name, "zfs-fork-s1", "s1");
    assert.equal(fromSnapshot.copy_mode, "cow");
    assert.equal(fromSnapshot.fork_origin_snapshot, "s1");
    assert.equal(await digest(h, fromSnapshot), atSnapshot);
  });

  test("dir (qcow2): a full copy, of the current state or of a snapshot", async () => {
    const source = await createWorkspace(h, "dir-src", "local");
    await writeData(h, source, randomBytes(MiB));
    const text = await h.cli(["workspace", "fork", source.name, "--name", "dir-fork"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /^workspace dir-fork forked from dir-src \(full copy: this storage has no copy-on-write fork\)$/m,
    );
    const forked = (await h.json<WorkspaceBody>(["workspace", "show", "dir-fork"])).body;
    assert.equal(forked.copy_mode, "full");
    assert.equal(forked.volid, `local:${forked.holder_vmid}/vm-${forked.holder_vmid}-disk-0.qcow2`);
    assert.equal(await digest(h, forked), await digest(h, source));
    await assertHolder(h, forked);
    await assertIndependent(h, source, forked);

    const atSnapshot = await digest(h, source);
    assert.equal((await h.cli(["workspace", "snapshot", "create", source.name, "s1"])).code, 0);
    await writeData(h, source, randomBytes(MiB));
    const fromSnapshot = await fork(h, source.name, "dir-fork-s1", "s1");
    assert.equal(fromSnapshot.copy_mode, "full");
    assert.equal(await digest(h, fromSnapshot), atSnapshot);
  });

  test("refusals: a taken name, an unknown snapshot, an attached source", async () => {
    const source = await createWorkspace(h, "refuse-src", "local-lvm");
    const taken = await h.json<ErrorBody>(["workspace", "fork", source.name, "--name", source.name]);
    assert.equal(taken.code, 1);
    assert.equal(taken.body.code, "CONFLICT");
    assert.equal(taken.body.message, "workspace already exists");

    const missing = await h.json<ErrorBody>([
      "workspace",
      "fork",
      source.name,
      "--name",
      "nope",
      "--from-snapshot",
      "nope",
    ]);
    assert.equal(missing.body.code, "SNAPSHOT_NOT_FOUND");
    assert.equal(missing.body.hint, `list its snapshots: agentlab workspace snapshot list ${source.name}`);
    assert.equal((await h.json<ErrorBody>(["workspace", "show", "nope"])).body.code, "WORKSPACE_NOT_FOUND");

    const sandbox = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(sandbox.code, 0, sandbox.stderr);
    assert.equal((await h.cli(["workspace", "attach", source.name, String(sandbox.body.vmid)])).code, 0);
    const attached = await h.json<ErrorBody>(["workspace", "fork", source.name, "--name", "refuse-fork"]);
    assert.equal(attached.code, 1);
    assert.equal(attached.body.code, "WORKSPACE_ATTACHED");
    assert.equal(
      attached.body.message,
      `workspace must be detached for fork: attached to sandbox ${sandbox.body.vmid}`,
    );
    assert.equal(attached.body.hint, `detach it first: agentlab workspace detach ${source.name}`);
    assert.equal(
      (await h.json<ErrorBody>(["workspace", "show", "refuse-fork"])).body.code,
      "WORKSPACE_NOT_FOUND",
    );
    assert.equal((await h.cli(["sandbox", "destroy", String(sandbox.body.vmid)])).code, 0);
  });

  test("a failed copy rolls back what the fork made and leaves the source as it was", async () => {
    const source = await createWorkspace(h, "fail-src", "local-lvm");
    await writeData(h, source, randomBytes(MiB));
    const before = await digest(h, source);
    const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort());
    await setControl(h.sim.dir, {}, ["fail_clone"]);
    const failed = await h.json<ErrorBody>(["workspace", "fork", source.name, "--name", "fail-fork"]);
    assert.equal(failed.code, 1);
    assert.equal(failed.body.code, "PROXMOX_TASK_FAILED", JSON.stringify(failed.body));
    assert.equal(
      (await h.json<ErrorBody>(["workspace", "show", "fail-fork"])).body.code,
      "WORKSPACE_NOT_FOUND",
    );
    assert.deepEqual(
      await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort()),
      vmsBefore,
      "no VM was left",
    );
    assert.deepEqual(await snapshots(h, source.name), [], "the internal snapshot was removed");
    assert.equal(await digest(h, source), before);
    const shown = await h.json<WorkspaceBody & { operation?: unknown }>(["workspace", "show", source.name]);
    assert.equal(shown.body.lease_owner, undefined);
    assert.equal(shown.body.operation, undefined);
    // And the next fork works.
    const forked = await fork(h, source.name, "fail-fork");
    assert.equal(await digest(h, forked), before);
  });
});

describe("workspace fork without host tools (API backend)", () => {
  let h: SimHost;

  before(async () => {
    h = await startSimHost("api", "host_tools: off\n");
    await setControl(h.sim.dir, { clone_ms: 50, full_clone_ms: 80, task_ms: 20 });
  });
  after(async () => {
    await h.stop();
  });

  test("zfspool: a full copy of the current state; from a snapshot HOST_TOOLS_UNAVAILABLE, nothing made", async () => {
    const source = await createWorkspace(h, "api-zfs", "local-zfs");
    await writeData(h, source, randomBytes(MiB));
    const forked = await fork(h, source.name, "api-zfs-fork");
    assert.equal(forked.copy_mode, "full");
    assert.equal(await digest(h, forked), await digest(h, source));
    await assertHolder(h, forked);
    assert.deepEqual(await snapshots(h, source.name), []);
    await assertIndependent(h, source, forked);

    assert.equal((await h.cli(["workspace", "snapshot", "create", source.name, "s1"])).code, 0);
    const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort());
    const refused = await h.json<ErrorBody>([
      "workspace",
      "fork",
      source.name,
      "--name",
      "api-zfs-s1",
      "--from-snapshot",
      "s1",
    ]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "HOST_TOOLS_UNAVAILABLE");
    assert.equal(
      refused.body.message,
      "fork from a snapshot on zfspool storage needs zfs on node pve; run agentlabd on pve, or fork without --from-snapshot (full copy of the current state)",
    );
    assert.equal(
      (await h.json<ErrorBody>(["workspace", "show", "api-zfs-s1"])).body.code,
      "WORKSPACE_NOT_FOUND",
    );
    assert.deepEqual(await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort()), vmsBefore);
  });

  test("lvmthin: copy-on-write through the API alone", async () => {
    const source = await createWorkspace(h, "api-lvm", "local-lvm");
    await writeData(h, source, randomBytes(MiB));
    const forked = await fork(h, source.name, "api-lvm-fork");
    assert.equal(forked.copy_mode, "cow");
    assert.equal(await digest(h, forked), await digest(h, source));
    await assertHolder(h, forked);
    await assertIndependent(h, source, forked);
  });
});

describe("a failed zfs clone rolls back without freeing what the fork did not make (shell backend)", () => {
  let h: SimHost;

  before(async () => {
    h = await startSimHost("shell", "host_tools: on\n");
    await setControl(h.sim.dir, { task_ms: 20 });
  });
  after(async () => {
    await h.stop();
  });

  test("the holder goes, the internal snapshot goes, a volume named for the fork's VMID stays", async () => {
    const source = await createWorkspace(h, "zfs-fail-src", "local-zfs");
    await writeData(h, source, randomBytes(MiB));
    const before = await digest(h, source);
    // The fork's holder gets the next VMID. A volume already named for it (left by hand, no VM) makes
    // `zfs clone` fail after the holder VM exists.
    const forkVmid = source.holder_vmid + 1;
    const stray = await runTool(h.sim, "pvesm", [
      "alloc",
      "local-zfs",
      String(forkVmid),
      `vm-${forkVmid}-disk-0`,
      "1G",
    ]);
    assert.equal(stray.code, 0, stray.stderr);
    const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort());

    const failed = await h.json<ErrorBody>(["workspace", "fork", source.name, "--name", "zfs-fail-fork"]);
    assert.equal(failed.code, 1);
    assert.match(failed.body.message, /zfs clone .*dataset already exists/, JSON.stringify(failed.body));
    assert.equal(
      (await h.json<ErrorBody>(["workspace", "show", "zfs-fail-fork"])).body.code,
      "WORKSPACE_NOT_FOUND",
    );
    assert.deepEqual(
      await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort()),
      vmsBefore,
      "the fork's holder is gone",
    );
    assert.ok(
      await inspect(h.sim.dir, (ctx) => findVolume(ctx.state, "pve", `local-zfs:vm-${forkVmid}-disk-0`)),
      "the volume the fork did not make is still there",
    );
    assert.deepEqual(await snapshots(h, source.name), [], "the internal snapshot was removed");
    assert.equal(await digest(h, source), before);
  });
});
