import assert from "node:assert/strict";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, runTool, setControl } from "../pvesim/harness.js";
import { createWorkspace, volumeBackingFile, workspaceEvents } from "./workspace-volume.js";

/**
 * Workspace snapshot create/list/restore through the real CLI and daemon on the simulator, both
 * backends, on the three supported storage types. The bytes are written straight into the volume
 * file the simulator keeps, as a guest writing to /work would.
 */

interface WorkspaceBody {
  id: string;
  name: string;
  state: string;
  storage: string;
  volid: string;
  holder_vmid: number;
  attached_vmid?: number;
  lease_owner?: string;
}
interface SnapshotBody {
  name: string;
  kind: string;
  state?: string;
  created_at?: string;
  restorable: boolean;
  reason?: string;
}
interface ErrorBody {
  code: string;
  message: string;
  hint: string;
  details: Record<string, unknown>;
}

const MARK_AT = 3 * 1024 * 1024;

async function writeMark(h: SimHost, ws: WorkspaceBody, text: string): Promise<void> {
  const fd = openSync(await volumeBackingFile(h, ws.volid), "r+");
  try {
    const bytes = Buffer.alloc(64);
    bytes.write(text);
    writeSync(fd, bytes, 0, bytes.length, MARK_AT);
  } finally {
    closeSync(fd);
  }
}

async function readMark(h: SimHost, ws: WorkspaceBody): Promise<string> {
  const fd = openSync(await volumeBackingFile(h, ws.volid), "r");
  try {
    const bytes = Buffer.alloc(64);
    readSync(fd, bytes, 0, bytes.length, MARK_AT);
    return bytes.toString().replace(/\0+$/, "");
  } finally {
    closeSync(fd);
  }
}

async function holderState(h: SimHost, vmid: number): Promise<{ lock?: string; snapshots: string[] }> {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    if (!vm) throw new Error(`no VM ${vmid}`);
    return {
      ...(vm.config.lock ? { lock: vm.config.lock } : {}),
      snapshots: Object.keys(vm.snapshots).sort(),
    };
  });
}

async function snapshot(h: SimHost, ws: string, name: string): Promise<SnapshotBody> {
  const made = await h.json<{ workspace: string; snapshot: SnapshotBody }>([
    "workspace",
    "snapshot",
    "create",
    ws,
    name,
  ]);
  assert.equal(made.code, 0, `${made.stderr}${JSON.stringify(made.body)}`);
  return made.body.snapshot;
}

