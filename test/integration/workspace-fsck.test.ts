import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { runCli } from "../helpers/daemon.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { hostReboot, inspect, setControl } from "../pvesim/harness.js";
import { findVolume } from "../pvesim/storage.js";
import { createWorkspace, volumeBackingFile, workspaceEvents } from "./workspace-volume.js";

/**
 * `workspace fsck` through the real CLI and daemon on the simulator, with real e2fsck on the real ext4
 * that `workspace create` put on the volume (host tools on: the simulator's lvs/lvchange are on the
 * daemon's PATH and its device links point at the volume files). The troubleshooting guide's sequence:
 * a corrupted filesystem reads NEEDS REPAIR with the remediation, --repair repairs it, the next check
 * is clean.
 */

interface WorkspaceBody {
  id: string;
  name: string;
  volid: string;
  holder_vmid: number;
  lease_owner?: string;
}
interface FsckBody {
  workspace: string;
  volume: { volid: string; storage: string; path: string; device?: string };
  mode: string;
  status: string;
  exit_code?: number;
  exit_summary: string;
  remediation?: string;
  command?: string;
  output: string;
}
interface ErrorBody {
  code: string;
  message: string;
  hint: string;
  details: Record<string, unknown>;
}

const MiB = 1024 * 1024;

/** An inode whose link count is wrong: e2fsck -n exits 4, -y fixes it (design §8.3, checked locally). */
async function corrupt(h: SimHost, ws: WorkspaceBody): Promise<void> {
  const file = await volumeBackingFile(h, ws.volid);
  execFileSync("debugfs", ["-w", "-R", "mkdir work", file], { stdio: "pipe" });
  execFileSync("debugfs", ["-w", "-R", "set_inode_field /work links_count 7", file], { stdio: "pipe" });
}

async function lvActive(h: SimHost, volid: string): Promise<boolean | undefined> {
  return inspect(h.sim.dir, (ctx) => findVolume(ctx.state, "pve", volid)?.active);
}

