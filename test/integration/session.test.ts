import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, setControl } from "../pvesim/harness.js";
import {
  type ErrorBody,
  readData,
  type SandboxBody,
  simVm,
  volidOf,
  volumeFile,
  type WorkspaceBody,
  workspaceShow,
  writeData,
} from "./workspace-volume.js";

/**
 * Sessions (docs/workspaces-design.md §12) through the real CLI and daemon on the simulator, both
 * backends: create starts a sandbox with the workspace attached before its first boot; stop destroys
 * the sandbox and keeps the workspace, so the troubleshooting guide's "session stop → workspace snapshot
 * restore → session resume" works as written; fork copies the data; branch creates, reports or resumes.
 */

const PROFILE = "yolo-workspace";

interface SessionBody {
  id: string;
  name: string;
  state: "running" | "stopped";
  workspace_id: string;
  workspace_name?: string;
  profile: string;
  branch?: string;
  current_vmid?: number;
}

interface Started {
  session: SessionBody;
  workspace: WorkspaceBody;
  sandbox: SandboxBody;
}

for (const [kind, storage] of [
  ["shell", "local-zfs"],
  ["api", "local-lvm"],
] as Array<[BackendKind, string]>) {
  describe(`sessions (${kind} backend, ${storage})`, () => {
    let h: SimHost;
    let s1: Started;

    /** The session's sandbox references its workspace as scsi1, and `clean` does not cover it. */
    const assertAttached = async (started: Started) => {
      const vm = await simVm(h, started.sandbox.vmid);
      assert.equal(vm?.status, "running");
      assert.equal(
        volidOf(vm?.config.scsi1),
        started.workspace.volid,
        "scsi1 references the holder's volume",
      );
      assert.ok(vm?.snapshots.clean, "the sandbox has its clean snapshot");
      assert.equal(vm.snapshots.clean.scsi1, undefined, "clean was taken before the attach");
      const ws = await workspaceShow(h, started.workspace.name);
      assert.equal(ws.attached_vmid, started.sandbox.vmid);
      assert.equal(ws.lease_owner, `session:${started.session.id}`);
    };

    before(async () => {
      h = await startSimHost(kind, `workspace_storage: ${storage}\n`);
      await setControl(h.sim.dir, FAST_KNOBS);
    });
    after(async () => {
      await h.stop();
    });

    test("create starts a sandbox with a new workspace attached before its first boot; list and show", async () => {
      const created = await h.json<Started>([
        "session",
        "create",
        "--name",
        "s1",
        "--profile",
        PROFILE,
        "--workspace-create",
        "s1ws",
        "--workspace-size",
        "1G",
      ]);
      assert.equal(created.code, 0, created.stderr);
      s1 = created.body;
      assert.equal(s1.session.state, "running");
      assert.equal(s1.session.current_vmid, s1.sandbox.vmid);
      assert.equal(s1.session.workspace_name, "s1ws");
      assert.equal(s1.workspace.storage, storage);
      assert.equal(s1.sandbox.state, "RUNNING");
      assert.equal(s1.sandbox.workspace_id, s1.workspace.id);
      await assertAttached(s1);

      const listed = await h.cli(["session", "list"]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(
        listed.stdout,
        new RegExp(`^s1 +running +${PROFILE} +s1ws +${s1.sandbox.vmid} +- *$`, "m"),
      );
      const shown = await h.json<{ session: SessionBody; sandbox?: SandboxBody }>(["session", "show", "s1"]);
      assert.equal(shown.body.session.id, s1.session.id);
      assert.equal(shown.body.sandbox?.vmid, s1.sandbox.vmid);
      const byId = await h.json<{ session: SessionBody }>(["session", "show", s1.session.id]);
      assert.equal(byId.body.session.name, "s1");
      const missing = await h.json<ErrorBody>(["session", "show", "nope"]);
      assert.equal(missing.code, 1);
      assert.equal(missing.body.code, "SESSION_NOT_FOUND");

      const again = await h.json<ErrorBody>([
        "session",
        "create",
        "--name",
        "s1",
        "--profile",
        PROFILE,
        "--workspace",
        "s1ws",
      ]);
      assert.equal(again.body.code, "CONFLICT");
      assert.equal(again.body.message, "session already exists");
      // Another session cannot take a workspace that is in use; nothing is created for it.
      const other = await h.json<ErrorBody>([
        "session",
        "create",
        "--name",
        "s2",
        "--profile",
        PROFILE,
        "--workspace",
        "s1ws",
      ]);
      assert.equal(other.code, 1);
      assert.equal(other.body.code, "WORKSPACE_ATTACHED");
      assert.equal(other.body.message, "workspace already attached");
      assert.match(other.body.hint, /agentlab session stop s1/);
      const sessions = await h.json<{ sessions: SessionBody[] }>(["session", "list"]);
      assert.deepEqual(
        sessions.body.sessions.map((s) => s.name),
        ["s1"],
      );

      const resume = await h.json<ErrorBody>(["session", "resume", "s1"]);
      assert.equal(resume.code, 1);
      assert.equal(resume.body.code, "CONFLICT");
      assert.equal(resume.body.message, `session is running (sandbox ${s1.sandbox.vmid})`);
      const fork = await h.json<ErrorBody>(["session", "fork", "s1", "--name", "s1-copy"]);
      assert.equal(fork.code, 1);
      assert.equal(fork.body.code, "WORKSPACE_ATTACHED");
      assert.match(fork.body.message, /^workspace must be detached for fork/);
      assert.match(fork.body.hint, /agentlab session stop s1/);
      const snapshot = await h.json<ErrorBody>(["workspace", "snapshot", "create", "s1ws", "before"]);
      assert.equal(snapshot.body.code, "WORKSPACE_ATTACHED");
      assert.match(snapshot.body.hint, /agentlab session stop s1/);

      // A stopped sandbox (sandbox stop, or idle stop) still is the session's: resume says to start it.
      const vmid = s1.sandbox.vmid;
      assert.equal((await h.json(["sandbox", "stop", String(vmid)])).code, 0);
      const stopped = await h.json<ErrorBody>(["session", "resume", "s1"]);
      assert.equal(stopped.body.code, "CONFLICT");
      assert.equal(stopped.body.message, `session is running (sandbox ${vmid})`);
      assert.match(
        stopped.body.hint,
        new RegExp(`^its sandbox ${vmid} is stopped: agentlab sandbox start ${vmid};`),
      );
      assert.equal((await h.json(["sandbox", "start", String(vmid)])).code, 0);
    });

    test("session stop → workspace snapshot restore → session resume, as the troubleshooting guide has it", async () => {
      const file = await volumeFile(h, s1.workspace.volid);
      const a = writeData(file);
      const stopped = await h.cli(["session", "stop", "s1"]);
      assert.equal(stopped.code, 0, stopped.stderr);
      assert.equal(
        stopped.stdout,
        `session s1 stopped (sandbox ${s1.sandbox.vmid} destroyed); resume with agentlab session resume s1\n`,
      );
      assert.equal(await simVm(h, s1.sandbox.vmid), undefined, "the sandbox's VM is destroyed");
      const ws = await workspaceShow(h, "s1ws");
      assert.equal(ws.attached_vmid, undefined);
      assert.equal(ws.lease_owner, undefined, "the session lease is released");
      const shown = await h.json<{ session: SessionBody; sandbox?: SandboxBody }>(["session", "show", "s1"]);
      assert.equal(shown.body.session.state, "stopped");
      assert.equal(shown.body.session.current_vmid, undefined);
      assert.equal(shown.body.sandbox, undefined);
      assert.deepEqual(readData(file), a, "the workspace keeps its data");

      const snap = await h.json(["workspace", "snapshot", "create", "s1ws", "before"]);
      assert.equal(snap.code, 0, snap.stderr);
      writeData(file);
      const restored = await h.json(["workspace", "snapshot", "restore", "s1ws", "before", "--force"]);
      assert.equal(restored.code, 0, restored.stderr);
      assert.deepEqual(readData(file), a, "the restore brought the snapshot's data back");

      const resumed = await h.json<Started>(["session", "resume", "s1"]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.notEqual(resumed.body.sandbox.vmid, s1.sandbox.vmid, "a new sandbox");
      assert.equal(resumed.body.session.state, "running");
      assert.equal(resumed.body.session.current_vmid, resumed.body.sandbox.vmid);
      await assertAttached(resumed.body);
      assert.deepEqual(readData(file), a);
      s1 = resumed.body;
    });

    test("rebind of a running session's workspace moves the session along and keeps its lease", async () => {
      const moved = await h.json<{ workspace: WorkspaceBody; sandbox: SandboxBody; old_vmid: number }>([
        "workspace",
        "rebind",
        "s1ws",
        "--profile",
        PROFILE,
      ]);
      assert.equal(moved.code, 0, moved.stderr);
      assert.equal(moved.body.old_vmid, s1.sandbox.vmid);
      assert.equal(await simVm(h, s1.sandbox.vmid), undefined, "the old sandbox is destroyed");
      const shown = await h.json<{ session: SessionBody }>(["session", "show", "s1"]);
      assert.equal(shown.body.session.state, "running");
      assert.equal(
        shown.body.session.current_vmid,
        moved.body.sandbox.vmid,
        "the session follows its workspace",
      );
      s1 = { ...s1, sandbox: moved.body.sandbox };
      await assertAttached(s1);
    });

    test("a bare workspace detach of a running session's workspace is refused, naming the session commands", async () => {
      const refused = await h.json<{ code: string; message: string; hint: string }>([
        "workspace",
        "detach",
        "s1ws",
      ]);
      assert.equal(refused.code, 1);
      assert.equal(refused.body.code, "CONFLICT");
      assert.equal(
        refused.body.message,
        `workspace s1ws is attached to sandbox ${s1.sandbox.vmid} of session s1; detaching it would leave the session without its workspace`,
      );
      assert.match(refused.body.hint, /^agentlab session stop s1 /);
      // Nothing changed: the session runs with its workspace under its lease.
      const shown = await h.json<{ session: SessionBody }>(["session", "show", "s1"]);
      assert.equal(shown.body.session.state, "running");
      await assertAttached(s1);
    });

    test("fork copies a stopped session's workspace into a new session; the two are independent", async () => {
      const stopped = await h.json(["session", "stop", "s1"]);
      assert.equal(stopped.code, 0, stopped.stderr);
      const source = await volumeFile(h, s1.workspace.volid);
      const data = writeData(source);
      const forked = await h.json<Started>(["session", "fork", "s1", "--name", "s1-copy"]);
      assert.equal(forked.code, 0, forked.stderr);
      assert.equal(forked.body.session.name, "s1-copy");
      assert.equal(forked.body.session.profile, PROFILE);
      assert.equal(forked.body.workspace.name, "s1-copy");
      assert.notEqual(forked.body.workspace.volid, s1.workspace.volid);
      assert.ok(
        ["cow", "full"].includes(forked.body.workspace.copy_mode ?? ""),
        forked.body.workspace.copy_mode,
      );
      await assertAttached(forked.body);
      const copy = await volumeFile(h, forked.body.workspace.volid);
      assert.deepEqual(readData(copy), data, "the fork holds the source's data");
      writeData(copy);
      assert.deepEqual(readData(source), data, "writing the fork leaves the source alone");
      const stop = await h.json(["session", "stop", "s1-copy"]);
      assert.equal(stop.code, 0, stop.stderr);
      // The source session was left stopped.
      const shown = await h.json<{ session: SessionBody }>(["session", "show", "s1"]);
      assert.equal(shown.body.session.state, "stopped");
    });

    test("branch creates branch-<slug> with an 80 GiB workspace, reports a running one, resumes a stopped one", async () => {
      const created = await h.json<Started & { action: string }>([
        "session",
        "branch",
        "feature/Login",
        "--profile",
        PROFILE,
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(created.body.action, "created");
      assert.equal(created.body.session.name, "branch-feature-login");
      assert.equal(created.body.session.branch, "feature/Login");
      assert.equal(created.body.workspace.name, "branch-feature-login");
      assert.equal(created.body.workspace.size_gb, 80);
      assert.equal(created.body.workspace.storage, storage);
      await assertAttached(created.body);

      const running = await h.json<Started & { action: string }>([
        "session",
        "branch",
        "feature/Login",
        "--profile",
        PROFILE,
      ]);
      assert.equal(running.code, 0, running.stderr);
      assert.equal(running.body.action, "running");
      assert.equal(running.body.sandbox.vmid, created.body.sandbox.vmid, "nothing changed");

      const clash = await h.json<ErrorBody>(["session", "branch", "feature-login", "--profile", PROFILE]);
      assert.equal(clash.code, 1);
      assert.equal(clash.body.code, "CONFLICT");
      assert.equal(
        clash.body.message,
        'session branch-feature-login belongs to branch "feature/Login", not "feature-login"',
      );

      const stop = await h.json(["session", "stop", "branch-feature-login"]);
      assert.equal(stop.code, 0, stop.stderr);
      const resumed = await h.json<Started & { action: string }>([
        "session",
        "branch",
        "feature/Login",
        "--profile",
        PROFILE,
      ]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal(resumed.body.action, "resumed");
      assert.notEqual(resumed.body.sandbox.vmid, created.body.sandbox.vmid);
      await assertAttached(resumed.body);
      const done = await h.json(["session", "stop", "branch-feature-login"]);
      assert.equal(done.code, 0, done.stderr);
    });

    test("a session whose sandbox cannot start is not kept; the workspace it created is kept and named", async () => {
      await setControl(h.sim.dir, {}, ["fail_start=qmstart failed: kvm exploded"]);
      let failed: Awaited<ReturnType<typeof h.json<ErrorBody>>>;
      try {
        failed = await h.json<ErrorBody>([
          "session",
          "create",
          "--name",
          "s3",
          "--profile",
          PROFILE,
          "--workspace-create",
          "s3ws",
          "--workspace-size",
          "1G",
        ]);
      } finally {
        await clearFaults(h.sim.dir);
      }
      assert.equal(failed.code, 1);
      assert.equal(failed.body.code, "PROVISIONING_FAILED");
      assert.match(failed.body.message, /; the new workspace s3ws was kept: reuse it: --workspace s3ws$/);
      assert.equal(
        failed.body.hint,
        `agentlab session create --name s3 --profile ${PROFILE} --workspace s3ws`,
      );
      const missing = await h.json<ErrorBody>(["session", "show", "s3"]);
      assert.equal(missing.body.code, "SESSION_NOT_FOUND");
      const ws = await workspaceShow(h, "s3ws");
      assert.equal(ws.state, "ready");
      assert.equal(ws.attached_vmid, undefined);
      assert.equal(ws.lease_owner, undefined);
      const vmid = Number(failed.body.details.vmid);
      assert.equal(await simVm(h, vmid), undefined, "the failed sandbox's VM was removed");

      const retried = await h.json<Started>([
        "session",
        "create",
        "--name",
        "s3",
        "--profile",
        PROFILE,
        "--workspace",
        "s3ws",
      ]);
      assert.equal(retried.code, 0, retried.stderr);
      await assertAttached(retried.body);
      const stop = await h.json(["session", "stop", "s3"]);
      assert.equal(stop.code, 0, stop.stderr);
    });
  });
}
