import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createSim, findGuestImage, runTool, type Sim } from "../pvesim/harness.js";
import { monitorCommand } from "../pvesim/monitor.js";

/**
 * The simulator with real guests (guests=qemu): `qm start` boots the guest image under QEMU, the
 * guest's own qemu-guest-agent answers the agent endpoints, shutdown/stop end the process, snapshots
 * are qcow2 internal snapshots, destroy leaves nothing behind, and net0 is a tap on its bridge (or the
 * start fails with Proxmox's error when the bridge is missing). One boot (~1-2 min under TCG) serves
 * the guest checks; the tap checks need no booted guest.
 */

const image = findGuestImage();
const why =
  process.getuid?.() !== 0
    ? "needs root (taps, network namespaces)"
    : spawnSync("qemu-system-x86_64", ["--version"]).status !== 0
      ? "qemu-system-x86_64 not installed"
      : !image
        ? "no guest image (run scripts/dev/guest-image or set PVESIM_GUEST_IMAGE)"
        : false;

const FAST = { clone_ms: 20, task_ms: 20, fail_ms: 10, guest_accel: "auto" };

function qemuProcess(pidfile: string): boolean {
  try {
    const pid = readFileSync(pidfile, "utf8").trim();
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(pidfile);
  } catch {
    return false;
  }
}

