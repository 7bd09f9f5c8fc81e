import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, inspect, runTool, setControl } from "../pvesim/harness.js";

/**
 * pause/resume, update, revert, snapshot save/list/restore, stop --all and validate, driven through the
 * real CLI and daemon against the simulator on both backends. Messages the specs fix are asserted
 * verbatim.
 */

interface SandboxBody {
  vmid: number;
  name: string;
  state: string;
  ip?: string;
  tags: string[];
}
interface ErrorBody {
  error: string;
  code: string;
  message: string;
  details: Record<string, unknown>;
  hint: string;
}
interface Issue {
  code: string;
  field?: string;
  message: string;
}
interface ValidateBody {
  ok: boolean;
  errors: Issue[];
  warnings: Issue[];
  plan: Record<string, unknown> & { tags: string[] };
}

const HAS_SCRIPT = spawnSync("script", ["--version"]).status === 0;

/** The simulator's view of a VM. */
function simVm(h: SimHost, vmid: number) {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    return vm
      ? {
          status: vm.runtime.status,
          qmpstatus: vm.runtime.qmpstatus,
          config: { ...vm.config },
          pending: { ...vm.pending },
          snapshots: Object.keys(vm.snapshots),
        }
      : undefined;
  });
}

function forceState(h: SimHost, vmid: number, state: string): void {
  const db = new Database(h.host.dbPath);
  db.prepare("UPDATE sandboxes SET state = ? WHERE vmid = ?").run(state, vmid);
  db.close();
}

/** The sandbox's root volume file in the simulator (a real sparse file). */
async function rootVolume(h: SimHost, vmid: number): Promise<string> {
  const vm = await simVm(h, vmid);
  const volid = String(vm?.config.scsi0).split(",")[0]!;
  const result = await runTool(h.sim, "pvesm", ["path", volid]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

const MARK = Buffer.from("agentlab-test-marker");
const MARK_AT = 1024 * 1024;

/**
 * Whether a marker is on the root disk, after writing it ("write", what a guest writing to / would do)
 * or zeroing it ("erase").
 */
async function marker(h: SimHost, vmid: number, change?: "write" | "erase"): Promise<boolean> {
  const fd = openSync(await rootVolume(h, vmid), change ? "r+" : "r");
  try {
    if (change) writeSync(fd, change === "write" ? MARK : Buffer.alloc(MARK.length), 0, MARK.length, MARK_AT);
    const read = Buffer.alloc(MARK.length);
    readSync(fd, read, 0, read.length, MARK_AT);
    return read.equals(MARK);
  } finally {
    closeSync(fd);
  }
}

async function eventKinds(h: SimHost, vmid: number): Promise<string[]> {
  const logs = await h.cli(["--json", "logs", String(vmid), "--tail", "200"]);
  assert.equal(logs.code, 0, logs.stderr);
  return logs.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line).kind as string);
}

/**
 * Run the CLI on a terminal (util-linux `script` gives it a pty) and type `answer`. The pty merges
 * stdout and stderr, and echoes what was typed.
 */
