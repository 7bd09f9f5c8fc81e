/**
 * kill -9 of the daemon in the middle of workspace create, snapshot, attach and detach, then a restart:
 * start-up recovery reads Proxmox and finishes or undoes each interrupted operation (design §10.2).
 * Afterwards no workspace_ops row is left, the record says what Proxmox shows, at most one VM config
 * references the volume and it is the recorded one, the lease matches a live owner, `workspace check`
 * has no error finding, and the events say workspace.recovered. Mid-task kills use the simulator's slow
 * tasks, as test/integration/maintenance-crash.test.ts does; the attach is caught while its config
 * change waits for the sandbox's config lock. Real daemon and CLI, both backends.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, closeSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { TEMP_LEASE_TTL_MS, tempLeaseOwner } from "../../src/daemon/store/leases.js";
import type { WorkspaceFinding } from "../../src/protocol/workspace.js";
import { startDaemon } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import type { BackendKind } from "../helpers/simhost.js";
import { api, inspect, runTool, setControl } from "../pvesim/harness.js";
import { logLine, MaintenanceHost, until } from "./maintenance-host.js";

const DEFAULT_KNOBS = { task_ms: 50, stop_ms: 50, clone_ms: 200, start_ms: 100, agent_ready_ms: 300 };

interface WsRow {
  id: string;
  name: string;
  state: string;
  volid: string;
  holder_vmid: number;
  attached_vmid: number | null;
  lease_owner: string | null;
  lease_expires_at: string | null;
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`kill -9 during workspace operations, then restart (${kind} backend)`, () => {
    let m: MaintenanceHost;

    before(async () => {
      m = await MaintenanceHost.start(kind);
      // A short attachment TTL, so surviving a restart means being renewed, not just not expiring.
      await m.daemon.stop();
      appendFileSync(m.h.host.configPath, "workspace_lease_ttl: 5s\n");
      await m.restart();
    });
    after(async () => {
      await m.stop();
    });

    function row(name: string): WsRow | undefined {
      return m.db((d) => d.prepare("SELECT * FROM workspaces WHERE name = ?").get(name)) as WsRow | undefined;
    }

    function opsLeft(): number {
      return (m.db((d) => d.prepare("SELECT count(*) AS n FROM workspace_ops").get()) as { n: number }).n;
    }

    function recovered(wsId: string): Array<{ op_kind: string; outcome: string }> {
      return (
        m.db((d) =>
          d
            .prepare(
              "SELECT json FROM events WHERE workspace_id = ? AND kind = 'workspace.recovered' ORDER BY id",
            )
            .all(wsId),
        ) as Array<{ json: string }>
      ).map((e) => JSON.parse(e.json) as { op_kind: string; outcome: string });
    }

    /** What every row of design §10.2 must end in. */
    async function assertConsistent(name: string): Promise<WsRow> {
      assert.equal(opsLeft(), 0, "no workspace_ops row is left");
      const ws = row(name)!;
      assert.equal(ws.state, "ready");
      const holder = await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(ws.holder_vmid)]?.config);
      assert.ok(holder, "the holder exists");
      assert.equal(holder["scsi0"]?.split(",")[0], ws.volid, "the holder owns the recorded volume");
      assert.equal(holder["protection"], "1");
      assert.equal(holder["lock"], undefined, "no lock left on the holder");
      const refs = await m.referencing(ws.volid, ws.holder_vmid);
      assert.deepEqual(
        refs,
        ws.attached_vmid === null ? [] : [{ vmid: ws.attached_vmid, keys: ["scsi1"] }],
        "at most one config references the volume, and it is the recorded one",
      );
      if (ws.attached_vmid === null) assert.equal(ws.lease_owner, null, "a detached workspace has no lease");
      else {
        assert.equal(ws.lease_owner, `sandbox:${ws.attached_vmid}`);
        assert.ok(Date.parse(ws.lease_expires_at!) > Date.now(), "and it is valid");
      }
      const check = await m.h.json<{ ok: boolean; findings: WorkspaceFinding[] }>([
        "workspace",
        "check",
        name,
      ]);
      assert.deepEqual(
        check.body.findings.filter((f) => f.severity === "error"),
        [],
        "workspace check has no error finding",
      );
      assert.equal(check.code, 0);
      return ws;
    }

    /** kill -9 the daemon in the middle of `args` (see MaintenanceHost.killDuringCli) and restart it. */
    async function killDuring(
      args: string[],
      knobs: Record<string, number>,
      ready: (stderr: string) => Promise<boolean> | boolean,
    ): Promise<void> {
      await m.killDuringCli(args, knobs, ready, DEFAULT_KNOBS);
    }

    async function newSandbox(): Promise<number> {
      const created = await m.h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, created.stderr);
      return created.body.vmid;
    }

    test("create, killed while Proxmox creates the holder: finished, ready", async () => {
      await killDuring(["workspace", "create", "--name", "c1", "--size", "1G"], { task_ms: 3000 }, () =>
        inspect(m.h.sim.dir, (ctx) =>
          Object.values(ctx.state.vms).some((vm) => vm.config["lock"] === "create"),
        ),
      );
      const ws = await assertConsistent("c1");
      assert.deepEqual(
        recovered(ws.id).map((e) => `${e.op_kind}:${e.outcome}`),
        ["create:committed"],
      );
      const created = m.db((d) =>
        d.prepare("SELECT msg FROM events WHERE workspace_id = ? AND kind = 'workspace.created'").all(ws.id),
      ) as Array<{ msg: string }>;
      assert.equal(created.length, 1);
      assert.match(created[0]!.msg, /finished after a restart/);
    });

    test("snapshot, killed while Proxmox takes it: recorded as ready", async () => {
      const ws = row("c1")!;
      await killDuring(["workspace", "snapshot", "create", "c1", "s1"], { task_ms: 3000 }, () =>
        inspect(
          m.h.sim.dir,
          (ctx) => ctx.state.vms[String(ws.holder_vmid)]?.snapshots["s1"]?.["snapstate"] === "prepare",
        ),
      );
      await assertConsistent("c1");
      const events = recovered(ws.id);
      assert.deepEqual(
        events.map((e) => `${e.op_kind}:${e.outcome}`),
        ["create:committed", "snapshot:committed"],
      );
      const list = await m.h.json<{ snapshots: Array<{ name: string; kind: string; state?: string }> }>([
        "workspace",
        "snapshot",
        "list",
        "c1",
      ]);
      assert.deepEqual(
        list.body.snapshots.map((s) => ({ name: s.name, kind: s.kind, state: s.state })),
        [{ name: "s1", kind: "user", state: "ready" }],
      );
    });

    test("attach, killed while its config change waits for the sandbox's lock: finished, attached", async () => {
      const ws = row("c1")!;
      const S = await newSandbox();
      // An async config task holds S's config lock, so the attach's change waits behind it.
      await setControl(m.h.sim.dir, { task_ms: 4000 });
      const held = await api(m.h.sim, "POST", `/nodes/pve/qemu/${S}/config`, { description: "held" });
      assert.match(String(held.data), /^UPID:/);
      await killDuring(
        ["workspace", "attach", "c1", String(S)],
        { task_ms: 4000 },
        (stderr) =>
          stderr.includes("attaching workspace") &&
          (
            m.db((d) => d.prepare("SELECT count(*) AS n FROM workspace_ops WHERE kind = 'attach'").get()) as {
              n: number;
            }
          ).n === 1,
      );
      const after = await assertConsistent("c1");
      assert.equal(after.attached_vmid, S);
      assert.deepEqual(
        recovered(ws.id).map((e) => `${e.op_kind}:${e.outcome}`),
        ["create:committed", "snapshot:committed", "attach:committed"],
      );
      const sandboxRow = m.db((d) =>
        d.prepare("SELECT workspace_id FROM sandboxes WHERE vmid = ?").get(S),
      ) as {
        workspace_id: string;
      };
      assert.equal(sandboxRow.workspace_id, ws.id, "both records of the attachment agree");
    });

    test("sandbox revert, killed while Proxmox rolls the root disk back: the workspace goes back as scsi1, still attached", async () => {
      const ws = row("c1")!;
      const S = ws.attached_vmid!;
      await killDuring(["sandbox", "revert", "--force", String(S)], { task_ms: 3000 }, (stderr) =>
        stderr.includes("rolling the root disk back"),
      );
      const after = await assertConsistent("c1");
      assert.equal(after.attached_vmid, S, "still recorded attached");
      const config = await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(S)]!.config);
      assert.equal(config["scsi1"]?.split(",")[0], ws.volid, "scsi1 is the workspace again");
      assert.equal(config["parent"], "clean", "the rollback itself finished in Proxmox");
      assert.deepEqual(
        Object.keys(config).filter((key) => key.startsWith("unused")),
        [],
      );
      assert.equal(recovered(ws.id).at(-1)?.op_kind, "revert");
      assert.equal(recovered(ws.id).at(-1)?.outcome, "committed");
      // The detach below needs the sandbox running again.
      const started = await m.h.json(["sandbox", "start", String(S)]);
      assert.equal(started.code, 0, started.stderr);
    });

    test("detach, killed while the sandbox is being stopped: finished, detached, sandbox STOPPED", async () => {
      const ws = row("c1")!;
      const S = ws.attached_vmid!;
      await killDuring(
        ["workspace", "detach", "c1"],
        { stop_ms: 3000 },
        (stderr) =>
          stderr.includes("shutting sandbox") &&
          inspect(m.h.sim.dir, (ctx) =>
            ctx.state.tasks.some((t) => t.id === String(S) && t.type === "qmstop" && t.phase !== "done"),
          ),
      );
      const after = await assertConsistent("c1");
      assert.equal(after.attached_vmid, null);
      const sandbox = m.db((d) =>
        d.prepare("SELECT state, workspace_id FROM sandboxes WHERE vmid = ?").get(S),
      ) as {
        state: string;
        workspace_id: string | null;
      };
      assert.deepEqual(sandbox, { state: "STOPPED", workspace_id: null });
      assert.deepEqual(
        recovered(ws.id).map((e) => `${e.op_kind}:${e.outcome}`),
        [
          "create:committed",
          "snapshot:committed",
          "attach:committed",
          "revert:committed",
          "detach:committed",
        ],
      );
    });

    test("an attachment lease outlives a kill -9 longer than its TTL: same owner, renewed at start", async () => {
      const ws = row("c1")!;
      const S = (
        m.db((d) =>
          d
            .prepare(
              "SELECT vmid FROM sandboxes WHERE workspace_id IS NULL AND state = 'STOPPED' ORDER BY vmid DESC",
            )
            .get(),
        ) as { vmid: number }
      ).vmid;
      const attached = await m.h.cli(["workspace", "attach", "c1", String(S)]);
      assert.equal(attached.code, 0, attached.stderr);
      assert.equal(row("c1")!.lease_owner, `sandbox:${S}`);
      m.daemon.proc.kill("SIGKILL");
      await m.daemon.exited;
      await sleep(6000);
      assert.ok(
        Date.parse(row("c1")!.lease_expires_at!) < Date.now(),
        "it expired while the daemon was down",
      );
      await m.restart();
      const after = row("c1")!;
      assert.equal(after.lease_owner, `sandbox:${S}`, "the owner is unchanged");
      assert.ok(Date.parse(after.lease_expires_at!) > Date.now(), "and the lease valid again");
      await assertConsistent("c1");
      // While the daemon runs, the keeper keeps it valid past several TTLs.
      await sleep(7000);
      assert.ok(Date.parse(row("c1")!.lease_expires_at!) > Date.now());
      assert.equal(row("c1")!.lease_owner, `sandbox:${S}`);
      assert.equal(
        (
          m.db((d) =>
            d
              .prepare(
                "SELECT count(*) AS n FROM events WHERE workspace_id = ? AND kind LIKE 'workspace.lease.%'",
              )
              .get(ws.id),
          ) as { n: number }
        ).n,
        0,
        "nothing was released or lost",
      );
      const detached = await m.h.cli(["workspace", "detach", "c1"]);
      assert.equal(detached.code, 0, detached.stderr);
    });

    test("while recovery waits for an interrupted snapshot, the workspace answers WORKSPACE_BUSY; check still works", async () => {
      const ws = row("c1")!;
      await setControl(m.h.sim.dir, { task_ms: 8000 });
      const child = spawn(
        process.execPath,
        [AGENTLAB_BIN, "--socket", m.h.host.socketPath, "workspace", "snapshot", "create", "c1", "s2"],
        {
          stdio: "ignore",
        },
      );
      await until("the snapshot task", () =>
        inspect(m.h.sim.dir, (ctx) =>
          ctx.state.vms[String(ws.holder_vmid)]?.snapshots["s2"] ? true : undefined,
        ),
      );
      m.daemon.proc.kill("SIGKILL");
      await m.daemon.exited;
      await new Promise((resolve) => child.on("close", resolve));
      await setControl(m.h.sim.dir, DEFAULT_KNOBS);
      m.daemon = await startDaemon(m.h.host);
      const busy = await m.h.json<{ code: string; message: string }>(["workspace", "fsck", "c1"]);
      assert.equal(busy.code, 1);
      assert.equal(busy.body.code, "WORKSPACE_BUSY");
      assert.equal(busy.body.message, "workspace c1 is busy: recovering after restart");
      const check = await m.h.json<{ findings: WorkspaceFinding[] }>(["workspace", "check", "c1"]);
      assert.equal(check.code, 0, "read-only check runs during recovery");
      assert.ok(!check.body.findings.some((f) => f.code === "op_unfinished"), "the op is being recovered");
      await until(
        "the first maintenance pass",
        () => (logLine(m.daemon, "maintenance pass finished") ? true : undefined),
        30_000,
      );
      await assertConsistent("c1");
      assert.equal(recovered(ws.id).at(-1)?.op_kind, "snapshot");
      assert.equal(recovered(ws.id).at(-1)?.outcome, "committed");
      const fsck = await m.h.json<{ code?: string }>(["workspace", "fsck", "c1"]);
      assert.notEqual(fsck.body.code, "WORKSPACE_BUSY", "free again once recovered");
    });

    test("fork, killed while Proxmox copies the holder: finished, the fork ready and protected", async () => {
      const src = row("c1")!;
      await killDuring(
        ["workspace", "fork", "c1", "--name", "f2"],
        { full_clone_ms: 3000, clone_ms: 3000 },
        () =>
          inspect(m.h.sim.dir, (ctx) =>
            Object.values(ctx.state.vms).some((vm) => vm.config["lock"] === "clone"),
          ),
      );
      await assertConsistent("c1");
      const fork = await assertConsistent("f2");
      assert.notEqual(fork.holder_vmid, src.holder_vmid);
      const mode = m.db((d) =>
        d.prepare("SELECT copy_mode, forked_from FROM workspaces WHERE name = 'f2'").get(),
      ) as {
        copy_mode: string;
        forked_from: string;
      };
      assert.deepEqual(mode, { copy_mode: "full", forked_from: src.id });
      const tags = await inspect(
        m.h.sim.dir,
        (ctx) => ctx.state.vms[String(fork.holder_vmid)]?.config["tags"],
      );
      assert.equal(tags, "agentlab-ws");
      assert.equal(recovered(src.id).at(-1)?.op_kind, "fork");
      assert.equal(recovered(src.id).at(-1)?.outcome, "committed");
      assert.equal(recovered(fork.id).at(-1)?.outcome, "committed");
    });

    describe("crash states after step 1 of each operation (rows written as a crash leaves them)", () => {
      /** Stop the daemon, write the rows a crash leaves, restart: the first pass recovers them. */
      async function crashed(write: (store: Store) => void): Promise<void> {
        await m.daemon.stop();
        const store = openStore(m.h.host.dbPath);
        try {
          store.tx(() => write(store));
        } finally {
          store.close();
        }
        await m.restart();
      }

      function leasedOp(
        store: Store,
        wsId: string,
        kind: "snapshot" | "restore" | "fsck" | "destroy" | "create" | "fork",
        params: Record<string, unknown>,
      ) {
        const got = store.workspaceLeases.acquire(wsId, tempLeaseOwner(kind, wsId), TEMP_LEASE_TTL_MS);
        assert.ok(got.ok);
        return store.workspaceOps.begin({ workspace_id: wsId, kind, step: "begin", params, lease: got });
      }

      async function volumeFile(volid: string): Promise<string> {
        const result = await runTool(m.h.sim, "pvesm", ["path", volid]);
        assert.equal(result.code, 0, result.stderr);
        return result.stdout.trim();
      }

      function firstMiB(file: string): string {
        const buffer = Buffer.alloc(1 << 20);
        const fd = openSync(file, "r");
        try {
          readSync(fd, buffer, 0, buffer.length, 0);
        } finally {
          closeSync(fd);
        }
        return createHash("sha256").update(buffer).digest("hex");
      }

      test("create whose holder was never made: the record is removed", async () => {
        let id = "";
        await crashed((store) => {
          const ws = store.workspaces.insert({
            name: "c2",
            node: "pve",
            storage: "local-zfs",
            storage_type: "zfspool",
            volid: "local-zfs:vm-4000-disk-0",
            size_gb: 1,
            holder_vmid: 4000,
            state: "creating",
          });
          id = ws.id;
          leasedOp(store, ws.id, "create", { holder_vmid: 4000 });
        });
        assert.equal(row("c2"), undefined);
        assert.equal(opsLeft(), 0);
        assert.deepEqual(
          recovered(id).map((e) => `${e.op_kind}:${e.outcome}`),
          ["create:rolled_back"],
        );
      });

      test("snapshot never taken: its row is removed and the lease released", async () => {
        const ws = row("c1")!;
        await crashed((store) => {
          store.workspaceSnapshots.insert({
            workspace_id: ws.id,
            name: "s9",
            state: "creating",
            kind: "user",
          });
          leasedOp(store, ws.id, "snapshot", { name: "s9", holder_vmid: ws.holder_vmid });
        });
        await assertConsistent("c1");
        const names = m.db((d) =>
          d.prepare("SELECT name FROM workspace_snapshots WHERE workspace_id = ? ORDER BY name").all(ws.id),
        ) as Array<{ name: string }>;
        assert.deepEqual(
          names.map((n) => n.name),
          ["s1", "s2"],
        );
        assert.equal(recovered(ws.id).at(-1)?.outcome, "rolled_back");
      });

      test("restore: the rollback is issued again, and the volume holds the snapshot's data", async () => {
        const ws = row("c1")!;
        if (ws.attached_vmid !== null) assert.equal((await m.h.cli(["workspace", "detach", "c1"])).code, 0);
        const file = await volumeFile(ws.volid);
        const before = firstMiB(file);
        const fd = openSync(file, "r+");
        try {
          writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, 0);
        } finally {
          closeSync(fd);
        }
        assert.notEqual(firstMiB(file), before);
        await crashed((store) => {
          leasedOp(store, ws.id, "restore", { name: "s2", holder_vmid: ws.holder_vmid });
        });
        await assertConsistent("c1");
        assert.equal(firstMiB(file), before, "the bytes of snapshot s2 again");
        assert.equal(
          `${recovered(ws.id).at(-1)?.op_kind}:${recovered(ws.id).at(-1)?.outcome}`,
          "restore:committed",
        );
      });

      test("fsck interrupted: result failed (interrupted), shown as such", async () => {
        const ws = row("c1")!;
        await crashed((store) => {
          leasedOp(store, ws.id, "fsck", {
            mode: "check",
            holder_vmid: ws.holder_vmid,
            device: "/dev/agentlab-test-none",
            activations: [],
          });
        });
        await assertConsistent("c1");
        const show = await m.h.json<{ last_fsck?: { status: string; exit_summary: string } }>([
          "workspace",
          "show",
          "c1",
        ]);
        assert.equal(show.body.last_fsck?.status, "failed");
        assert.match(
          show.body.last_fsck?.exit_summary ?? "",
          /^interrupted by a daemon restart; run agentlab workspace fsck c1 again$/,
        );
        const meta = m.db((d) => d.prepare("SELECT meta_json FROM workspaces WHERE id = ?").get(ws.id)) as {
          meta_json: string;
        };
        assert.equal(JSON.parse(meta.meta_json).fsck_interrupted, true);
        assert.equal(recovered(ws.id).at(-1)?.outcome, "closed");
      });

      test("fork whose copy never started: the new workspace is removed, the source released", async () => {
        const ws = row("c1")!;
        let forkId = "";
        await crashed((store) => {
          const src = leasedOp(store, ws.id, "fork", { name: "f1", from_snapshot: null, path: "full-clone" });
          const fork = store.workspaces.insert({
            name: "f1",
            node: "pve",
            storage: "local-zfs",
            storage_type: "zfspool",
            volid: "local-zfs:vm-4001-disk-0",
            size_gb: 1,
            holder_vmid: 4001,
            state: "creating",
            forked_from: ws.id,
            copy_mode: "full",
          });
          forkId = fork.id;
          store.workspaceOps.begin({
            workspace_id: fork.id,
            kind: "fork",
            step: "begin",
            params: { source_id: ws.id, source_op_id: src.id, from_snapshot: null, path: "full-clone" },
          });
          store.workspaceOps.setStep(src.id, "reserved", { fork_id: fork.id, fork_holder_vmid: 4001 });
        });
        assert.equal(row("f1"), undefined);
        await assertConsistent("c1");
        assert.equal(recovered(ws.id).at(-1)?.op_kind, "fork");
        assert.equal(recovered(ws.id).at(-1)?.outcome, "rolled_back");
        assert.equal(recovered(forkId).at(-1)?.outcome, "rolled_back", "reported on the new workspace too");
      });

      test("destroy is rolled forward: holder, volume and record are gone", async () => {
        const made = await m.h.json<{ id: string; holder_vmid: number; volid: string }>([
          "workspace",
          "create",
          "--name",
          "d1",
          "--size",
          "1G",
        ]);
        assert.equal(made.code, 0, made.stderr);
        await crashed((store) => {
          store.workspaces.update(made.body.id, { state: "destroying" });
          leasedOp(store, made.body.id, "destroy", {});
        });
        assert.equal(row("d1"), undefined);
        assert.equal(opsLeft(), 0);
        assert.equal(
          await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(made.body.holder_vmid)]),
          undefined,
        );
        const volumeLeft = await inspect(m.h.sim.dir, (ctx) =>
          Object.values(ctx.state.volumes).some((v) => `${v.storage}:${v.volname}` === made.body.volid),
        );
        assert.equal(volumeLeft, false, "the volume is gone");
        assert.deepEqual(
          recovered(made.body.id).map((e) => `${e.op_kind}:${e.outcome}`),
          ["destroy:committed"],
        );
      });

      test("a snapshot whose Proxmox worker died: broken with the fix; after qm unlock the next pass cleans up", async () => {
        const ws = row("c1")!;
        const H = ws.holder_vmid;
        await inspect(m.h.sim.dir, (ctx) => {
          const vm = ctx.state.vms[String(H)]!;
          vm.snapshots["s8"] = {
            ...vm.config,
            snaptime: String(Math.floor(Date.now() / 1000)),
            snapstate: "prepare",
          };
          vm.config["lock"] = "snapshot";
        });
        await crashed((store) => {
          store.workspaceSnapshots.insert({
            workspace_id: ws.id,
            name: "s8",
            state: "creating",
            kind: "user",
          });
          leasedOp(store, ws.id, "snapshot", { name: "s8", holder_vmid: H });
        });
        const broken = row("c1")!;
        assert.equal(broken.state, "broken");
        assert.equal(opsLeft(), 1, "the op waits for the operator");
        const check = await m.h.json<{ findings: WorkspaceFinding[] }>(["workspace", "check", "c1"]);
        assert.equal(check.code, 1);
        const finding = check.body.findings.find((f) => f.code === "workspace_broken");
        assert.match(
          finding?.message ?? "",
          /snapshot s8 was interrupted and holder VM \d+ is left locked \(snapshot\) with no task running/,
        );
        assert.equal(finding?.fix, `qm unlock ${H} (agentlab then finishes the snapshot by itself)`);
        const refused = await m.h.json<{ code: string; message: string }>(["workspace", "fsck", "c1"]);
        assert.equal(refused.body.code, "CONFLICT");
        assert.match(refused.body.message, /^workspace c1 is broken: snapshot s8 was interrupted/);

        const unlock = await runTool(m.h.sim, "qm", ["unlock", String(H)]);
        assert.equal(unlock.code, 0, unlock.stderr);
        await m.daemon.stop();
        await m.restart();
        await assertConsistent("c1");
        assert.deepEqual(
          await inspect(m.h.sim.dir, (ctx) => Object.keys(ctx.state.vms[String(H)]!.snapshots).sort()),
          ["s1", "s2"],
        );
        const outcomes = recovered(ws.id)
          .slice(-2)
          .map((e) => `${e.op_kind}:${e.outcome}`);
        assert.deepEqual(outcomes, ["snapshot:broken", "snapshot:rolled_back"]);
      });

      test("a create whose qmcreate worker died: broken, and the printed fix removes it", async () => {
        const vmid = 4100;
        await inspect(m.h.sim.dir, (ctx) => {
          ctx.state.vms[String(vmid)] = {
            vmid,
            node: "pve",
            config: { lock: "create" },
            pending: {},
            pendingDelete: [],
            snapshots: {},
            runtime: { status: "stopped", qmpstatus: "stopped" },
            createdAt: Date.now(),
          };
        });
        await crashed((store) => {
          const ws = store.workspaces.insert({
            name: "c3",
            node: "pve",
            storage: "local-zfs",
            storage_type: "zfspool",
            volid: `local-zfs:vm-${vmid}-disk-0`,
            size_gb: 1,
            holder_vmid: vmid,
            state: "creating",
          });
          leasedOp(store, ws.id, "create", { holder_vmid: vmid });
        });
        const broken = row("c3")!;
        assert.equal(broken.state, "broken");
        assert.equal(opsLeft(), 0);
        const check = await m.h.json<{ findings: WorkspaceFinding[] }>(["workspace", "check", "c3"]);
        const fix = check.body.findings.find((f) => f.code === "workspace_broken")?.fix;
        assert.equal(fix, `qm unlock ${vmid} && agentlab workspace destroy c3 --force`);
        const unlock = await runTool(m.h.sim, "qm", ["unlock", String(vmid)]);
        assert.equal(unlock.code, 0, unlock.stderr);
        const destroyed = await m.h.cli(["workspace", "destroy", "c3", "--force"]);
        assert.equal(destroyed.code, 0, destroyed.stderr);
        assert.equal(row("c3"), undefined);
        assert.equal(await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(vmid)]), undefined);
      });

      test("a session op with no recovery of its own is closed with an event that says what to check", async () => {
        const ws = row("c1")!;
        await crashed((store) => {
          store.workspaceOps.begin({
            workspace_id: ws.id,
            kind: "session_resume",
            step: "provision",
            params: {},
          });
        });
        await assertConsistent("c1");
        const last = m.db((d) =>
          d
            .prepare(
              "SELECT msg, json FROM events WHERE workspace_id = ? AND kind = 'workspace.recovered' ORDER BY id DESC LIMIT 1",
            )
            .get(ws.id),
        ) as { msg: string; json: string };
        assert.equal(JSON.parse(last.json).outcome, "closed");
        assert.match(
          last.msg,
          /^session_resume interrupted by a daemon restart: closed: nothing was finished or undone automatically \(step provision\); check agentlab workspace check c1$/,
        );
      });
    });
  });
}