async function ok(sim: Sim, tool: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await runTool(sim, tool, args, env);
  assert.equal(r.code, 0, `${tool} ${args.join(" ")}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs a shell command in the guest through its agent (guest-exec), returns its output. */
async function guestSh(qga: string, script: string): Promise<{ exitcode: number; out: string }> {
  const started = await monitorCommand(qga, "qga", "VM 101", {
    execute: "guest-exec",
    arguments: { path: "/bin/sh", arg: ["-c", script], "capture-output": true },
  });
  const pid = (started.return as { pid: number }).pid;
  for (;;) {
    const s = (
      await monitorCommand(qga, "qga", "VM 101", { execute: "guest-exec-status", arguments: { pid } })
    ).return as { exited: boolean; exitcode: number; "out-data"?: string };
    if (s.exited) return { exitcode: s.exitcode, out: Buffer.from(s["out-data"] ?? "", "base64").toString() };
    await sleep(200);
  }
}

describe("pvesim guests=qemu: net0 as a tap on its bridge", { skip: why }, () => {
  let sim: Sim;
  const ns = `pvesimq${process.pid}`;
  before(async () => {
    sim = createSim({ knobs: { ...FAST, guests: "qemu", guest_image: image! } });
    execFileSync("ip", ["netns", "add", ns]);
    execFileSync("ip", ["-n", ns, "link", "add", "vmbr1", "type", "bridge"]);
    execFileSync("ip", ["-n", ns, "link", "set", "vmbr1", "up"]);
    await ok(sim, "qm", ["clone", "9000", "101"]);
  });
  after(async () => {
    await runTool(sim, "qm", ["stop", "101"]);
    spawnSync("ip", ["netns", "del", ns]);
    sim.cleanup();
  });

  it("a bridge that does not exist where QEMU runs fails the start as pve-bridge does", async () => {
    await ok(sim, "qm", ["set", "101", "--net0", "virtio,bridge=pvesimnobr0"]);
    const r = await runTool(sim, "ip", ["netns", "exec", ns, "qm", "start", "101"]);
    assert.equal(r.code, 255);
    assert.match(r.stdout + r.stderr, /bridge 'pvesimnobr0' does not exist/);
    assert.match(r.stderr, /start failed: QEMU exited with code 1/);
    assert.match(await ok(sim, "qm", ["status", "101"]), /status: stopped/);
    await ok(sim, "qm", ["set", "101", "--net0", "virtio,bridge=vmbr1"]);
  });

  it("the tap tap101i0 is in the bridge while QEMU runs, with net0's MAC on the guest side, and gone after stop", async () => {
    await ok(sim, "ip", ["netns", "exec", ns, "qm", "start", "101"]);
    const ports = JSON.parse(
      execFileSync("ip", ["-n", ns, "-j", "link", "show", "master", "vmbr1"], { encoding: "utf8" }),
    ) as Array<{ ifname: string }>;
    assert.deepEqual(
      ports.map((p) => p.ifname),
      ["tap101i0"],
    );
    const cmdline = readFileSync(join(sim.dir, "guests", "101.qemu-cmdline"), "utf8");
    const mac = /net0: virtio=([0-9A-F:]+)/.exec(await ok(sim, "qm", ["config", "101"]))![1]!;
    assert.match(cmdline, new RegExp(`virtio-net-pci,mac=${mac},netdev=net0`));
    await ok(sim, "qm", ["stop", "101"]);
    const after = execFileSync("ip", ["-n", ns, "-j", "link", "show"], { encoding: "utf8" });
    assert.doesNotMatch(after, /tap101i0/);
  });

  it("suspend and resume pause and continue the real QEMU (QMP stop/cont); reset keeps the process", async () => {
    await ok(sim, "ip", ["netns", "exec", ns, "qm", "start", "101"]);
    const qmp = join(sim.dir, "host/var/run/qemu-server/101.qmp");
    const qemuStatus = async (): Promise<unknown> =>
      ((await monitorCommand(qmp, "qmp", "VM 101", { execute: "query-status" })).return as { status: string })
        .status;
    await ok(sim, "qm", ["suspend", "101"]);
    assert.equal(await qemuStatus(), "paused");
    assert.match(await ok(sim, "qm", ["status", "101", "--verbose"]), /qmpstatus: paused/);
    await ok(sim, "qm", ["resume", "101"]);
    assert.equal(await qemuStatus(), "running");
    const pid = readFileSync(join(sim.dir, "host/var/run/qemu-server/101.pid"), "utf8");
    await ok(sim, "qm", ["reset", "101"]);
    assert.equal(readFileSync(join(sim.dir, "host/var/run/qemu-server/101.pid"), "utf8"), pid);
    const suspendToDisk = await runTool(sim, "qm", ["suspend", "101", "--todisk", "1"]);
    assert.match(suspendToDisk.stderr, /suspend to disk is not modelled for real guests/);
    await ok(sim, "qm", ["stop", "101"]);
  });

  it("a QEMU that dies is a stopped VM on the next read, as pvestatd sees it", async () => {
    await ok(sim, "ip", ["netns", "exec", ns, "qm", "start", "101"]);
    const pidfile = join(sim.dir, "host/var/run/qemu-server/101.pid");
    assert.match(await ok(sim, "qm", ["status", "101"]), /status: running/);
    process.kill(Number(readFileSync(pidfile, "utf8")), "SIGKILL");
    for (let i = 0; i < 50 && qemuProcess(pidfile); i++) await sleep(100);
    assert.match(await ok(sim, "qm", ["status", "101"]), /status: stopped/);
    // and it can be started again (no stale pid file or socket in the way)
    await ok(sim, "ip", ["netns", "exec", ns, "qm", "start", "101"]);
    await ok(sim, "qm", ["stop", "101"]);
  });
});

describe("pvesim guests=qemu: one real guest", { skip: why, timeout: 900_000 }, () => {
  let sim: Sim;
  let qga: string;
  let pidfile: string;
  before(async () => {
    sim = createSim({ knobs: { ...FAST, guests: "qemu", guest_image: image!, guest_net: "user" } });
    qga = join(sim.dir, "host/var/run/qemu-server/101.qga");
    pidfile = join(sim.dir, "host/var/run/qemu-server/101.pid");
    writeFileSync(
      join(sim.dir, "storage/local/snippets/u.yaml"),
      "#cloud-config\nwrite_files:\n  - path: /etc/pvesim-marker\n    content: from the seed\n",
    );
    await ok(sim, "qm", ["clone", "9000", "101", "--name", "real"]);
    await ok(sim, "qm", ["set", "101", "--cicustom", "user=local:snippets/u.yaml"]);
  });
  after(async () => {
    await runTool(sim, "qm", ["stop", "101"]);
    sim.cleanup();
  });

  it("the root disk is a qcow2 overlay of the template's image, not a copy", () => {
    const info = JSON.parse(
      execFileSync("qemu-img", ["info", "--output=json", join(sim.dir, "storage/local-zfs/vm-101-disk-0")], {
        encoding: "utf8",
      }),
    ) as { format: string; "backing-filename": string; "actual-size": number };
    assert.equal(info.format, "qcow2");
    assert.equal(info["backing-filename"], join(sim.dir, "storage/local-zfs/base-9000-disk-0"));
    assert.ok(info["actual-size"] < 16 * 1024 * 1024, `overlay is small: ${info["actual-size"]}`);
  });

  it("qm start boots it; the real agent answers network-get-interfaces through pvesh with net0's MAC", async () => {
    const started = Date.now();
    const out = await ok(sim, "qm", ["start", "101"]);
    assert.match(out, /generating cloud-init ISO/);
    assert.ok(qemuProcess(pidfile), "QEMU runs with its pid file");
    const early = await runTool(sim, "pvesh", ["get", "/nodes/pve/qemu/101/agent/network-get-interfaces"]);
    assert.equal(early.code, 255);
    assert.match(early.stderr, /QEMU guest agent is not running/);
    const mac = /net0: virtio=([0-9A-F:]+)/.exec(await ok(sim, "qm", ["config", "101"]))![1]!.toLowerCase();
    let answer:
      | {
          result: Array<{
            name: string;
            "hardware-address": string;
            "ip-addresses"?: Array<{ "ip-address": string }>;
          }>;
        }
      | undefined;
    while (!answer && Date.now() - started < 600_000) {
      const r = await runTool(sim, "pvesh", [
        "get",
        "/nodes/pve/qemu/101/agent/network-get-interfaces",
        "--output-format",
        "json",
      ]);
      if (r.code === 0) answer = JSON.parse(r.stdout);
      else await sleep(2_000);
    }
    assert.ok(answer, "the guest agent answered within 10 min");
    process.stdout.write(
      `# guest agent answered ${Math.round((Date.now() - started) / 1000)} s after qm start\n`,
    );
    const eth0 = answer.result.find((i) => i["hardware-address"] === mac);
    assert.ok(eth0, JSON.stringify(answer.result));
    assert.equal(eth0.name, "eth0", "named by the seed's network-config");
  });

  it("cloud-init read the seed: the snippet's write_files is in the guest", async () => {
    let got = "";
    for (let i = 0; i < 150 && got === ""; i++) {
      got = (await guestSh(qga, "cat /etc/pvesim-marker 2>/dev/null")).out;
      if (got === "") await sleep(2_000);
    }
    assert.equal(got.trim(), "from the seed");
  });

  it("a workspace disk hot-plugged as scsi1 appears in the guest, and goes when it is removed", async () => {
    const disks = async (): Promise<string[]> =>
      (await guestSh(qga, "ls /sys/block")).out.split(/\s+/).filter((d) => d.startsWith("sd"));
    assert.deepEqual(await disks(), ["sda"]);
    await ok(sim, "qm", ["set", "101", "--scsi1", "local-zfs:1"]);
    let seen: string[] = [];
    for (let i = 0; i < 50 && seen.length < 2; i++) {
      seen = await disks();
      if (seen.length < 2) await sleep(200);
    }
    assert.deepEqual(seen, ["sda", "sdb"]);
    await ok(sim, "qm", ["set", "101", "--delete", "scsi1"]);
    for (let i = 0; i < 50 && seen.length > 1; i++) {
      seen = await disks();
      if (seen.length > 1) await sleep(200);
    }
    assert.deepEqual(seen, ["sda"]);
  });

  it("a snapshot of the running VM (QMP internal snapshot) and a rollback bring back a deleted file", async () => {
    assert.equal((await guestSh(qga, "echo kept > /root/f && sync")).exitcode, 0);
    await ok(sim, "qm", ["snapshot", "101", "s1"]);
    const snaps = execFileSync(
      "qemu-img",
      ["snapshot", "-l", "-U", join(sim.dir, "storage/local-zfs/vm-101-disk-0")],
      { encoding: "utf8" },
    );
    assert.match(snaps, /\bs1\b/);
    assert.equal((await guestSh(qga, "rm /root/f && sync && ls /root/f || echo gone")).out.trim(), "gone");

    // qm shutdown: the guest powers itself off (agent guest-shutdown) and QEMU exits.
    await ok(sim, "qm", ["shutdown", "101"]);
    assert.ok(!qemuProcess(pidfile), "QEMU exited");
    assert.match(await ok(sim, "qm", ["status", "101"]), /status: stopped/);

    await ok(sim, "qm", ["rollback", "101", "s1"]);
    const flat = join(sim.dir, "flat.raw");
    execFileSync("qemu-img", [
      "convert",
      "-f",
      "qcow2",
      "-O",
      "raw",
      join(sim.dir, "storage/local-zfs/vm-101-disk-0"),
      flat,
    ]);
    try {
      assert.equal(
        execFileSync("debugfs", ["-R", "cat /root/f", flat], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        }),
        "kept\n",
      );
    } finally {
      rmSync(flat, { force: true });
    }
  });

  it("destroy leaves no QEMU, no overlay, no run files", async () => {
    await ok(sim, "qm", ["destroy", "101"]);
    assert.ok(!existsSync(join(sim.dir, "storage/local-zfs/vm-101-disk-0")), "overlay removed");
    assert.ok(!existsSync(join(sim.dir, "storage/local-zfs/vm-101-cloudinit")), "seed removed");
    for (const f of ["101.pid", "101.qmp", "101.qga"])
      assert.ok(!existsSync(join(sim.dir, "host/var/run/qemu-server", f)), f);
    assert.ok(existsSync(join(sim.dir, "storage/local-zfs/base-9000-disk-0")), "the template's image stays");
  });
});
