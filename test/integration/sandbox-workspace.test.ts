import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { toDbTime } from "../../src/daemon/store/time.js";
import { startDaemon } from "../helpers/daemon.js";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, inspect, runTool, setControl } from "../pvesim/harness.js";
import { logLine, until } from "./maintenance-host.js";
import {
  type ErrorBody,
  fingerprint,
  type SandboxBody,
  simVm,
  volidOf,
  volumeFile,
  type WorkspaceBody,
  workspaceEvents,
  workspaceShow,
  writeData,
} from "./workspace-volume.js";

/**
 * The sandbox side of workspaces (docs/workspaces-design.md §5.5), through the real CLI and daemon on
 * the simulator, both backends: `sandbox new --workspace` takes `clean` before the attach; VM snapshots
 * of a sandbox that references a workspace are refused even with --force; rebind moves the workspace;
 * and no way of taking a sandbox down (destroy, destroy --force, prune after a hand `qm destroy`, the
 * lease reaper, a failed provisioning) ever takes the workspace's data with it.
 */

const PROFILE = "yolo-workspace";

for (const [kind, storage] of [
  ["shell", "local-lvm"],
  ["api", "local-zfs"],
] as Array<[BackendKind, string]>) {
  describe(`sandboxes with a workspace (${kind} backend, ${storage})`, () => {
    let h: SimHost;
    let ws: WorkspaceBody;
    let file: string;
    /** A daemon started by the reaper test, which replaces the first one. */
    let restarted: Awaited<ReturnType<typeof startDaemon>> | undefined;

    const newSandbox = async (): Promise<SandboxBody> => {
      const created = await h.json<SandboxBody>([
        "sandbox",
        "new",
        "--profile",
        PROFILE,
        "--workspace",
        "w1",
      ]);
      assert.equal(created.code, 0, created.stderr);
      return created.body;
    };

    /** The workspace is whole and detached: same bytes, holder protected and owning it, no lease. */
    const assertSurvived = async (print: string, vmid: number) => {
      assert.equal(fingerprint(file), print, "the workspace volume's bytes are unchanged");
      const holder = await simVm(h, ws.holder_vmid);
      assert.ok(holder, "the holder VM still exists");
      assert.equal(volidOf(holder.config.scsi0), ws.volid);
      assert.equal(holder.config.protection, "1");
      const now = await workspaceShow(h, "w1");
      assert.equal(now.attached_vmid, undefined, "recorded detached");
      assert.equal(now.last_attached_vmid, vmid);
      assert.equal(now.lease_owner, undefined, "the attachment lease is released");
      const row = await h.json<SandboxBody>(["sandbox", "show", String(vmid)]);
      assert.equal(row.body.state, "DESTROYED");
      assert.equal(row.body.workspace_id, undefined);
      assert.equal(await simVm(h, vmid), undefined, "the sandbox's VM is gone");
    };

    before(async () => {
      h = await startSimHost(kind, `workspace_storage: ${storage}\n`);
      await setControl(h.sim.dir, FAST_KNOBS);
      const created = await h.json<WorkspaceBody>(["workspace", "create", "--name", "w1", "--size", "1G"]);
      assert.equal(created.code, 0, created.stderr);
      ws = created.body;
      file = await volumeFile(h, ws.volid);
      writeData(file);
    });
    after(async () => {
      await restarted?.stop();
      await h.stop();
    });

    test("sandbox new --workspace: clean is taken without scsi1, then scsi1 references the holder's volume", async () => {
      const print = fingerprint(file);
      const sandbox = await newSandbox();
      assert.equal(sandbox.state, "RUNNING");
      assert.equal(sandbox.workspace_id, ws.id);
      const vm = await simVm(h, sandbox.vmid);
      assert.equal(volidOf(vm?.config.scsi1), ws.volid, "scsi1 references the holder's volume");
      assert.ok(vm?.snapshots.clean, "the clean snapshot exists");
      assert.equal(vm.snapshots.clean.scsi1, undefined, "clean does not cover the workspace");
      assert.ok(vm.snapshots.clean.scsi0, "clean covers the root disk");
      const shown = await workspaceShow(h, "w1");
      assert.equal(shown.attached_vmid, sandbox.vmid);
      assert.equal(shown.lease_owner, `sandbox:${sandbox.vmid}`);

      // VM snapshots would cover the workspace: refused even with --force, running or stopped.
      const save = await h.json<ErrorBody>([
        "sandbox",
        "snapshot",
        "save",
        "--force",
        String(sandbox.vmid),
        "x1",
      ]);
      assert.equal(save.code, 1);
      assert.equal(save.body.code, "WORKSPACE_ATTACHED");
      assert.equal(
        save.body.message,
        `sandbox ${sandbox.vmid} has workspace w1 attached (scsi1: ${ws.volid}); a VM snapshot would cover it too, so snapshots are refused even with --force`,
      );
      assert.match(save.body.hint, /^detach it first: agentlab workspace detach w1;/);
      const stop = await h.json<SandboxBody>(["sandbox", "stop", String(sandbox.vmid)]);
      assert.equal(stop.code, 0, stop.stderr);
      for (const args of [
        ["save", String(sandbox.vmid), "x1"],
        ["save", "--force", String(sandbox.vmid), "x1"],
        ["restore", "--force", String(sandbox.vmid), "clean"],
      ]) {
        const refused = await h.json<ErrorBody>(["sandbox", "snapshot", ...args]);
        assert.equal(refused.code, 1, args.join(" "));
        assert.equal(refused.body.code, "WORKSPACE_ATTACHED", args.join(" "));
      }
      assert.deepEqual(Object.keys((await simVm(h, sandbox.vmid))?.snapshots ?? {}), ["clean"]);
      // Revert rolls the root disk back and keeps the workspace attached: scsi1 taken out around the
      // rollback (else Proxmox would list it as unused0 and the sandbox would boot without /work).
      for (const running of [false, true]) {
        if (running) assert.equal((await h.json(["sandbox", "start", String(sandbox.vmid)])).code, 0);
        const revert = await h.json<{ restarted: boolean; sandbox: SandboxBody }>([
          "sandbox",
          "revert",
          "--force",
          String(sandbox.vmid),
        ]);
        assert.equal(revert.code, 0, revert.stderr);
        assert.equal(revert.body.restarted, running);
        assert.equal(revert.body.sandbox.state, running ? "RUNNING" : "STOPPED");
        const reverted = await simVm(h, sandbox.vmid);
        assert.equal(volidOf(reverted?.config.scsi1), ws.volid, "scsi1 is the workspace again");
        assert.deepEqual(
          Object.keys(reverted?.config ?? {}).filter((key) => key.startsWith("unused")),
          [],
          "no unused entry",
        );
        assert.equal(reverted?.config.parent, "clean");
        const kept = await workspaceShow(h, "w1");
        assert.equal(kept.attached_vmid, sandbox.vmid, "still recorded attached");
        assert.equal(kept.lease_owner, `sandbox:${sandbox.vmid}`, "the attachment lease is untouched");
        assert.equal(fingerprint(file), print, "the workspace's bytes are untouched");
      }
      assert.equal(
        workspaceEvents(h, ws.id).filter((kind) => kind === "workspace.kept_across_revert").length,
        2,
      );
      assert.equal((await h.json(["sandbox", "stop", String(sandbox.vmid)])).code, 0);
      // A disk agentlab does not know is still refused: a rollback would drop it from the config.
      await inspect(h.sim.dir, (ctx) => {
        ctx.state.vms[String(sandbox.vmid)]!.config.scsi2 = "local-lvm:vm-4242-disk-0";
      });
      const refused = await h.json<ErrorBody>(["sandbox", "revert", "--force", String(sandbox.vmid)]);
      await inspect(h.sim.dir, (ctx) => {
        delete ctx.state.vms[String(sandbox.vmid)]!.config.scsi2;
      });
      assert.equal(refused.code, 1);
      assert.equal(refused.body.code, "CONFLICT");
      assert.match(refused.body.message, /has disks besides its root disk \(scsi2\)/);
      assert.equal((await workspaceShow(h, "w1")).attached_vmid, sandbox.vmid);

      // A second sandbox cannot have it: refused before anything is reserved or cloned.
      const vmsBefore = Object.keys((await runVmList(h)) ?? {}).length;
      const rows = (await h.json<{ sandboxes: SandboxBody[] }>(["sandbox", "list", "--all"])).body.sandboxes
        .length;
      const second = await h.json<ErrorBody>(["sandbox", "new", "--profile", PROFILE, "--workspace", "w1"]);
      assert.equal(second.code, 1);
      assert.equal(second.body.code, "WORKSPACE_ATTACHED");
      assert.equal(second.body.message, "workspace already attached");
      assert.equal(Object.keys((await runVmList(h)) ?? {}).length, vmsBefore, "no VM was cloned");
      assert.equal(
        (await h.json<{ sandboxes: SandboxBody[] }>(["sandbox", "list", "--all"])).body.sandboxes.length,
        rows,
        "no sandbox was recorded",
      );
      const missing = await h.json<ErrorBody>([
        "sandbox",
        "new",
        "--profile",
        PROFILE,
        "--workspace",
        "nope",
      ]);
      assert.equal(missing.body.code, "WORKSPACE_NOT_FOUND");
      const plan = await h.json<{ ok: boolean; errors: Array<{ code: string; message: string }> }>([
        "sandbox",
        "validate",
        "--profile",
        PROFILE,
        "--workspace",
        "w1",
      ]);
      assert.equal(plan.code, 1);
      assert.equal(plan.body.ok, false);
      assert.deepEqual(
        plan.body.errors.map((e) => e.code),
        ["workspace_unavailable"],
      );
      assert.match(plan.body.errors[0]!.message, /^workspace already attached/);

      // A snapshot made by hand while the workspace was attached is refused even after the detach.
      const hand = await runTool(h.sim, "qm", ["snapshot", String(sandbox.vmid), "handsnap"]);
      assert.equal(hand.code, 0, hand.stderr);
      const detached = await h.json(["workspace", "detach", "w1"]);
      assert.equal(detached.code, 0, detached.stderr);
      assert.equal((await simVm(h, sandbox.vmid))?.config.scsi1, undefined);
      const fromHand = await h.json<ErrorBody>([
        "sandbox",
        "snapshot",
        "restore",
        "--force",
        String(sandbox.vmid),
        "handsnap",
      ]);
      assert.equal(fromHand.code, 1);
      assert.equal(fromHand.body.code, "WORKSPACE_ATTACHED");
      assert.equal(
        fromHand.body.message,
        `snapshot "handsnap" of sandbox ${sandbox.vmid} includes workspace w1 (scsi1: ${ws.volid}); rolling back to it would roll that disk back too, so it is refused even with --force`,
      );
      assert.equal((await simVm(h, sandbox.vmid))?.config.scsi1, undefined, "nothing was rolled back");
      const drop = await runTool(h.sim, "qm", ["delsnapshot", String(sandbox.vmid), "handsnap"]);
      assert.equal(drop.code, 0, drop.stderr);
      // Without the workspace the sandbox's own snapshots work again.
      const saved = await h.json(["sandbox", "snapshot", "save", String(sandbox.vmid), "own"]);
      assert.equal(saved.code, 0, saved.stderr);
      const destroyed = await h.json(["sandbox", "destroy", String(sandbox.vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      assert.equal(fingerprint(file), print);

      // A lease someone else holds refuses the sandbox before anything is reserved or cloned too.
      const expires = new Date(Date.now() + 600_000);
      const db = new Database(h.host.dbPath);
      db.prepare(
        "UPDATE workspaces SET lease_owner = ?, lease_nonce = ?, lease_expires_at = ? WHERE id = ?",
      ).run(`fsck:${ws.id}:0badc0de`, "0".repeat(32), toDbTime(expires), ws.id);
      db.close();
      const vms = Object.keys((await runVmList(h)) ?? {}).length;
      const held = await h.json<ErrorBody>(["sandbox", "new", "--profile", PROFILE, "--workspace", "w1"]);
      assert.equal(held.code, 1);
      assert.equal(held.body.code, "WORKSPACE_LEASE_HELD");
      assert.equal(held.body.message, "workspace lease held");
      assert.equal(held.body.details.lease_owner, `fsck:${ws.id}:0badc0de`);
      assert.match(held.body.hint, /agentlab workspace lease clear w1$/);
      assert.equal(Object.keys((await runVmList(h)) ?? {}).length, vms, "no VM was cloned");
      const cleared = await h.json(["workspace", "lease", "clear", "w1"]);
      assert.equal(cleared.code, 0, cleared.stderr);
    });

    test("rebind moves the workspace to a new sandbox; the old one is destroyed, or kept stopped with --keep-old", async () => {
      const first = await newSandbox();
      writeData(file);
      const print = fingerprint(file);
      const moved = await h.json<{ workspace: WorkspaceBody; sandbox: SandboxBody; old_vmid: number }>([
        "workspace",
        "rebind",
        "w1",
        "--profile",
        PROFILE,
      ]);
      assert.equal(moved.code, 0, moved.stderr);
      const second = moved.body.sandbox;
      assert.equal(moved.body.old_vmid, first.vmid);
      assert.equal(second.state, "RUNNING");
      assert.equal(moved.body.workspace.attached_vmid, second.vmid);
      assert.equal(moved.body.workspace.lease_owner, `sandbox:${second.vmid}`);
      const vm = await simVm(h, second.vmid);
      assert.equal(volidOf(vm?.config.scsi1), ws.volid);
      assert.equal(vm?.snapshots.clean?.scsi1, undefined, "the new sandbox's clean excludes the workspace");
      assert.equal(await simVm(h, first.vmid), undefined, "the old sandbox is destroyed");
      assert.equal(
        (await h.json<SandboxBody>(["sandbox", "show", String(first.vmid)])).body.state,
        "DESTROYED",
      );

      const kept = await h.json<{ workspace: WorkspaceBody; sandbox: SandboxBody; old_vmid: number }>([
        "workspace",
        "rebind",
        "w1",
        "--profile",
        PROFILE,
        "--keep-old",
      ]);
      assert.equal(kept.code, 0, kept.stderr);
      assert.equal(kept.body.old_vmid, second.vmid);
      const old = await simVm(h, second.vmid);
      assert.equal(old?.status, "stopped", "the old sandbox was shut down to detach");
      assert.equal(old?.config.scsi1, undefined, "and no longer references the workspace");
      assert.equal(
        (await h.json<SandboxBody>(["sandbox", "show", String(second.vmid)])).body.state,
        "STOPPED",
      );
      assert.equal(volidOf((await simVm(h, kept.body.sandbox.vmid))?.config.scsi1), ws.volid);
      assert.equal(fingerprint(file), print);
      for (const vmid of [second.vmid, kept.body.sandbox.vmid]) {
        const gone = await h.json(["sandbox", "destroy", String(vmid)]);
        assert.equal(gone.code, 0, gone.stderr);
      }
      assert.equal((await workspaceShow(h, "w1")).lease_owner, undefined);
    });

    test("a provisioning that fails after the attach rolls back and leaves the workspace detached and whole", async () => {
      const print = fingerprint(file);
      await setControl(h.sim.dir, {}, ["fail_start=qmstart failed: kvm exploded"]);
      try {
        const failed = await h.json<ErrorBody>(["sandbox", "new", "--profile", PROFILE, "--workspace", "w1"]);
        assert.equal(failed.code, 1);
        assert.equal(failed.body.code, "PROVISIONING_FAILED");
        const vmid = Number(failed.body.details.vmid);
        const row = await h.json<SandboxBody>(["sandbox", "show", String(vmid)]);
        assert.equal(row.body.state, "FAILED");
        assert.equal(await simVm(h, vmid), undefined, "the VM was removed");
        const now = await workspaceShow(h, "w1");
        assert.equal(now.attached_vmid, undefined);
        assert.equal(now.last_attached_vmid, vmid, "it had been attached before the start failed");
        assert.equal(now.lease_owner, undefined);
      } finally {
        await clearFaults(h.sim.dir);
      }
      assert.equal(fingerprint(file), print);
    });

    /** The power and destroy tasks Proxmox ran for a VM after its start, in order. */
    const powerTasks = (vmid: number) =>
      inspect(h.sim.dir, (ctx) =>
        ctx.state.tasks
          .filter((t) => t.id === String(vmid) && ["qmshutdown", "qmstop", "qmdestroy"].includes(t.type))
          .sort((a, b) => a.starttime - b.starttime)
          .map((t) => t.type),
      );

    test("destroy, destroy --force, prune after a hand qm destroy and the lease reaper never take the workspace", async () => {
      // sandbox destroy
      let sandbox = await newSandbox();
      writeData(file);
      let print = fingerprint(file);
      const destroyed = await h.json(["sandbox", "destroy", String(sandbox.vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      await assertSurvived(print, sandbox.vmid);
      // The guest got to write /work back: a clean shutdown, not a hard stop (a real guest lost the
      // last file a job wrote when its sandbox was stopped hard).
      assert.deepEqual(await powerTasks(sandbox.vmid), ["qmshutdown", "qmdestroy"]);

      // sandbox destroy --force
      sandbox = await newSandbox();
      writeData(file);
      print = fingerprint(file);
      const forced = await h.json(["sandbox", "destroy", "--force", String(sandbox.vmid)]);
      assert.equal(forced.code, 0, forced.stderr);
      await assertSurvived(print, sandbox.vmid);
      assert.equal((await powerTasks(sandbox.vmid))[0], "qmshutdown", "forced too");

      // An operator's qm destroy with purge and unreferenced disks, then sandbox prune records it.
      sandbox = await newSandbox();
      writeData(file);
      print = fingerprint(file);
      await runTool(h.sim, "qm", ["stop", String(sandbox.vmid)]);
      const hand = await runTool(h.sim, "qm", [
        "destroy",
        String(sandbox.vmid),
        "--purge",
        "1",
        "--destroy-unreferenced-disks",
        "1",
      ]);
      assert.equal(hand.code, 0, hand.stderr);
      assert.equal(fingerprint(file), print, "Proxmox frees only volumes the VM owns");
      const pruned = await h.json<{ vmids: number[] }>(["sandbox", "prune"]);
      assert.equal(pruned.code, 0, pruned.stderr);
      // It also clears the FAILED row of the rollback test, whose VM is gone too.
      assert.ok(pruned.body.vmids.includes(sandbox.vmid), String(pruned.body.vmids));
      await assertSurvived(print, sandbox.vmid);

      // The lease reaper: the lease runs out while the daemon is down; its first pass reaps.
      sandbox = await newSandbox();
      writeData(file);
      print = fingerprint(file);
      assert.equal(await h.daemon.stop("SIGTERM"), 0);
      const db = new Database(h.host.dbPath);
      db.prepare("UPDATE sandboxes SET lease_expires_at = ? WHERE vmid = ?").run(
        toDbTime(Date.now() - 1000),
        sandbox.vmid,
      );
      db.close();
      restarted = await startDaemon(h.host);
      const daemon = restarted;
      await until("the first maintenance pass", () =>
        logLine(daemon, "maintenance pass finished") ? true : undefined,
      );
      const reaped = await until("the reaper", async () => {
        const row = await h.json<SandboxBody>(["sandbox", "show", String(sandbox.vmid)]);
        return row.body.state === "DESTROYED" ? row.body : undefined;
      });
      assert.match(reaped.failure_reason ?? "", /^lease expired at /);
      await assertSurvived(print, sandbox.vmid);
    });
  });
}

/** Every VM in the simulator, by VMID. */
async function runVmList(h: SimHost): Promise<Record<string, unknown> | undefined> {
  const listed = await runTool(h.sim, "qm", ["list"]);
  assert.equal(listed.code, 0, listed.stderr);
  return Object.fromEntries(
    listed.stdout
      .trim()
      .split("\n")
      .slice(1)
      .map((line) => [line.trim().split(/\s+/)[0], true]),
  );
}