function cliOnTty(
  h: SimHost,
  args: string[],
  answer: string,
): Promise<{ code: number | null; output: string }> {
  const command = [process.execPath, AGENTLAB_BIN, "--socket", h.host.socketPath, ...args].join(" ");
  return new Promise((resolve, reject) => {
    const child = spawn("script", ["-qec", command, "/dev/null"], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, AGENTLAB_SOCKET: "" },
    });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output: output.replace(/\r/g, "") }));
    child.stdin.end(`${answer}\n`);
  });
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`sandbox operations through the CLI and daemon on the simulator (${kind} backend)`, () => {
    let h: SimHost;
    let a: SandboxBody;
    let b: SandboxBody;

    before(async () => {
      h = await startSimHost(kind);
      // Nothing here measures Proxmox's timing: short tasks keep the many round trips quick.
      await setControl(h.sim.dir, FAST_KNOBS);
      const first = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral", "--tag", "base"]);
      const second = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(first.code, 0, first.stderr);
      assert.equal(second.code, 0, second.stderr);
      a = first.body;
      b = second.body;
    });
    after(async () => {
      await h.stop();
    });

    test("pause suspends to RAM and resume brings the sandbox back with its address; other states are refused", async () => {
      const paused = await h.cli(["sandbox", "pause", String(a.vmid)]);
      assert.equal(paused.code, 0, paused.stderr);
      assert.equal(paused.stdout, `sandbox ${a.vmid} is SUSPENDED at ${a.ip}\n`);
      const vm = await simVm(h, a.vmid);
      assert.equal(vm?.status, "running");
      assert.equal(vm?.qmpstatus, "paused");

      const again = await h.cli(["sandbox", "pause", String(a.vmid)]);
      assert.equal(again.code, 1);
      assert.match(
        again.stderr,
        /^error: cannot pause sandbox in SUSPENDED state\. Valid states: READY, RUNNING$/m,
      );
      assert.match(
        again.stderr,
        new RegExp(`^hint: it is paused already; resume it with agentlab sandbox resume ${a.vmid}$`, "m"),
      );

      const resumed = await h.json<SandboxBody>(["sandbox", "resume", String(a.vmid)]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.equal(resumed.body.state, "RUNNING");
      assert.equal(resumed.body.ip, a.ip, "the address survives a pause");
      assert.equal((await simVm(h, a.vmid))?.qmpstatus, "running");

      const refused = await h.json<ErrorBody>(["sandbox", "resume", String(a.vmid)]);
      assert.equal(refused.code, 1);
      assert.equal(refused.body.code, "INVALID_STATE");
      assert.equal(refused.body.message, "cannot resume sandbox in RUNNING state. Valid states: SUSPENDED");
      assert.deepEqual(refused.body.details.valid, ["SUSPENDED"]);

      const kinds = await eventKinds(h, a.vmid);
      assert.ok(
        kinds.includes("sandbox.pause.completed") && kinds.includes("sandbox.resume.completed"),
        String(kinds),
      );
      const missing = await h.json<ErrorBody>(["sandbox", "pause", "4242"]);
      assert.equal(missing.body.code, "SANDBOX_NOT_FOUND");
    });

    test("update sets cores, memory and tags; a running VM holds cores and memory as pending", async () => {
      const result = await h.json<{
        sandbox: SandboxBody;
        cores: number;
        memory_mb: number;
        pending: string[];
      }>([
        "sandbox",
        "update",
        String(a.vmid),
        "--cores",
        "2",
        "--memory",
        "8G",
        "--tag",
        "Web",
        "--tag",
        "CI",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(result.body.sandbox.tags, ["web", "ci"]);
      assert.equal(result.body.cores, 2);
      assert.equal(result.body.memory_mb, 8192);
      assert.deepEqual(result.body.pending, ["cores", "memory_mb"]);
      const vm = await simVm(h, a.vmid);
      assert.equal(vm?.pending.cores, "2");
      assert.equal(vm?.pending.memory, "8192");
      assert.equal(vm?.config.tags, "agentlab;ci;web", "the managed tag stays");

      const text = await h.cli(["sandbox", "update", String(a.vmid), "--memory", "8192"]);
      assert.equal(text.code, 0, text.stderr);
      assert.equal(
        text.stdout,
        `sandbox ${a.vmid} updated: 2 cores, 8192 MB memory, tags web, ci\npending until the VM's next cold start: memory (apply with agentlab sandbox stop ${a.vmid}, then agentlab sandbox start ${a.vmid})\n`,
      );
      const cleared = await h.json<{ sandbox: SandboxBody; pending: string[] }>([
        "sandbox",
        "update",
        String(a.vmid),
        "--clear-tags",
      ]);
      assert.deepEqual(cleared.body.sandbox.tags, []);
      assert.deepEqual(cleared.body.pending, []);
      assert.equal((await simVm(h, a.vmid))?.config.tags, "agentlab");
      assert.ok((await eventKinds(h, a.vmid)).includes("sandbox.configured"));

      // A stopped VM takes the change at once: nothing pending.
      assert.equal((await h.cli(["stop", String(b.vmid)])).code, 0);
      const stopped = await h.json<{ memory_mb: number; pending: string[] }>([
        "sandbox",
        "update",
        String(b.vmid),
        "--memory",
        "4GiB",
      ]);
      assert.deepEqual(stopped.body.pending, []);
      assert.equal(stopped.body.memory_mb, 4096);
      assert.equal((await simVm(h, b.vmid))?.config.memory, "4096");
      assert.match(
        (await h.cli(["sandbox", "update", String(b.vmid), "--cores", "3"])).stdout,
        /^sandbox \d+ updated: 3 cores, 4096 MB memory, tags -\n$/,
      );
    });

    test("update refuses a request without a field, or with contradicting or malformed flags", async () => {
      const cases: Array<[string[], RegExp]> = [
        [[], /^error: nothing to update: give at least one of --cores, --memory, --tag, --clear-tags$/m],
        [["--tag", "x", "--clear-tags"], /^error: give either --tag or --clear-tags, not both$/m],
        [
          ["--memory", "12X"],
          /^error: --memory: expected a memory size such as 8192, 512M, 8G or 8GiB, got "12X"$/m,
        ],
        [["--memory", "0"], /^error: --memory: memory must be positive$/m],
        [["--cores", "1.5"], /^error: --cores: expected a whole number of at least 1, got 1\.5$/m],
      ];
      for (const [flags, message] of cases) {
        const result = await h.cli(["sandbox", "update", String(a.vmid), ...flags]);
        assert.equal(result.code, 2, flags.join(" "));
        assert.match(result.stderr, message);
      }
      const json = await h.json<ErrorBody>(["sandbox", "update", String(a.vmid)]);
      assert.equal(json.code, 2);
      assert.equal(json.body.code, "USAGE");
    });

    test("revert refuses without --force when nobody can confirm, and asks on a terminal", async () => {
      const json = await h.json<ErrorBody>(["sandbox", "revert", String(a.vmid)]);
      assert.equal(json.code, 2);
      assert.equal(json.body.code, "CONFIRMATION_REQUIRED");
      assert.equal(json.body.message, "refusing to revert sandbox without --force in --json mode");
      const batch = await h.cli(["sandbox", "revert", String(a.vmid)]);
      assert.equal(batch.code, 2);
      assert.match(
        batch.stderr,
        /^error: refusing to revert sandbox without --force in non-interactive mode$/m,
      );
      const both = await h.cli(["sandbox", "revert", "--restart", "--no-restart", String(a.vmid)]);
      assert.equal(both.code, 2);
      assert.match(both.stderr, /^error: give either --restart or --no-restart, not both$/m);
      if (HAS_SCRIPT) {
        const declined = await cliOnTty(h, ["sandbox", "revert", String(a.vmid)], "no");
        assert.equal(declined.code, 1, declined.output);
        assert.match(
          declined.output,
          new RegExp(`Confirm revert sandbox ${a.vmid}\\? Type 'yes' to continue: `),
        );
        assert.match(declined.output, new RegExp(`error: not confirmed: did not revert sandbox ${a.vmid}`));
      }
      const kinds = await eventKinds(h, a.vmid);
      assert.ok(!kinds.includes("sandbox.revert.started"), "nothing reached the daemon");
    });

    test("revert rolls the root disk back to clean, keeps update's settings, restarts and re-discovers the address", async () => {
      assert.equal(await marker(h, a.vmid, "write"), true);
      let sandbox: SandboxBody;
      if (HAS_SCRIPT) {
        const onJson = await cliOnTty(h, ["--json", "sandbox", "revert", String(a.vmid)], "yes");
        assert.equal(onJson.code, 2, "--json refuses even on a terminal: nobody reads a question there");
        assert.match(onJson.output, /"message":"refusing to revert sandbox without --force in --json mode"/);
        const tty = await cliOnTty(h, ["sandbox", "revert", String(a.vmid)], "yes");
        assert.equal(tty.code, 0, tty.output);
        assert.match(tty.output, new RegExp(`Confirm revert sandbox ${a.vmid}\\? Type 'yes' to continue: `));
        assert.match(
          tty.output,
          new RegExp(`sandbox ${a.vmid} reverted to snapshot "clean"; restarted: RUNNING at 10\\.77\\.`),
        );
        sandbox = (await h.json<SandboxBody>(["show", String(a.vmid)])).body;
      } else {
        const forced = await h.json<{ sandbox: SandboxBody; was_running: boolean; restarted: boolean }>([
          "sandbox",
          "revert",
          "--force",
          String(a.vmid),
        ]);
        assert.equal(forced.code, 0, forced.stderr);
        assert.deepEqual([forced.body.was_running, forced.body.restarted], [true, true]);
        sandbox = forced.body.sandbox;
      }
      assert.equal(sandbox.state, "RUNNING");
      assert.match(sandbox.ip ?? "", /^10\.77\./, "the address is asked again after the restart");
      assert.equal(await marker(h, a.vmid), false, "the root disk is back to clean");
      const vm = await simVm(h, a.vmid);
      assert.equal(vm?.status, "running");
      assert.equal(vm?.config.cores, "2", "update's cores survive the rollback of the config");
      assert.equal(vm?.config.memory, "8192");
      assert.equal(vm?.config.tags, "agentlab");
      const kinds = await eventKinds(h, a.vmid);
      assert.ok(kinds.includes("sandbox.revert.started") && kinds.includes("sandbox.revert.completed"));

      // --force, --no-restart: no question, left STOPPED without an address.
      const stay = await h.json<{ sandbox: SandboxBody; was_running: boolean; restarted: boolean }>([
        "sandbox",
        "revert",
        "--force",
        "--no-restart",
        String(a.vmid),
      ]);
      assert.equal(stay.code, 0, stay.stderr);
      assert.deepEqual(
        {
          state: stay.body.sandbox.state,
          ip: stay.body.sandbox.ip,
          was: stay.body.was_running,
          restarted: stay.body.restarted,
        },
        { state: "STOPPED", ip: undefined, was: true, restarted: false },
      );
      // A STOPPED sandbox needs no confirmation, even with --json; by default it stays stopped.
      const stopped = await h.json<{ sandbox: SandboxBody; was_running: boolean; restarted: boolean }>([
        "sandbox",
        "revert",
        String(a.vmid),
      ]);
      assert.equal(stopped.code, 0, stopped.stderr);
      assert.equal(stopped.body.sandbox.state, "STOPPED");
      assert.equal(stopped.body.restarted, false);
      const restarted = await h.cli(["sandbox", "revert", "--restart", String(a.vmid)]);
      assert.equal(restarted.code, 0, restarted.stderr);
      assert.match(
        restarted.stdout,
        new RegExp(`^sandbox ${a.vmid} reverted to snapshot "clean"; restarted: RUNNING at 10\\.77\\.`),
      );
    });

    test("revert refuses provisioning and DESTROYED sandboxes, extra disks, and a missing clean snapshot without stopping anything", async () => {
      forceState(h, b.vmid, "BOOTING");
      const booting = await h.cli(["sandbox", "revert", "--force", String(b.vmid)]);
      forceState(h, b.vmid, "STOPPED");
      assert.equal(booting.code, 1);
      assert.match(
        booting.stderr,
        /^error: cannot revert sandbox in BOOTING state\. Valid states: READY, RUNNING, STOPPED, COMPLETED, FAILED, TIMEOUT$/m,
      );

      await inspect(h.sim.dir, (ctx) => {
        ctx.state.vms[String(a.vmid)]!.config.scsi1 = "local-zfs:vm-4242-disk-0,size=1G";
      });
      const disks = await h.json<ErrorBody>(["sandbox", "revert", "--force", String(a.vmid)]);
      await inspect(h.sim.dir, (ctx) => {
        delete ctx.state.vms[String(a.vmid)]!.config.scsi1;
      });
      assert.equal(disks.body.code, "CONFLICT");
      assert.equal(
        disks.body.message,
        `sandbox ${a.vmid} has disks besides its root disk (scsi1); revert rolls back the root disk only`,
      );
      assert.equal((await simVm(h, a.vmid))?.status, "running", "nothing was stopped");

      await inspect(h.sim.dir, (ctx) => {
        const vm = ctx.state.vms[String(a.vmid)]!;
        delete vm.snapshots.clean;
        delete vm.config.parent;
      });
      const missing = await h.cli(["sandbox", "revert", "--force", String(a.vmid)]);
      assert.equal(missing.code, 1);
      assert.match(
        missing.stderr,
        new RegExp(
          `^error: snapshot "clean" not found; reprovision the sandbox or create it via Proxmox \\(qm snapshot ${a.vmid} clean\\)$`,
          "m",
        ),
      );
      const show = await h.json<SandboxBody>(["show", String(a.vmid)]);
      assert.equal(show.body.state, "RUNNING", "the sandbox was left as it was");
      assert.equal((await simVm(h, a.vmid))?.status, "running");

      const gone = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal((await h.cli(["rm", String(gone.body.vmid)])).code, 0);
      const destroyed = await h.json<ErrorBody>(["sandbox", "revert", "--force", String(gone.body.vmid)]);
      assert.equal(destroyed.body.code, "INVALID_STATE");
      assert.equal(
        destroyed.body.message,
        "cannot revert sandbox in DESTROYED state. Valid states: READY, RUNNING, STOPPED, COMPLETED, FAILED, TIMEOUT",
      );
    });

    test("snapshot save needs a STOPPED sandbox and a valid, free name; list shows Proxmox's snapshots", async () => {
      const running = await h.cli(["sandbox", "snapshot", "save", String(a.vmid), "before"]);
      assert.equal(running.code, 1);
      assert.match(running.stderr, /^error: sandbox must be stopped for snapshots$/m);
      const names: Array<[string, RegExp]> = [
        [
          "1abc",
          /^error: invalid snapshot name "1abc": 2 to 40 letters, digits, _ or -, starting with a letter$/m,
        ],
        ["a", /^error: invalid snapshot name "a"/m],
        ["x".repeat(41), /^error: invalid snapshot name "x{41}"/m],
        ["bad.name", /^error: invalid snapshot name "bad\.name"/m],
        [
          "clean",
          /^error: snapshot name "clean" is reserved: sandbox revert goes back to the "clean" snapshot$/m,
        ],
        ["current", /^error: snapshot name "current" is reserved by Proxmox$/m],
        ["pending", /^error: snapshot name "pending" is reserved by Proxmox$/m],
      ];
      for (const [name, message] of names) {
        const result = await h.cli(["sandbox", "snapshot", "save", "--force", String(b.vmid), name]);
        assert.equal(result.code, 2, name);
        assert.match(result.stderr, message);
      }

      assert.equal(await marker(h, b.vmid, "write"), true);
      const saved = await h.json<{ vmid: number; name: string; created_at: string }>([
        "sandbox",
        "snapshot",
        "save",
        String(b.vmid),
        "Before_upgrade-1",
      ]);
      assert.equal(saved.code, 0, saved.stderr);
      assert.equal(saved.body.vmid, b.vmid);
      assert.equal(saved.body.name, "Before_upgrade-1");
      assert.ok(Math.abs(Date.parse(saved.body.created_at) - Date.now()) < 60_000);
      const duplicate = await h.json<ErrorBody>([
        "sandbox",
        "snapshot",
        "save",
        String(b.vmid),
        "Before_upgrade-1",
      ]);
      assert.equal(duplicate.body.code, "CONFLICT");
      assert.equal(duplicate.body.message, 'snapshot "Before_upgrade-1" already exists');

      const list = await h.json<{
        vmid: number;
        snapshots: Array<{ name: string; created_at: string; vmstate: boolean }>;
      }>(["sandbox", "snapshot", "list", String(b.vmid)]);
      assert.deepEqual(
        list.body.snapshots.map((s) => s.name),
        ["clean", "Before_upgrade-1"],
        "oldest first, without Proxmox's current entry",
      );
      assert.equal(list.body.snapshots[1]?.vmstate, false);
      assert.match(list.body.snapshots[0]?.created_at ?? "", /^\d{4}-\d\d-\d\dT/);
      const text = await h.cli(["sandbox", "snapshot", "list", String(b.vmid)]);
      assert.match(
        text.stdout,
        /^NAME +CREATED +RAM +DESCRIPTION\nclean +\S+ +no +agentlab: state right after provisioning\nBefore_upgrade-1 +\S+ +no\n$/,
      );

      const forced = await h.json<{ name: string }>([
        "sandbox",
        "snapshot",
        "save",
        "--force",
        String(a.vmid),
        "live",
      ]);
      assert.equal(forced.code, 0, forced.stderr);
      assert.ok((await simVm(h, a.vmid))?.snapshots.includes("live"));
      assert.equal((await simVm(h, a.vmid))?.status, "running", "a forced snapshot leaves the VM running");
      assert.ok((await eventKinds(h, a.vmid)).includes("sandbox.snapshot.created"));
    });

    test("snapshot restore rolls back a STOPPED sandbox; --force restores a running one, which ends STOPPED without an address", async () => {
      assert.equal(await marker(h, b.vmid, "erase"), false);
      const unknown = await h.json<ErrorBody>(["sandbox", "snapshot", "restore", String(b.vmid), "nope"]);
      assert.equal(unknown.body.code, "SNAPSHOT_NOT_FOUND");
      assert.equal(unknown.body.message, 'snapshot "nope" not found');
      assert.equal(
        unknown.body.hint,
        `list the sandbox's snapshots: agentlab sandbox snapshot list ${b.vmid}`,
      );

      const restored = await h.cli(["sandbox", "snapshot", "restore", String(b.vmid), "Before_upgrade-1"]);
      assert.equal(restored.code, 0, restored.stderr);
      assert.equal(
        restored.stdout,
        `sandbox ${b.vmid} restored to snapshot "Before_upgrade-1"; STOPPED (start it with agentlab sandbox start ${b.vmid})\n`,
      );
      assert.equal(await marker(h, b.vmid), true, "the marker written before the snapshot is back");

      // On ZFS only the most recent snapshot can be rolled back to: revert says so before stopping anything.
      const zfs = await h.json<ErrorBody>(["sandbox", "revert", "--force", "--restart", String(b.vmid)]);
      assert.equal(zfs.body.code, "CONFLICT");
      assert.equal(
        zfs.body.message,
        'cannot roll back to snapshot "clean": the root disk is on ZFS storage local-zfs, which rolls back only to the most recent snapshot, and "Before_upgrade-1" was taken after it',
      );
      assert.equal(
        zfs.body.hint,
        `nothing was changed; delete the later snapshot first: qm delsnapshot ${b.vmid} Before_upgrade-1`,
      );
      assert.equal((await h.json<SandboxBody>(["show", String(b.vmid)])).body.state, "STOPPED");

      const refused = await h.cli(["sandbox", "snapshot", "restore", String(a.vmid), "live"]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^error: sandbox must be stopped for snapshots$/m);
      const forced = await h.json<{ sandbox: SandboxBody; snapshot: string }>([
        "sandbox",
        "snapshot",
        "restore",
        "--force",
        String(a.vmid),
        "live",
      ]);
      assert.equal(forced.code, 0, forced.stderr);
      assert.equal(forced.body.snapshot, "live");
      assert.equal(forced.body.sandbox.state, "STOPPED");
      assert.equal(forced.body.sandbox.ip, undefined, "the address is cleared");
      assert.equal((await simVm(h, a.vmid))?.status, "stopped");
      assert.equal((await simVm(h, a.vmid))?.config.tags, "agentlab", "the sandbox's tags are put back");
      assert.ok((await eventKinds(h, a.vmid)).includes("sandbox.snapshot.restored"));
    });

    test("stop --all asks unless --force, refuses a vmid with it, and reports each sandbox", async () => {
      for (const vmid of [a.vmid, b.vmid]) assert.equal((await h.cli(["start", String(vmid)])).code, 0);
      const json = await h.json<ErrorBody>(["sandbox", "stop", "--all"]);
      assert.equal(json.code, 2);
      assert.equal(json.body.code, "CONFIRMATION_REQUIRED");
      assert.equal(json.body.message, "refusing to stop all sandboxes without --force in --json mode");
      const batch = await h.cli(["stop", "--all"]);
      assert.equal(batch.code, 2);
      assert.match(
        batch.stderr,
        /^error: refusing to stop all sandboxes without --force in non-interactive mode$/m,
      );
      const both = await h.cli(["sandbox", "stop", "--all", String(a.vmid)]);
      assert.equal(both.code, 2);
      assert.match(both.stderr, /^error: give either a vmid or --all, not both$/m);
      const neither = await h.cli(["sandbox", "stop"]);
      assert.equal(neither.code, 2);
      assert.match(neither.stderr, /^error: name the sandbox to stop \(its vmid\), or use --all$/m);

      // One paused sandbox is not READY/RUNNING: it is left alone.
      assert.equal((await h.cli(["sandbox", "pause", String(b.vmid)])).code, 0);
      if (HAS_SCRIPT) {
        const tty = await cliOnTty(h, ["sandbox", "stop", "--all"], "yes");
        assert.equal(tty.code, 0, tty.output);
        assert.match(tty.output, /Confirm stop all sandboxes\? Type 'yes' to continue: /);
        assert.match(tty.output, /^stopped 1 of 1 sandbox \(0 skipped, 0 failed\)$/m);
        assert.match(tty.output, new RegExp(`^${a.vmid} +sandbox-${a.vmid} +stopped +STOPPED$`, "m"));
      } else {
        assert.equal((await h.cli(["sandbox", "stop", "--all", "--force"])).code, 0);
      }
      assert.equal((await simVm(h, a.vmid))?.status, "stopped");
      assert.equal((await simVm(h, b.vmid))?.qmpstatus, "paused", "the SUSPENDED sandbox was not touched");

      assert.equal((await h.cli(["sandbox", "resume", String(b.vmid)])).code, 0);
      assert.equal((await h.cli(["start", String(a.vmid)])).code, 0);
      await setControl(h.sim.dir, {}, [
        `fail_task=type=qmstop,vmid=${b.vmid},message=stop failed: got timeout`,
      ]);
      try {
        const result = await h.json<{
          total: number;
          stopped: number;
          skipped: number;
          failed: number;
          results: Array<{ vmid: number; result: string; state: string; reason?: string }>;
        }>(["sandbox", "stop", "--all", "--force"]);
        assert.equal(result.code, 1, "a failed stop fails the command");
        assert.deepEqual(
          {
            total: result.body.total,
            stopped: result.body.stopped,
            skipped: result.body.skipped,
            failed: result.body.failed,
          },
          { total: 2, stopped: 1, skipped: 0, failed: 1 },
        );
        const byVmid = new Map(result.body.results.map((r) => [r.vmid, r]));
        assert.equal(byVmid.get(a.vmid)?.result, "stopped");
        assert.equal(byVmid.get(a.vmid)?.state, "STOPPED");
        assert.equal(byVmid.get(b.vmid)?.result, "failed");
        assert.equal(byVmid.get(b.vmid)?.state, "RUNNING");
        assert.match(byVmid.get(b.vmid)?.reason ?? "", /got timeout/);
      } finally {
        await clearFaults(h.sim.dir);
      }
      const none = await h.cli(["sandbox", "stop", "--all", "--force"]);
      assert.equal(none.code, 0, none.stderr);
      assert.match(none.stdout, /^stopped 1 of 1 sandbox \(0 skipped, 0 failed\)$/m);
      const empty = await h.cli(["sandbox", "stop", "--all", "--force"]);
      assert.equal(empty.stdout, "no READY or RUNNING sandboxes to stop\n");
    });

    test("validate reports the plan without creating anything", async () => {
      const before = await h.json<{ sandboxes: SandboxBody[] }>(["ls", "--all"]);
      const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).length);
      const result = await h.json<ValidateBody>([
        "sandbox",
        "validate",
        "--profile",
        "yolo-ephemeral",
        "--tag",
        "X",
        "--name",
        "probe",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.body.ok, true);
      assert.deepEqual(result.body.errors, []);
      const maxVmid = Math.max(...before.body.sandboxes.map((s) => s.vmid));
      assert.deepEqual(result.body.plan, {
        profile: "yolo-ephemeral",
        template_vmid: 9000,
        template_name: result.body.plan.template_name,
        node: "pve",
        clone: "linked",
        vmid: maxVmid + 1,
        vmid_source: "next_free",
        name: "probe",
        cores: 4,
        memory_mb: 6144,
        root_size_gb: 40,
        network_mode: "nat",
        bridge: "vmbr1",
        ttl_minutes: 180,
        lease_expires_at: result.body.plan.lease_expires_at,
        keepalive: false,
        tags: ["x"],
      });
      const lease = Date.parse(String(result.body.plan.lease_expires_at)) - Date.now();
      assert.ok(lease > 170 * 60_000 && lease <= 180 * 60_000, String(lease));

      const text = await h.cli(["sandbox", "validate", "+yolo", "+ephemeral", "--ttl", "2h"]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /^template: +9000 .*on node pve, linked clone$/m);
      assert.match(text.stdout, /^resources: +4 cores, 6144 MB memory, 40G root disk$/m);
      assert.match(text.stdout, /^lease: +2h /m);
      assert.match(text.stdout, /^ok: a sandbox new with these flags would go ahead$/m);

      const after = await h.json<{ sandboxes: SandboxBody[] }>(["ls", "--all"]);
      assert.equal(after.body.sandboxes.length, before.body.sandboxes.length, "no row was created");
      assert.equal(
        await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).length),
        vmsBefore,
        "no VM either",
      );
    });

    test("names Proxmox refuses as VM names are refused before anything is created", async () => {
      const vmsBefore = await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort());
      const listBefore = await h.json<SandboxBody[]>(["sandbox", "list"]);
      // Each passes the old rule (dots and dashes anywhere inside) but fails pve_verify_dns_name.
      for (const name of ["a..b", "a.-b", "a-.b", ".ab"]) {
        const checked = await h.json<ValidateBody>([
          "sandbox",
          "validate",
          "--profile",
          "yolo-ephemeral",
          "--name",
          name,
        ]);
        assert.equal(checked.code, 1, name);
        assert.deepEqual(
          checked.body.errors.map((e) => [
            e.field,
            e.message.startsWith(`invalid name "${name}": a DNS name`),
          ]),
          [["name", true]],
          name,
        );
        const made = await h.json<ErrorBody>([
          "sandbox",
          "new",
          "--profile",
          "yolo-ephemeral",
          "--name",
          name,
        ]);
        assert.notEqual(made.code, 0, name);
        assert.match(made.body.message, /a DNS name: labels of letters, digits and dashes/, name);
      }
      for (const name of ["x-", "ab-"]) {
        const ws = await h.json<ErrorBody>(["workspace", "create", "--name", name, "--size", "1G"]);
        assert.notEqual(ws.code, 0, name);
        assert.match(ws.body.message, /start and end with a letter or digit/, name);
      }
      assert.deepEqual(await inspect(h.sim.dir, (ctx) => Object.keys(ctx.state.vms).sort()), vmsBefore);
      assert.deepEqual((await h.json<SandboxBody[]>(["sandbox", "list"])).body, listBefore.body);
    });

    test("validate lists every problem and exits 1 without an error envelope", async () => {
      const unknown = await h.json<ValidateBody>(["sandbox", "validate", "--profile", "yolo-ephemeal"]);
      assert.equal(unknown.code, 1);
      assert.equal(unknown.body.ok, false);
      assert.equal(
        (unknown.body as unknown as Record<string, unknown>).error,
        undefined,
        "no error envelope",
      );
      assert.equal(unknown.body.errors[0]?.code, "unknown_profile");
      assert.match(
        unknown.body.errors[0]?.message ?? "",
        /^unknown profile "yolo-ephemeal" \(did you mean yolo-ephemeral\?\)/,
      );

      const bad = await h.json<ValidateBody>([
        "sandbox",
        "validate",
        "--profile",
        "yolo-ephemeral",
        "--vmid",
        "9000",
        "--ttl",
        "0",
        "--name",
        "not_a_label",
        "--tag",
        "no spaces",
      ]);
      assert.equal(bad.code, 1);
      assert.deepEqual(
        bad.body.errors.map((e) => [e.code, e.field, e.message]),
        [
          [
            "invalid_field_value",
            "name",
            'invalid name "not_a_label": a DNS name: labels of letters, digits and dashes, each starting and ending with a letter or digit, joined by single dots',
          ],
          ["invalid_tag", "tags", 'invalid tag "no spaces": tags use letters, digits and _ + . -'],
          ["invalid_field_value", "ttl_minutes", "ttl_minutes must be positive"],
          ["resource_conflict", "vmid", "vmid already exists in proxmox inventory"],
        ],
      );
      const taken = await h.json<ValidateBody>([
        "sandbox",
        "validate",
        "--profile",
        "yolo-ephemeral",
        "--vmid",
        String(a.vmid),
      ]);
      assert.deepEqual(
        taken.body.errors.map((e) => e.message),
        [`sandbox vmid already exists: ${a.vmid}`],
      );

      const text = await h.cli(["sandbox", "validate", "--profile", "yolo-ephemeral", "--vmid", "9000"]);
      assert.equal(text.code, 1);
      assert.match(text.stdout, /^error: +vmid already exists in proxmox inventory \[resource_conflict\]$/m);
      assert.match(text.stdout, /^not ok: 1 problem would stop sandbox new$/m);
      assert.equal(text.stderr, "");

      // The template: not a template (full clone, a warning), the agent off, and missing (errors).
      await inspect(h.sim.dir, (ctx) => {
        const tpl = ctx.state.vms["9000"]!;
        delete tpl.config.template;
        tpl.config.agent = "enabled=0";
      });
      const notTemplate = await h.json<ValidateBody>(["sandbox", "validate", "--profile", "yolo-ephemeral"]);
      assert.equal(notTemplate.body.plan.clone, "full");
      assert.deepEqual(
        notTemplate.body.warnings.map((w) => w.code),
        ["template_not_template"],
      );
      assert.deepEqual(
        notTemplate.body.errors.map((e) => e.message),
        ["template VM 9000 has qemu-guest-agent explicitly disabled"],
      );
      const saved = await inspect(h.sim.dir, (ctx) => {
        const tpl = ctx.state.vms["9000"]!;
        tpl.config.template = "1";
        tpl.config.agent = "1";
        delete ctx.state.vms["9000"];
        return tpl;
      });
      try {
        const missing = await h.json<ValidateBody>(["sandbox", "validate", "--profile", "yolo-ephemeral"]);
        assert.equal(missing.code, 1);
        assert.deepEqual(
          missing.body.errors.map((e) => [e.code, e.message]),
          [["template_validation_failed", 'template VM 9000 of profile "yolo-ephemeral" does not exist']],
        );
      } finally {
        await inspect(h.sim.dir, (ctx) => {
          ctx.state.vms["9000"] = saved;
        });
      }
    });
  });
}
