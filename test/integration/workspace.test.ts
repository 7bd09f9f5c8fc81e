import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, runTool, setControl } from "../pvesim/harness.js";
import { DEFAULT_STORAGES } from "../pvesim/seed.js";

/**
 * Workspace create, list, show, attach, detach, lease clear and destroy through the real CLI and daemon
 * on the simulator, with both backends and every supported storage type. The data assertions read the
 * simulator's real volume files.
 */

interface WorkspaceBody {
  id: string;
  name: string;
  state: string;
  storage: string;
  storage_type?: string;
  format?: string;
  volid: string;
  size_gb: number;
  holder_vmid: number;
  attached_vmid?: number;
  last_attached_vmid?: number;
  lease_owner?: string;
  lease_expires_at?: string;
}
interface ErrorBody {
  code: string;
  message: string;
  hint: string;
  details: Record<string, unknown>;
}
interface SandboxBody {
  vmid: number;
  state: string;
}

function simVm(h: SimHost, vmid: number) {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    return vm ? { status: vm.runtime.status, config: { ...vm.config } } : undefined;
  });
}

async function volumePath(h: SimHost, volid: string): Promise<string> {
  const result = await runTool(h.sim, "pvesm", ["path", volid]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

const REGION = 4 * 1024 * 1024;

/** Fill the first MiB of the volume with random bytes, as a guest writing /work would; returns the digest. */
async function writeData(h: SimHost, volid: string): Promise<string> {
  const fd = openSync(await volumePath(h, volid), "r+");
  try {
    writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, 0);
  } finally {
    closeSync(fd);
  }
  return sha256(h, volid);
}

/** sha256 of the volume's first 4 MiB (the volumes are sparse files of whole GiB). */
async function sha256(h: SimHost, volid: string): Promise<string> {
  const fd = openSync(await volumePath(h, volid), "r");
  try {
    const buffer = Buffer.alloc(REGION);
    readSync(fd, buffer, 0, REGION, 0);
    return createHash("sha256").update(buffer).digest("hex");
  } finally {
    closeSync(fd);
  }
}

/** A fixed-width database timestamp `minutes` from now. */
function dbTime(minutes: number): string {
  return new Date(Date.now() + minutes * 60_000).toISOString().replace("Z", "000000Z");
}

/**
 * Make a running session (of some other sandbox) hold the workspace's lease, as if it had it attached
 * a moment ago: the daemon's lease keeper sees a live owner and keeps the lease, as it should.
 */
function holdBySession(h: SimHost, name: string, sessionId: string): void {
  const db = new Database(h.host.dbPath);
  const ws = db.prepare("SELECT id FROM workspaces WHERE name = ?").get(name) as { id: string };
  db.prepare(
    "INSERT INTO sessions (id, name, workspace_id, current_vmid, profile, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
  ).run(sessionId, "holder-session", ws.id, 4242, "yolo-ephemeral", dbTime(0), dbTime(0));
  db.prepare("UPDATE workspaces SET lease_owner = ?, lease_nonce = ?, lease_expires_at = ? WHERE id = ?").run(
    `session:${sessionId}`,
    "0".repeat(32),
    dbTime(20),
    ws.id,
  );
  db.close();
}

function dropSession(h: SimHost, sessionId: string): void {
  const db = new Database(h.host.dbPath);
  db.prepare("DELETE FROM sessions WHERE id = ?").run(sessionId);
  db.close();
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`workspaces through the CLI and daemon on the simulator (${kind} backend)`, () => {
    let h: SimHost;
    let sandbox: SandboxBody;

    before(async () => {
      h = await startSimHost(kind, "", { storages: [...DEFAULT_STORAGES, "thick:lvm:vmdata"] });
      await setControl(h.sim.dir, {
        clone_ms: 30,
        start_ms: 20,
        stop_ms: 20,
        agent_ready_ms: 40,
        task_ms: 20,
      });
      const created = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, created.stderr);
      sandbox = created.body;
    });
    after(async () => {
      await h.stop();
    });

    test("create makes a protected holder VM owning one disk, on zfspool, lvmthin and dir (qcow2)", async () => {
      const cases = [
        { storage: "local-zfs", type: "zfspool", volid: (v: number) => `local-zfs:vm-${v}-disk-0` },
        { storage: "local-lvm", type: "lvmthin", volid: (v: number) => `local-lvm:vm-${v}-disk-0` },
        { storage: "local", type: "dir", volid: (v: number) => `local:${v}/vm-${v}-disk-0.qcow2` },
      ];
      for (const c of cases) {
        const name = `ws-${c.type}`;
        const r = await h.json<WorkspaceBody>([
          "workspace",
          "create",
          "--name",
          name,
          "--size",
          "2G",
          "--storage",
          c.storage,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.body.state, "ready");
        assert.equal(r.body.storage_type, c.type);
        assert.equal(r.body.size_gb, 2);
        assert.equal(r.body.volid, c.volid(r.body.holder_vmid));
        assert.match(r.body.id, /^workspace-[0-9a-f]{16}$/);
        const holder = await simVm(h, r.body.holder_vmid);
        assert.equal(holder?.status, "stopped");
        assert.equal(holder?.config.name, `ws-${name}`);
        assert.equal(holder?.config.protection, "1");
        assert.equal(holder?.config.tags, "agentlab-ws");
        assert.equal(String(holder?.config.scsi0).split(",")[0], r.body.volid);
        assert.ok(existsSync(await volumePath(h, r.body.volid)), "the volume is a real file");
      }
      const list = await h.cli(["workspace", "list"]);
      assert.equal(list.code, 0, list.stderr);
      assert.match(list.stdout, /^NAME\s+ID\s+STATE\s+STORAGE\s+SIZE\s+ATTACHED\s+LEASE$/m);
      assert.match(list.stdout, /^ws-lvmthin\s+workspace-[0-9a-f]{16}\s+ready\s+local-lvm\s+2G\s+-\s+-$/m);
    });

    test("create refuses a taken name, an unknown or unsupported storage and a bad size, creating nothing", async () => {
      const before = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).length);
      const dup = await h.json<ErrorBody>(["workspace", "create", "--name", "ws-zfspool", "--size", "1G"]);
      assert.equal(dup.code, 1);
      assert.equal(dup.body.code, "CONFLICT");
      assert.equal(dup.body.message, "workspace already exists");

      const unknown = await h.json<ErrorBody>([
        "workspace",
        "create",
        "--name",
        "x1",
        "--size",
        "1G",
        "--storage",
        "nope",
      ]);
      assert.equal(unknown.body.code, "STORAGE_UNSUPPORTED");
      assert.equal(unknown.body.message, 'storage "nope" does not exist on node pve');

      const thick = await h.json<ErrorBody>([
        "workspace",
        "create",
        "--name",
        "x2",
        "--size",
        "1G",
        "--storage",
        "thick",
      ]);
      assert.equal(thick.body.code, "STORAGE_UNSUPPORTED");
      assert.equal(
        thick.body.message,
        'storage "thick" is of type lvm; workspaces support zfspool, lvmthin and dir (qcow2)',
      );

      const size = await h.cli(["workspace", "create", "--name", "x3", "--size", "1.5G"]);
      assert.equal(size.code, 2);
      assert.match(size.stderr, /^error: --size: size must be a whole number of GiB: "1.5G" is 1.5 GiB$/m);

      const badName = await h.json<ErrorBody>(["workspace", "create", "--name", "Bad_Name", "--size", "1G"]);
      assert.equal(badName.code, 2);
      assert.match(badName.body.message, /workspace names use lower-case letters/);

      assert.equal(
        await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).length),
        before,
        "no VM was created",
      );
      const names = (
        await h.json<{ workspaces: WorkspaceBody[] }>(["workspace", "list"])
      ).body.workspaces.map((w) => w.name);
      assert.deepEqual(names, ["ws-dir", "ws-lvmthin", "ws-zfspool"]);
    });

    test("attach references the holder's volume from the sandbox's scsi1 under a sandbox lease; detach shuts the sandbox down and drops it", async () => {
      const ws = (await h.json<WorkspaceBody>(["workspace", "show", "ws-zfspool"])).body;
      const digest = await writeData(h, ws.volid);

      const attached = await h.json<{ workspace: WorkspaceBody; live: boolean; message: string }>([
        "workspace",
        "attach",
        "ws-zfspool",
        String(sandbox.vmid),
      ]);
      assert.equal(attached.code, 0, attached.stderr);
      assert.equal(attached.body.workspace.attached_vmid, sandbox.vmid);
      assert.equal(attached.body.workspace.lease_owner, `sandbox:${sandbox.vmid}`);
      assert.equal(
        attached.body.message,
        `workspace ws-zfspool attached as scsi1; it is mounted at /work at the next boot of sandbox ${sandbox.vmid}`,
      );
      const config = (await simVm(h, sandbox.vmid))?.config;
      assert.equal(String(config?.scsi1).split(",")[0], ws.volid, "scsi1 references the holder's volume");
      assert.match(String(config?.scsi1), /backup=0/);

      // One workspace per sandbox, one sandbox per workspace.
      const again = await h.json<ErrorBody>(["workspace", "attach", "ws-zfspool", String(sandbox.vmid)]);
      assert.equal(again.body.code, "WORKSPACE_ATTACHED");
      assert.equal(again.body.message, "workspace already attached");
      const second = await h.json<ErrorBody>(["workspace", "attach", "ws-lvmthin", String(sandbox.vmid)]);
      assert.equal(second.body.code, "CONFLICT");
      assert.equal(second.body.message, "vmid already has workspace attached");
      const ghost = await h.json<ErrorBody>(["workspace", "attach", "nosuch", String(sandbox.vmid)]);
      assert.equal(ghost.body.code, "WORKSPACE_NOT_FOUND");
      assert.equal(ghost.body.message, "workspace not found");

      const destroy = await h.json<ErrorBody>(["workspace", "destroy", "ws-zfspool", "--force"]);
      assert.equal(destroy.body.code, "WORKSPACE_ATTACHED", "an attached workspace is never destroyed");

      const detached = await h.json<{ workspace: WorkspaceBody; sandbox_stopped: boolean; message: string }>([
        "workspace",
        "detach",
        "ws-zfspool",
      ]);
      assert.equal(detached.code, 0, detached.stderr);
      assert.equal(detached.body.sandbox_stopped, true);
      assert.equal(detached.body.workspace.attached_vmid, undefined);
      assert.equal(detached.body.workspace.last_attached_vmid, sandbox.vmid);
      assert.equal(detached.body.workspace.lease_owner, undefined, "the attachment lease is released");
      const after = await simVm(h, sandbox.vmid);
      assert.equal(after?.status, "stopped");
      assert.equal(after?.config.scsi1, undefined);
      assert.ok(!Object.keys(after?.config ?? {}).some((k) => k.startsWith("unused")), "no unusedN entry");
      const shown = await h.json<SandboxBody>(["sandbox", "show", String(sandbox.vmid)]);
      assert.equal(shown.body.state, "STOPPED");
      assert.equal(await sha256(h, ws.volid), digest, "the data is unchanged");

      const noop = await h.cli(["workspace", "detach", "ws-zfspool"]);
      assert.equal(noop.code, 0);
      assert.equal(noop.stdout, "workspace ws-zfspool is not attached\n");
    });

    test("detach --hot unplugs from the running sandbox without stopping it, once Proxmox confirms", async () => {
      const started = await h.cli(["sandbox", "start", String(sandbox.vmid)]);
      assert.equal(started.code, 0, started.stderr);
      const attached = await h.json<{ live: boolean }>([
        "workspace",
        "attach",
        "ws-zfspool",
        String(sandbox.vmid),
      ]);
      assert.equal(attached.code, 0, attached.stderr);
      assert.equal(attached.body.live, true, "the running VM got the disk hot-plugged");
      const hot = await h.json<{ sandbox_stopped: boolean; message: string }>([
        "workspace",
        "detach",
        "ws-zfspool",
        "--hot",
      ]);
      assert.equal(hot.code, 0, hot.stderr);
      assert.equal(hot.body.sandbox_stopped, false);
      assert.equal(hot.body.message, `workspace ws-zfspool detached from sandbox ${sandbox.vmid}`);
      const vm = await simVm(h, sandbox.vmid);
      assert.equal(vm?.status, "running");
      assert.equal(vm?.config.scsi1, undefined);
      const shown = await h.json<SandboxBody>(["sandbox", "show", String(sandbox.vmid)]);
      assert.equal(shown.body.state, "RUNNING");
    });

    test("a held lease refuses attach with the holder and its expiry; lease clear frees it", async () => {
      holdBySession(h, "ws-lvmthin", "session_0123456789abcdef");
      const held = await h.json<ErrorBody>(["workspace", "attach", "ws-lvmthin", String(sandbox.vmid)]);
      assert.equal(held.code, 1);
      assert.equal(held.body.code, "WORKSPACE_LEASE_HELD");
      assert.equal(held.body.message, "workspace lease held");
      assert.equal(held.body.details.lease_owner, "session:session_0123456789abcdef");
      assert.match(String(held.body.details.lease_expires_at), /^\d{4}-\d\d-\d\dT/);
      assert.match(
        held.body.hint,
        /^held by session holder-session until .*agentlab workspace lease clear ws-lvmthin$/,
      );
      assert.equal((await simVm(h, sandbox.vmid))?.config.scsi1, undefined, "nothing changed");

      const cleared = await h.json<{ previous_owner?: string }>([
        "workspace",
        "lease",
        "clear",
        "ws-lvmthin",
      ]);
      assert.equal(cleared.body.previous_owner, "session:session_0123456789abcdef");
      dropSession(h, "session_0123456789abcdef");
      const ok = await h.json<{ workspace: WorkspaceBody }>([
        "workspace",
        "attach",
        "ws-lvmthin",
        String(sandbox.vmid),
      ]);
      assert.equal(ok.code, 0);
      assert.equal(ok.body.workspace.attached_vmid, sandbox.vmid);
      const detached = await h.cli(["workspace", "detach", "ws-lvmthin"]);
      assert.equal(detached.code, 0, detached.stderr);
    });

    test("the holder is protected against a hand-typed destroy; workspace destroy asks, then removes holder and disk", async () => {
      const ws = (await h.json<WorkspaceBody>(["workspace", "show", "ws-dir"])).body;
      const byHand = await runTool(h.sim, "qm", ["destroy", String(ws.holder_vmid)]);
      assert.notEqual(byHand.code, 0);
      assert.match(byHand.stderr, /protection mode enabled/);

      const asked = await h.json<ErrorBody>(["workspace", "destroy", "ws-dir"]);
      assert.equal(asked.code, 2);
      assert.equal(asked.body.code, "CONFIRMATION_REQUIRED");
      const path = await volumePath(h, ws.volid);
      assert.ok(existsSync(path));

      const gone = await h.json<{ name: string }>(["workspace", "destroy", "ws-dir", "--force"]);
      assert.equal(gone.code, 0, gone.stderr);
      assert.equal(gone.body.name, "ws-dir");
      assert.equal(await simVm(h, ws.holder_vmid), undefined, "the holder VM is gone");
      assert.ok(!existsSync(path), "its disk is gone");
      const show = await h.json<ErrorBody>(["workspace", "show", "ws-dir"]);
      assert.equal(show.body.code, "WORKSPACE_NOT_FOUND");
    });

    test("holder VMIDs come from the sandbox allocator and are never handed out again", async () => {
      const ws = await h.json<WorkspaceBody>(["workspace", "create", "--name", "ws-next", "--size", "1G"]);
      assert.equal(ws.code, 0, ws.stderr);
      const destroyed = await h.cli(["workspace", "destroy", "ws-next", "--force"]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      const next = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(next.code, 0, next.stderr);
      assert.ok(next.body.vmid > ws.body.holder_vmid, `${next.body.vmid} > ${ws.body.holder_vmid}`);
    });
  });
}