async function snapshotNames(h: SimHost, ws: string): Promise<SnapshotBody[]> {
  const listed = await h.json<{ snapshots: SnapshotBody[] }>(["workspace", "snapshot", "list", ws]);
  assert.equal(listed.code, 0, listed.stderr);
  return listed.body.snapshots;
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`workspace snapshots through the CLI and daemon on the simulator (${kind} backend)`, () => {
    let h: SimHost;

    before(async () => {
      h = await startSimHost(kind);
      await setControl(h.sim.dir, FAST_KNOBS);
    });
    after(async () => {
      await h.stop();
    });

    for (const storage of ["local-zfs", "local-lvm", "local"]) {
      test(`${storage}: write A, snapshot, write B, restore gives A`, async () => {
        const ws = await createWorkspace(h, `snap-${storage}`, storage);
        await writeMark(h, ws, "A: before the snapshot");
        const taken = await snapshot(h, ws.name, "s1");
        assert.equal(taken.name, "s1");
        assert.equal(taken.kind, "user");
        assert.equal(taken.state, "ready");
        assert.ok(taken.created_at, "the snapshot carries Proxmox's snaptime");
        assert.deepEqual((await holderState(h, ws.holder_vmid)).snapshots, ["s1"]);

        await writeMark(h, ws, "B: after the snapshot");
        // It discards data like destroy does: nobody can answer here, so without --force it refuses.
        const asked = await h.json<ErrorBody>(["workspace", "snapshot", "restore", ws.name, "s1"]);
        assert.equal(asked.code, 2);
        assert.equal(asked.body.code, "CONFIRMATION_REQUIRED");
        assert.equal(
          asked.body.message,
          "refusing to restore a workspace snapshot without --force in --json mode",
        );
        assert.equal(await readMark(h, ws), "B: after the snapshot", "nothing was rolled back");
        const restored = await h.cli(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
        assert.equal(restored.code, 0, restored.stderr);
        assert.equal(restored.stdout, `workspace ${ws.name} restored to snapshot s1\n`);
        assert.equal(await readMark(h, ws), "A: before the snapshot");
        assert.equal((await holderState(h, ws.holder_vmid)).lock, undefined);

        const listed = await snapshotNames(h, ws.name);
        assert.deepEqual(
          listed.map((s) => [s.name, s.kind, s.state, s.restorable]),
          [["s1", "user", "ready", true]],
        );
        const events = workspaceEvents(h, ws.id);
        assert.ok(events.includes("workspace.snapshot.created"), String(events));
        assert.ok(events.includes("workspace.snapshot.restored"), String(events));
      });
    }

    test("ZFS refuses to restore an older snapshot, names the newer ones, and changes nothing", async () => {
      const ws = await createWorkspace(h, "zfs-latest", "local-zfs");
      await writeMark(h, ws, "A");
      await snapshot(h, ws.name, "s1");
      await writeMark(h, ws, "B");
      await snapshot(h, ws.name, "s2");
      await writeMark(h, ws, "C");

      const refused = await h.json<ErrorBody>(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.equal(refused.code, 1);
      assert.equal(refused.body.code, "SNAPSHOT_NOT_LATEST");
      assert.equal(
        refused.body.message,
        `cannot restore "s1": workspace ${ws.name} is on ZFS storage local-zfs, which restores only the newest snapshot; "s2" was taken after it`,
      );
      assert.equal(
        refused.body.hint,
        `nothing was changed. To keep s2, fork instead: agentlab workspace fork ${ws.name} --name <new> --from-snapshot s1`,
      );
      const text = await h.cli(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.equal(text.code, 1);
      assert.match(text.stderr, /^error: cannot restore "s1": .* "s2" was taken after it$/m);

      assert.equal(await readMark(h, ws), "C", "the data is unchanged");
      const holder = await holderState(h, ws.holder_vmid);
      assert.deepEqual(holder.snapshots, ["s1", "s2"], "no snapshot was deleted to make it work");
      assert.equal(holder.lock, undefined);
      const listed = await snapshotNames(h, ws.name);
      assert.deepEqual(
        listed.map((s) => [s.name, s.restorable]),
        [
          ["s1", false],
          ["s2", true],
        ],
      );
      const shown = await h.json<WorkspaceBody & { operation?: unknown }>(["workspace", "show", ws.name]);
      assert.equal(shown.body.lease_owner, undefined, "the refusal left no lease");
      assert.equal(shown.body.operation, undefined, "and no operation");

      // The newest one restores.
      const latest = await h.cli(["workspace", "snapshot", "restore", ws.name, "s2", "--force"]);
      assert.equal(latest.code, 0, latest.stderr);
      assert.equal(await readMark(h, ws), "B");
    });

    test("lvmthin restores an older snapshot and keeps the newer ones", async () => {
      const ws = await createWorkspace(h, "lvm-older", "local-lvm");
      await writeMark(h, ws, "A");
      await snapshot(h, ws.name, "s1");
      await writeMark(h, ws, "B");
      await snapshot(h, ws.name, "s2");
      await writeMark(h, ws, "C");
      const restored = await h.cli(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.equal(restored.code, 0, restored.stderr);
      assert.equal(await readMark(h, ws), "A");
      assert.deepEqual((await holderState(h, ws.holder_vmid)).snapshots, ["s1", "s2"]);
      const again = await h.cli(["workspace", "snapshot", "restore", ws.name, "s2", "--force"]);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(await readMark(h, ws), "B");
    });

    test("refusals: a taken name, a reserved name, an unknown snapshot, raw on dir", async () => {
      const ws = await createWorkspace(h, "snap-refusals", "local-lvm");
      await snapshot(h, ws.name, "s1");
      const taken = await h.json<ErrorBody>(["workspace", "snapshot", "create", ws.name, "s1"]);
      assert.equal(taken.code, 1);
      assert.equal(taken.body.code, "CONFLICT");
      assert.equal(taken.body.message, "workspace snapshot already exists");

      const reserved = await h.json<ErrorBody>([
        "workspace",
        "snapshot",
        "create",
        ws.name,
        "agentlab-fork-1",
      ]);
      assert.equal(reserved.body.code, "INVALID_PARAMS");
      assert.match(reserved.body.message, /reserved for agentlab/);
      const current = await h.json<ErrorBody>(["workspace", "snapshot", "create", ws.name, "current"]);
      assert.equal(current.body.code, "INVALID_PARAMS");
      assert.deepEqual((await holderState(h, ws.holder_vmid)).snapshots, ["s1"]);

      // A running holder means a second QEMU on the disk: nothing is snapshotted then.
      const started = await runTool(h.sim, "qm", ["start", String(ws.holder_vmid)]);
      assert.equal(started.code, 0, started.stderr);
      const running = await h.json<ErrorBody>(["workspace", "snapshot", "create", ws.name, "s2"]);
      assert.equal(running.body.code, "CONFLICT");
      assert.equal(running.body.message, `holder VM ${ws.holder_vmid} of workspace ${ws.name} is running`);
      assert.equal((await runTool(h.sim, "qm", ["stop", String(ws.holder_vmid)])).code, 0);
      const afterRunning = await h.json<WorkspaceBody & { operation?: unknown }>([
        "workspace",
        "show",
        ws.name,
      ]);
      assert.equal(afterRunning.body.lease_owner, undefined, "the refusal released the lease");
      assert.equal(afterRunning.body.operation, undefined);
      assert.deepEqual(
        (await snapshotNames(h, ws.name)).map((s) => s.name),
        ["s1"],
        "and left no record",
      );

      const missing = await h.json<ErrorBody>([
        "workspace",
        "snapshot",
        "restore",
        ws.name,
        "nope",
        "--force",
      ]);
      assert.equal(missing.code, 1);
      assert.equal(missing.body.code, "SNAPSHOT_NOT_FOUND");
      assert.equal(missing.body.hint, `list its snapshots: agentlab workspace snapshot list ${ws.name}`);

      // A raw image on dir storage has no snapshots (design §4); say which storage, type and format.
      const raw = await createWorkspace(h, "snap-raw", "local");
      const db = new Database(h.host.dbPath);
      db.prepare("UPDATE workspaces SET format = 'raw' WHERE id = ?").run(raw.id);
      db.close();
      const unsupported = await h.json<ErrorBody>(["workspace", "snapshot", "create", raw.name, "s1"]);
      assert.equal(unsupported.body.code, "STORAGE_UNSUPPORTED");
      assert.equal(
        unsupported.body.message,
        'storage "local" is of type dir with raw volumes; workspaces support zfspool, lvmthin and dir (qcow2)',
      );
      assert.deepEqual((await holderState(h, raw.holder_vmid)).snapshots, []);
    });

    test("an attached workspace is refused with the troubleshooting guide's words", async () => {
      const ws = await createWorkspace(h, "snap-attached", "local-zfs");
      await snapshot(h, ws.name, "s1");
      const sandbox = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(sandbox.code, 0, sandbox.stderr);
      const vmid = sandbox.body.vmid;
      const attached = await h.cli(["workspace", "attach", ws.name, String(vmid)]);
      assert.equal(attached.code, 0, attached.stderr);

      for (const args of [
        ["workspace", "snapshot", "create", ws.name, "s2"],
        ["workspace", "snapshot", "restore", ws.name, "s1", "--force"],
      ]) {
        const refused = await h.json<ErrorBody>(args);
        assert.equal(refused.code, 1);
        assert.equal(refused.body.code, "WORKSPACE_ATTACHED");
        assert.equal(
          refused.body.message,
          `workspace must be detached for snapshots: attached to sandbox ${vmid}`,
        );
        assert.equal(refused.body.hint, `detach it first: agentlab workspace detach ${ws.name}`);
      }
      const text = await h.cli(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.match(
        text.stderr,
        /^error: workspace must be detached for snapshots: attached to sandbox \d+$/m,
      );
      assert.deepEqual((await holderState(h, ws.holder_vmid)).snapshots, ["s1"]);

      // The guide's way out: detach, restore, attach again.
      const detached = await h.cli(["workspace", "detach", ws.name]);
      assert.equal(detached.code, 0, detached.stderr);
      const restored = await h.cli(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.equal(restored.code, 0, restored.stderr);
      const reattached = await h.cli(["workspace", "attach", ws.name, String(vmid)]);
      assert.equal(reattached.code, 0, reattached.stderr);

      // A snapshot of the sandbox taken by hand covers the workspace volume too (design F4): ZFS then
      // has a newer snapshot of the volume that the holder does not list, and Proxmox's own check
      // refuses the rollback. That refusal reads as SNAPSHOT_NOT_LATEST, quoting Proxmox.
      const stopped = await h.cli(["sandbox", "stop", String(vmid)]);
      assert.equal(stopped.code, 0, stopped.stderr);
      const byHand = await runTool(h.sim, "qm", ["snapshot", String(vmid), "handmade"]);
      assert.equal(byHand.code, 0, byHand.stderr);
      assert.equal((await h.cli(["workspace", "detach", ws.name])).code, 0);
      await writeMark(h, ws, "after the hand-made snapshot");
      const blocked = await h.json<ErrorBody>(["workspace", "snapshot", "restore", ws.name, "s1", "--force"]);
      assert.equal(blocked.code, 1);
      assert.equal(blocked.body.code, "SNAPSHOT_NOT_LATEST");
      assert.equal(
        blocked.body.message,
        `cannot restore "s1": workspace ${ws.name} is on ZFS storage local-zfs, which restores only the newest snapshot; Proxmox says: can't rollback, 's1' is not most recent snapshot on '${ws.volid}'`,
      );
      assert.equal(await readMark(h, ws), "after the hand-made snapshot");
      const shown = await h.json<WorkspaceBody>(["workspace", "show", ws.name]);
      assert.equal(shown.body.lease_owner, undefined);
      assert.ok(workspaceEvents(h, ws.id).includes("workspace.snapshot.restore_failed"));
      const destroyed = await h.cli(["sandbox", "destroy", String(vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
    });
  });
}