describe("workspace fsck with host tools (shell backend)", () => {
  let h: SimHost;

  before(async () => {
    h = await startSimHost("shell", "host_tools: on\n");
    await setControl(h.sim.dir, FAST_KNOBS);
  });
  after(async () => {
    await h.stop();
  });

  for (const storage of ["local-lvm", "local-zfs"]) {
    test(`${storage}: clean, then NEEDS REPAIR after corruption, repaired with --repair, clean again`, async () => {
      const ws = await createWorkspace(h, `fsck-${storage}`, storage);
      const clean = await h.cli(["workspace", "fsck", ws.name]);
      assert.equal(clean.code, 0, `${clean.stdout}${clean.stderr}`);
      assert.match(clean.stdout, /^Status: clean$/m);
      assert.match(clean.stdout, /^Mode: read-only$/m);

      await corrupt(h, ws);
      const broken = await h.cli(["workspace", "fsck", ws.name]);
      assert.equal(broken.code, 1, broken.stdout);
      assert.match(broken.stdout, /^Status: NEEDS REPAIR$/m);
      assert.match(
        broken.stdout,
        new RegExp(`^Remediation: agentlab workspace fsck ${ws.name} --repair$`, "m"),
      );
      assert.match(broken.stdout, /^Exit: 4 \(errors left uncorrected \(4\)\)$/m);
      assert.match(broken.stdout, /Inode \d+ ref count is 7, should be 2\. {2}Fix\? no/);
      const json = await h.json<FsckBody>(["workspace", "fsck", ws.name]);
      assert.equal(json.code, 1);
      assert.equal(json.body.status, "needs_repair");
      assert.equal(json.body.exit_code, 4);
      assert.equal(json.body.remediation, `agentlab workspace fsck ${ws.name} --repair`);
      assert.equal(json.body.volume.volid, ws.volid);
      assert.match(String(json.body.command), /^e2fsck -f -n /);

      const repaired = await h.cli(["workspace", "fsck", ws.name, "--repair"]);
      assert.equal(repaired.code, 0, repaired.stdout);
      assert.match(repaired.stdout, /^Status: repaired$/m);
      assert.match(repaired.stdout, /^Mode: repair$/m);

      const again = await h.json<FsckBody>(["workspace", "fsck", ws.name]);
      assert.equal(again.code, 0);
      assert.equal(again.body.status, "clean");
      assert.equal(again.body.exit_code, 0);

      const shown = await h.json<WorkspaceBody & { last_fsck?: { status: string; mode: string } }>([
        "workspace",
        "show",
        ws.name,
      ]);
      assert.equal(shown.body.last_fsck?.status, "clean");
      assert.equal(shown.body.lease_owner, undefined);
      const events = workspaceEvents(h, ws.id);
      assert.equal(events.filter((e) => e === "workspace.fsck.started").length, 5, String(events));
      assert.equal(events.filter((e) => e === "workspace.fsck.completed").length, 5, String(events));
    });
  }

  test("lvmthin after a host reboot: the LV is activated for the check and deactivated after", async () => {
    const ws = await createWorkspace(h, "fsck-reboot", "local-lvm");
    await hostReboot(h.sim.dir);
    assert.equal(await lvActive(h, ws.volid), false, "PVE 9 leaves thin LVs inactive after a reboot");
    const result = await h.json<FsckBody>(["workspace", "fsck", ws.name]);
    assert.equal(result.code, 0, JSON.stringify(result.body));
    assert.equal(result.body.status, "clean");
    assert.equal(await lvActive(h, ws.volid), false, "and the check left it so");
  });

  test("a volume without a filesystem reads failed", async () => {
    const ws = await createWorkspace(h, "fsck-blank", "local-lvm");
    const fd = openSync(await volumeBackingFile(h, ws.volid), "r+");
    writeSync(fd, Buffer.alloc(8 * MiB), 0, 8 * MiB, 0);
    closeSync(fd);
    const result = await h.cli(["workspace", "fsck", ws.name]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^Status: failed$/m);
    assert.match(result.stdout, /no ext4 filesystem \(never formatted\?\)/);
  });

  test("dir (qcow2) and an attached workspace are refused in the troubleshooting guide's words", async () => {
    const qcow = await createWorkspace(h, "fsck-qcow", "local");
    const unsupported = await h.json<ErrorBody>(["workspace", "fsck", qcow.name]);
    assert.equal(unsupported.code, 1);
    assert.equal(unsupported.body.code, "HOST_TOOLS_UNAVAILABLE");
    assert.match(unsupported.body.message, /^workspace fsck unsupported for volume path \/\S+\.qcow2: /);
    assert.equal((await h.json<WorkspaceBody>(["workspace", "show", qcow.name])).body.lease_owner, undefined);

    const ws = await createWorkspace(h, "fsck-attached", "local-zfs");
    const sandbox = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(sandbox.code, 0, sandbox.stderr);
    assert.equal((await h.cli(["workspace", "attach", ws.name, String(sandbox.body.vmid)])).code, 0);
    const refused = await h.json<ErrorBody>(["workspace", "fsck", ws.name]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "WORKSPACE_ATTACHED");
    assert.equal(
      refused.body.message,
      `workspace must be detached for fsck: attached to sandbox ${sandbox.body.vmid}`,
    );
    assert.equal(refused.body.hint, `detach it first: agentlab workspace detach ${ws.name}`);
    // The guide's sequence: detach, fsck, attach again.
    assert.equal((await h.cli(["workspace", "detach", ws.name])).code, 0);
    const checked = await h.cli(["workspace", "fsck", ws.name]);
    assert.equal(checked.code, 0, checked.stdout);
    assert.equal((await h.cli(["workspace", "attach", ws.name, String(sandbox.body.vmid)])).code, 0);
    assert.equal((await h.cli(["sandbox", "destroy", String(sandbox.body.vmid)])).code, 0);
  });

  test("two operations at once: one runs, the other gets WORKSPACE_LEASE_HELD with owner and expiry", async () => {
    const ws = await createWorkspace(h, "fsck-lease", "local-lvm");
    // A slow snapshot task keeps its lease long enough for the other request to meet it.
    await setControl(h.sim.dir, { task_ms: 1500 });
    try {
      const run = (args: string[]) => runCli(["--socket", h.host.socketPath, "--json", ...args]);
      const [snap, fsck] = await Promise.all([
        run(["workspace", "snapshot", "create", ws.name, "s-lease"]),
        run(["workspace", "fsck", ws.name]),
      ]);
      const results = [snap, fsck];
      const ok = results.filter((r) => r.code === 0);
      const refused = results.filter((r) => r.code !== 0);
      assert.equal(ok.length, 1, JSON.stringify(results));
      assert.equal(refused.length, 1, JSON.stringify(results));
      assert.equal(refused[0]!.code, 1);
      const body = JSON.parse(refused[0]!.stdout) as ErrorBody;
      assert.equal(body.code, "WORKSPACE_LEASE_HELD");
      assert.equal(body.message, "workspace lease held");
      assert.match(String(body.details.lease_owner), new RegExp(`^(snapshot|fsck):${ws.id}:[0-9a-f]{8}$`));
      assert.match(String(body.details.lease_expires_at), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(body.details.workspace_name, ws.name);
      assert.match(body.hint, new RegExp(`agentlab workspace lease clear ${ws.name}$`));
    } finally {
      await setControl(h.sim.dir, { task_ms: 20 });
    }
    const shown = await h.json<WorkspaceBody>(["workspace", "show", ws.name]);
    assert.equal(shown.body.lease_owner, undefined, "the winner released its lease");
  });
});

describe("workspace fsck without host tools (API backend)", () => {
  let h: SimHost;

  before(async () => {
    h = await startSimHost("api", "host_tools: off\n");
    await setControl(h.sim.dir, { task_ms: 20 });
  });
  after(async () => {
    await h.stop();
  });

  test("the unsupported-volume-path refusal names the path and why, and changes nothing", async () => {
    const ws = await createWorkspace(h, "api-fsck", "local-zfs");
    const path = await inspect(h.sim.dir, (ctx) => {
      const rec = findVolume(ctx.state, "pve", ws.volid)!;
      return `${ctx.dir}/dev/zvol/rpool/data/${rec.volname}`;
    });
    assert.ok(existsSync(path));
    const refused = await h.json<ErrorBody>(["workspace", "fsck", ws.name]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "HOST_TOOLS_UNAVAILABLE");
    assert.equal(
      refused.body.message,
      `workspace fsck unsupported for volume path ${path}: host_tools is off in the daemon's config`,
    );
    assert.equal(
      refused.body.hint,
      `run agentlabd on pve, use a maintenance sandbox, or run e2fsck -f -n ${path} on pve`,
    );
    const text = await h.cli(["workspace", "fsck", ws.name, "--repair"]);
    assert.equal(text.code, 1);
    assert.match(text.stderr, /^error: workspace fsck unsupported for volume path /m);
    const shown = await h.json<WorkspaceBody & { last_fsck?: unknown }>(["workspace", "show", ws.name]);
    assert.equal(shown.body.lease_owner, undefined);
    assert.equal(shown.body.last_fsck, undefined);
    assert.ok(!workspaceEvents(h, ws.id).includes("workspace.fsck.started"));
  });
});
