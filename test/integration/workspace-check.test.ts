/**
 * `agentlab workspace check` against the real daemon on the simulator, both backends: the state is
 * broken behind the daemon's back (the simulator's qm, or its model directly, or the database), and each
 * break shows up as its finding with the right severity and fix, with exit 1 exactly when a finding is
 * an error. Where the printed fix is a command, the test runs it and the check comes back clean.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { toDbTime } from "../../src/daemon/store/time.js";
import type { WorkspaceFinding } from "../../src/protocol/workspace.js";
import type { BackendKind } from "../helpers/simhost.js";
import { inspect, runTool } from "../pvesim/harness.js";
import { logLine, MaintenanceHost, until } from "./maintenance-host.js";

interface CheckBody {
  workspace: { name: string; holder_vmid: number; volid: string };
  ok: boolean;
  findings: WorkspaceFinding[];
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`workspace check (${kind} backend)`, () => {
    let m: MaintenanceHost;
    let H: number;
    let volid: string;
    let wsId: string;

    /** Run `workspace check ws1 --json`; the exit code and the findings. */
    async function check(): Promise<{ code: number | null; body: CheckBody }> {
      const result = await m.h.json<CheckBody>(["workspace", "check", "ws1"]);
      assert.ok(Array.isArray(result.body.findings), `${result.stderr} ${JSON.stringify(result.body)}`);
      return { code: result.code, body: result.body };
    }

    async function assertClean(why: string): Promise<void> {
      const { code, body } = await check();
      assert.deepEqual(body.findings, [], why);
      assert.equal(body.ok, true);
      assert.equal(code, 0);
    }

    /** The one finding with `code`, asserting it is there with `severity`. */
    function only(body: CheckBody, code: string, severity: string): WorkspaceFinding {
      const found = body.findings.filter((f) => f.code === code);
      assert.equal(found.length, 1, `${code} once in ${JSON.stringify(body.findings, null, 1)}`);
      assert.equal(found[0]!.severity, severity, code);
      return found[0]!;
    }

    async function qm(...args: string[]): Promise<string> {
      const result = await runTool(m.h.sim, "qm", args);
      assert.equal(result.code, 0, `qm ${args.join(" ")}: ${result.stderr}`);
      return result.stdout;
    }

    async function newSandbox(): Promise<number> {
      const created = await m.h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, created.stderr);
      return created.body.vmid;
    }

    async function restartAndSettle(): Promise<void> {
      await m.daemon.stop();
      await m.restart();
    }

    before(async () => {
      m = await MaintenanceHost.start(kind);
      const created = await m.h.json<{ id: string; holder_vmid: number; volid: string }>([
        "workspace",
        "create",
        "--name",
        "ws1",
        "--size",
        "1G",
      ]);
      assert.equal(created.code, 0, created.stderr);
      H = created.body.holder_vmid;
      volid = created.body.volid;
      wsId = created.body.id;
    });
    after(async () => {
      await m.stop();
    });

    test("a fresh workspace has no findings; text output says so, exit 0", async () => {
      await assertClean("a fresh workspace");
      const text = await m.h.cli(["workspace", "check", "ws1"]);
      assert.equal(text.code, 0);
      assert.equal(text.stdout, "workspace ws1: no drift found\n");
    });

    test("a reference made by hand (qm set S --scsi1 <volid>) is attached_not_recorded; its fix works", async () => {
      const S = await newSandbox();
      await qm("set", String(S), "--scsi1", volid);
      const { code, body } = await check();
      assert.equal(code, 1, "an error finding exits 1");
      assert.equal(body.ok, false);
      const f = only(body, "attached_not_recorded", "error");
      assert.match(
        f.message,
        new RegExp(
          `VM ${S} .*references workspace ws1's volume as scsi1, but the database says it is detached`,
        ),
      );
      assert.equal(
        f.fix,
        `qm shutdown ${S} && qm set ${S} --delete scsi1, then to keep using it there: agentlab workspace attach ws1 ${S}`,
      );
      const text = await m.h.cli(["workspace", "check", "ws1"]);
      assert.equal(text.code, 1);
      assert.match(text.stdout, /^error {3}attached_not_recorded: /m);
      assert.match(text.stdout, /^ {8}fix: qm shutdown /m);

      await qm("shutdown", String(S));
      await qm("set", String(S), "--delete", "scsi1");
      const attached = await m.h.cli(["workspace", "attach", "ws1", String(S)]);
      assert.equal(attached.code, 0, attached.stderr);
      await assertClean("recorded the agentlab way");
    });

    test("a second VM referencing the volume is workspace_multi_attach; dropping it as printed fixes it", async () => {
      const S = (await check()).body.workspace as unknown as { attached_vmid: number };
      const S2 = await newSandbox();
      await qm("set", String(S2), "--scsi1", volid);
      const { code, body } = await check();
      assert.equal(code, 1);
      const multi = only(body, "workspace_multi_attach", "error");
      assert.match(
        multi.message,
        new RegExp(
          `referenced by 2 VMs \\(${Math.min(S.attached_vmid, S2)}, ${Math.max(S.attached_vmid, S2)}\\).*keep ${S.attached_vmid}`,
        ),
      );
      assert.equal(multi.fix, `qm shutdown ${S2} && qm set ${S2} --delete scsi1`);
      const unrecorded = only(body, "attached_not_recorded", "error");
      assert.match(
        unrecorded.message,
        new RegExp(`VM ${S2} .*the database records sandbox ${S.attached_vmid}`),
      );

      await qm("shutdown", String(S2));
      await qm("set", String(S2), "--delete", "scsi1");
      await assertClean("one reference again");
    });

    test("an attachment dropped behind the daemon is attached_vmid_stale (warning, exit 0); detach fixes it", async () => {
      const { body: before } = await check();
      const S = (before.workspace as unknown as { attached_vmid: number }).attached_vmid;
      await qm("set", String(S), "--delete", "scsi1");
      const { code, body } = await check();
      assert.equal(code, 0, "warnings alone exit 0");
      assert.equal(body.ok, true);
      const f = only(body, "attached_vmid_stale", "warning");
      assert.match(
        f.message,
        new RegExp(`attached to sandbox ${S}, but VM ${S} does not reference ${volid}`),
      );
      assert.equal(f.fix, "agentlab workspace detach ws1");
      const detached = await m.h.cli(["workspace", "detach", "ws1"]);
      assert.equal(detached.code, 0, detached.stderr);
      await assertClean("detached");
    });

    test("an unprotected holder is holder_not_protected; a manual qm snapshot is snapshot_untracked (info)", async () => {
      await qm("set", String(H), "--delete", "protection");
      await qm("snapshot", String(H), "manual1");
      const { code, body } = await check();
      assert.equal(code, 0);
      assert.equal(only(body, "holder_not_protected", "warning").fix, `qm set ${H} --protection 1`);
      const untracked = only(body, "snapshot_untracked", "info");
      assert.match(untracked.message, /snapshot "manual1", which agentlab did not take/);
      assert.match(untracked.fix ?? "", /shows it as external/);
      await qm("set", String(H), "--protection", "1");
      await qm("delsnapshot", String(H), "manual1");
      await assertClean("protected again, snapshot gone");
    });

    test("a lock left on the holder is holder_locked; qm unlock fixes it", async () => {
      await inspect(m.h.sim.dir, (ctx) => {
        ctx.state.vms[String(H)]!.config["lock"] = "backup";
      });
      const { code, body } = await check();
      assert.equal(code, 0);
      const f = only(body, "holder_locked", "warning");
      assert.match(f.message, /locked \(backup\) and no task is running on it/);
      assert.equal(f.fix, `qm unlock ${H}`);
      await qm("unlock", String(H));
      await assertClean("unlocked");
    });

    test("a running holder is holder_running (error)", async () => {
      await qm("start", String(H));
      const { code, body } = await check();
      assert.equal(code, 1);
      assert.equal(
        only(body, "holder_running", "error").fix,
        `qm stop ${H} (first make sure no sandbox uses the disk)`,
      );
      await qm("stop", String(H));
      await assertClean("stopped");
    });

    test("an inactive storage is storage_inactive (error)", async () => {
      await inspect(m.h.sim.dir, (ctx) => {
        ctx.state.storages.find((s) => s.id === "local-zfs")!.active = false;
      });
      try {
        const { code, body } = await check();
        assert.equal(code, 1);
        const f = only(body, "storage_inactive", "error");
        assert.equal(f.message, "storage local-zfs is not active on node pve");
        assert.equal(f.fix, "pvesm status --storage local-zfs");
      } finally {
        await inspect(m.h.sim.dir, (ctx) => {
          ctx.state.storages.find((s) => s.id === "local-zfs")!.active = true;
        });
      }
      await assertClean("active again");
    });

    test("a holder whose config is lost is holder_missing; the printed qm create re-adopts the volume", async () => {
      await inspect(m.h.sim.dir, (ctx) => {
        delete ctx.state.vms[String(H)];
      });
      const { code, body } = await check();
      assert.equal(code, 1);
      const f = only(body, "holder_missing", "error");
      assert.equal(f.message, `holder VM ${H} of workspace ws1 does not exist in Proxmox`);
      assert.equal(f.fix, `qm create ${H} --name ws-ws1 --scsi0 ${volid} --protection 1 --tags agentlab-ws`);
      assert.equal(
        body.findings.filter((x) => x.code === "volume_missing").length,
        0,
        "the volume itself is still there",
      );
      await qm(...f.fix!.split(" ").slice(1));
      await assertClean("re-adopted");
    });

    test("a snapshot deleted by hand is snapshot_record_orphan until a maintenance pass drops the row", async () => {
      // A fresh start puts the next maintenance pass 30 s away: on a loaded machine the one already
      // scheduled could drop the row between the delete and the check (seen in CI).
      await restartAndSettle();
      const snap = await m.h.cli(["workspace", "snapshot", "create", "ws1", "s1"]);
      assert.equal(snap.code, 0, snap.stderr);
      await qm("delsnapshot", String(H), "s1");
      const { code, body } = await check();
      assert.equal(code, 0);
      const f = only(body, "snapshot_record_orphan", "warning");
      assert.match(f.message, /records snapshot "s1" \(user\), but holder VM \d+ has no such snapshot/);
      assert.equal(
        f.fix,
        "none needed: the next reconciler pass drops the row (event workspace.snapshot.dropped)",
      );
      await restartAndSettle();
      await assertClean("the row was dropped");
      const dropped = m.db((d) =>
        d
          .prepare("SELECT msg FROM events WHERE workspace_id = ? AND kind = 'workspace.snapshot.dropped'")
          .all(wsId),
      ) as Array<{ msg: string }>;
      assert.equal(dropped.length, 1);
      assert.match(dropped[0]!.msg, /snapshot s1 is no longer on holder VM/);
    });

    test("a lease whose owner is gone is lease_owner_gone; lease clear fixes it", async () => {
      // Right after a restart's first pass the keeper's next pass is 30 s away, so the check sees the
      // lease as the test wrote it.
      await restartAndSettle();
      m.db((d) =>
        d
          .prepare(
            "UPDATE workspaces SET lease_owner = ?, lease_nonce = ?, lease_expires_at = ? WHERE id = ?",
          )
          .run("session:session_00000000deadbeef", "0".repeat(32), toDbTime(Date.now() + 3_600_000), wsId),
      );
      const { code, body } = await check();
      assert.equal(code, 0);
      const f = only(body, "lease_owner_gone", "warning");
      assert.match(
        f.message,
        /held by session:session_00000000deadbeef until .*, but session session_00000000deadbeef does not exist/,
      );
      assert.equal(f.fix, "agentlab workspace lease clear ws1");
      const cleared = await m.h.cli(["workspace", "lease", "clear", "ws1"]);
      assert.equal(cleared.code, 0, cleared.stderr);
      await assertClean("lease cleared");
    });

    test("an operation row no process runs is op_unfinished; a restart's recovery settles it", async () => {
      m.db((d) =>
        d
          .prepare(
            "INSERT INTO workspace_ops (workspace_id, kind, step, params_json, created_at, updated_at) VALUES (?, 'attach', 'begin', ?, ?, ?)",
          )
          .run(
            wsId,
            JSON.stringify({ vmid: 999_999, node: "pve" }),
            toDbTime(Date.now() - 60_000),
            toDbTime(Date.now() - 60_000),
          ),
      );
      const { code, body } = await check();
      assert.equal(code, 0);
      const f = only(body, "op_unfinished", "warning");
      assert.match(f.message, /^a attach operation \(step begin, since .*\) was left unfinished/);
      assert.equal(f.fix, "systemctl restart agentlabd (recovery finishes it)");
      await restartAndSettle();
      await until("the attach to be rolled back", () =>
        m.db((d) => d.prepare("SELECT count(*) AS n FROM workspace_ops").get() as { n: number }).n === 0
          ? true
          : undefined,
      );
      await assertClean("settled by recovery");
      const recovered = m.db((d) =>
        d
          .prepare("SELECT json FROM events WHERE workspace_id = ? AND kind = 'workspace.recovered'")
          .all(wsId),
      ) as Array<{ json: string }>;
      assert.equal(recovered.length, 1);
      assert.deepEqual(
        { ...JSON.parse(recovered[0]!.json), op_id: undefined },
        { op_kind: "attach", outcome: "rolled_back", step: "begin", op_id: undefined },
      );
    });

    test("the sandbox inventory never offers to destroy a holder, even one tagged agentlab", async () => {
      const inventory = async () => {
        const result = await m.h.json<{ findings: Array<{ code: string; vmid?: number; fix?: string }> }>([
          "sandbox",
          "inventory",
        ]);
        assert.equal(result.code, 0, result.stderr);
        return result.body.findings;
      };
      // Tagged like a sandbox: only the holder VMIDs of the database tell it apart.
      await qm("set", String(H), "--tags", "agentlab");
      // A VM tagged both ways that no row names: the agentlab-ws tag alone keeps it out.
      const stray = await newSandbox();
      await qm("set", String(stray), "--tags", "agentlab;agentlab-ws");
      m.db((d) => d.prepare("UPDATE sandboxes SET state = 'DESTROYED' WHERE vmid = ?").run(stray));
      try {
        const findings = await inventory();
        assert.deepEqual(
          findings.filter((f) => f.vmid === H || f.vmid === stray),
          [],
          `no finding about holders: ${JSON.stringify(findings)}`,
        );
        assert.ok(!findings.some((f) => f.fix?.includes(`qm destroy ${H}`)));
      } finally {
        await qm("set", String(H), "--tags", "agentlab-ws");
      }
      assert.ok(logLine(m.daemon, "agentlabd ready"));
    });
  });
}
