/**
 * Workspace fsck on the host: the exit-code table of design §8.3, then runFsck with the real e2fsck on
 * real ext4 images (clean, corrupted with debugfs, repaired, never formatted, another filesystem), and
 * prepareDevice's activation and undo with fake lvs/lvchange placed first in PATH.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { prepareDevice } from "../../src/daemon/host/device.js";
import {
  exitSummary,
  fsckRemediation,
  fsckStatus,
  fsckStatusWord,
  fsckUnsupportedError,
  runFsck,
} from "../../src/daemon/host/fsck.js";
import { ExecaHostTools, type HostTools } from "../../src/daemon/host/host-tools.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

const SYSTEM_PATH = [process.env["PATH"] ?? "", "/usr/sbin", "/sbin"].filter(Boolean).join(delimiter);
const systemEnv = { ...process.env, PATH: SYSTEM_PATH, LC_ALL: "C" };
const tools = new ExecaHostTools({ env: systemEnv });

let root = "";
before(() => {
  root = mkdtempSync(join(tmpdir(), "agentlab-fsck-"));
});
after(() => rmSync(root, { recursive: true, force: true }));

function sparseFile(name: string, mib: number): string {
  const path = join(root, name);
  writeFileSync(path, "");
  execFileSync("truncate", ["-s", `${mib}M`, path]);
  return path;
}

function debugfs(image: string, request: string): void {
  execFileSync("debugfs", ["-w", "-R", request, image], { env: systemEnv, stdio: "ignore" });
}

/** A formatted workspace image with a /work directory, as a guest would leave it. */
async function workspaceImage(name: string): Promise<string> {
  const image = sparseFile(name, 64);
  await tools.mkfsExt4(image, "AGENTLAB_WORK");
  debugfs(image, "mkdir work");
  return image;
}

describe("exit code -> status (design §8.3)", () => {
  test("any of 8, 16, 32, 128 is failed in either mode, whatever else is set", () => {
    for (const mode of ["check", "repair"] as const) {
      for (const bit of [8, 16, 32, 128]) {
        for (const extra of [0, 1, 2, 4])
          assert.equal(fsckStatus(mode, bit | extra), "failed", `${mode} ${bit | extra}`);
      }
    }
  });

  test("read-only: 0 is clean; 1, 2 or 4 set is needs_repair", () => {
    assert.equal(fsckStatus("check", 0), "clean");
    for (const code of [1, 2, 3, 4, 5, 6, 7])
      assert.equal(fsckStatus("check", code), "needs_repair", String(code));
  });

  test("repair: 0 is clean; 4 set is needs_repair; 1 or 2 without 4 is repaired", () => {
    assert.equal(fsckStatus("repair", 0), "clean");
    for (const code of [4, 5, 6, 7]) assert.equal(fsckStatus("repair", code), "needs_repair", String(code));
    for (const code of [1, 2, 3]) assert.equal(fsckStatus("repair", code), "repaired", String(code));
  });

  test("no exit status (killed by a signal) and bits e2fsck never sets are failed", () => {
    assert.equal(fsckStatus("check", undefined), "failed");
    assert.equal(fsckStatus("repair", 64), "failed");
    assert.equal(fsckStatus("check", 256), "failed");
  });

  test("exit_summary names every set bit", () => {
    assert.equal(exitSummary(0), "no errors");
    assert.equal(exitSummary(1), "errors corrected (1)");
    assert.equal(exitSummary(2), "errors corrected, reboot needed (2)");
    assert.equal(exitSummary(4), "errors left uncorrected (4)");
    assert.equal(exitSummary(8), "operational error (8)");
    assert.equal(exitSummary(16), "usage error (16)");
    assert.equal(exitSummary(32), "cancelled (32)");
    assert.equal(exitSummary(128), "shared-library error (128)");
    assert.equal(exitSummary(12), "errors left uncorrected (4); operational error (8)");
    assert.equal(exitSummary(3), "errors corrected (1); errors corrected, reboot needed (2)");
    assert.equal(exitSummary(64), "unknown bit (64)");
    assert.equal(exitSummary(undefined, "SIGKILL"), "e2fsck was killed by SIGKILL");
  });

  test("CLI words, with the troubleshooting guide's NEEDS REPAIR", () => {
    assert.equal(fsckStatusWord("clean"), "clean");
    assert.equal(fsckStatusWord("repaired"), "repaired");
    assert.equal(fsckStatusWord("needs_repair"), "NEEDS REPAIR");
    assert.equal(fsckStatusWord("failed"), "failed");
  });

  test("remediation: rerun with --repair after a read-only check; snapshot or by hand after a repair", () => {
    const target = { workspace: "proj", node: "pve1" };
    assert.equal(fsckRemediation("needs_repair", "check", target), "agentlab workspace fsck proj --repair");
    assert.equal(
      fsckRemediation("needs_repair", "repair", target),
      "repair left errors: restore a snapshot (agentlab workspace snapshot list proj) or run e2fsck interactively on pve1",
    );
    for (const status of ["clean", "repaired", "failed"] as const) {
      assert.equal(fsckRemediation(status, "check", target), undefined);
      assert.equal(fsckRemediation(status, "repair", target), undefined);
    }
  });

  test("the unsupported-path error has the troubleshooting guide's words and §8.1's hint", () => {
    const error = fsckUnsupportedError({ path: "/dev/zvol/rpool/data/vm-120-disk-0", node: "pve1" });
    assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
    assert.equal(
      error.message,
      "workspace fsck unsupported for volume path /dev/zvol/rpool/data/vm-120-disk-0: agentlabd is not running on node pve1",
    );
    assert.equal(
      error.hint,
      "run agentlabd on pve1, use a maintenance sandbox, or run e2fsck -f -n /dev/zvol/rpool/data/vm-120-disk-0 on pve1",
    );
  });
});

describe("runFsck on real ext4 images", () => {
  test("a clean image is clean, exit 0", async () => {
    const image = await workspaceImage("clean.img");
    const run = await runFsck({ device: image, mode: "check", tools });
    assert.equal(run.status, "clean");
    assert.equal(run.exit_code, 0);
    assert.equal(run.exit_summary, "no errors");
    assert.equal(run.mode, "read-only");
    assert.equal(run.command, `e2fsck -f -n ${image}`);
    assert.equal(run.device, image);
    assert.match(run.output, /Pass 4: Checking reference counts/);
    assert.ok(Date.parse(run.started_at) <= Date.parse(run.completed_at));
  });

  test("a wrong link count: read-only says NEEDS REPAIR and changes nothing; repair fixes it; then clean", async () => {
    const image = await workspaceImage("broken.img");
    debugfs(image, "set_inode_field /work links_count 7");
    const before = readFileSync(image);

    const check = await runFsck({ device: image, mode: "check", tools });
    assert.equal(check.status, "needs_repair");
    assert.equal(check.exit_code, 4);
    assert.equal(check.exit_summary, "errors left uncorrected (4)");
    assert.match(check.output, /Inode 12 ref count is 7, should be 2\. {2}Fix\? no/);
    assert.match(check.output, /WARNING: Filesystem still has errors/);
    assert.equal(fsckStatusWord(check.status), "NEEDS REPAIR");
    assert.equal(
      fsckRemediation(check.status, "check", { workspace: "proj", node: "pve1" }),
      "agentlab workspace fsck proj --repair",
    );
    assert.ok(readFileSync(image).equals(before), "a read-only check must not write to the volume");

    const repair = await runFsck({ device: image, mode: "repair", tools });
    assert.equal(repair.status, "repaired");
    assert.equal(repair.exit_code, 1);
    assert.equal(repair.mode, "repair");
    assert.equal(repair.command, `e2fsck -f -y ${image}`);
    assert.match(repair.output, /Inode 12 ref count is 7, should be 2\. {2}Fix\? yes/);
    assert.equal(fsckRemediation(repair.status, "repair", { workspace: "proj", node: "pve1" }), undefined);

    const again = await runFsck({ device: image, mode: "check", tools });
    assert.equal(again.status, "clean");
    assert.equal(again.exit_code, 0);
  });

  test("a never-formatted (all-zero) volume fails with 'no ext4 filesystem (never formatted?)'", async () => {
    const image = sparseFile("zero.img", 16);
    const run = await runFsck({ device: image, mode: "repair", tools });
    assert.equal(run.status, "failed");
    assert.equal(run.exit_summary, "no ext4 filesystem (never formatted?)");
    assert.equal(run.exit_code, undefined);
    assert.equal(run.command, `blkid -p -o export ${image}`);
    assert.equal(run.output, "no ext4 filesystem (never formatted?)\n");
    // e2fsck itself would have said "operational error" (8) on it: the blkid check comes first.
    assert.equal((await tools.e2fsck(image, "check")).exitCode, 8);
  });

  test("another filesystem type is not checked", async () => {
    const image = sparseFile("swap.img", 16);
    execFileSync("mkswap", [image], { env: systemEnv, stdio: "ignore" });
    const run = await runFsck({ device: image, mode: "repair", tools });
    assert.equal(run.status, "failed");
    assert.equal(run.exit_summary, "filesystem type swap is not checked by workspace fsck");
    assert.equal(run.exit_code, undefined);
  });

  test("a partition table without partition 1 fails clearly, without running e2fsck", async () => {
    const image = sparseFile("no-part1.img", 16);
    const mbr = Buffer.alloc(512);
    mbr.writeUInt8(0x83, 462 + 4); // only entry 2
    mbr.writeUInt32LE(2048, 462 + 8);
    mbr.writeUInt32LE(8192, 462 + 12);
    mbr.writeUInt16LE(0xaa55, 510);
    const bytes = readFileSync(image);
    mbr.copy(bytes, 0);
    writeFileSync(image, bytes);
    const run = await runFsck({ device: image, mode: "check", tools });
    assert.equal(run.status, "failed");
    assert.equal(
      run.exit_summary,
      "partition table (dos) has no partition 1; workspace fsck checks a whole-disk ext4 or partition 1",
    );
    assert.match(run.command, /^partx /);
  });

  test("a check cancelled before e2fsck starts rejects with CANCELLED", async () => {
    const image = await workspaceImage("cancel.img");
    const controller = new AbortController();
    controller.abort(new Error("Ctrl-C"));
    await assert.rejects(
      runFsck({ device: image, mode: "check", tools, signal: controller.signal }),
      (error: AgentlabError) => {
        assert.equal(error.code, "CANCELLED");
        return true;
      },
    );
  });

  test("a repair is not given the cancel signal: it runs to its end", async () => {
    const seen: (AbortSignal | undefined)[] = [];
    const recorder: HostTools = Object.assign(Object.create(tools) as HostTools, {
      e2fsck: async (device: string, mode: "check" | "repair", signal?: AbortSignal) => {
        seen.push(signal);
        return tools.e2fsck(device, mode);
      },
    });
    const image = await workspaceImage("repair-signal.img");
    const controller = new AbortController();
    await runFsck({ device: image, mode: "repair", tools: recorder, signal: controller.signal });
    await runFsck({ device: image, mode: "check", tools: recorder, signal: controller.signal });
    assert.deepEqual(seen, [undefined, controller.signal]);
  });

  test("without e2fsck on the host: HOST_TOOLS_UNAVAILABLE in the troubleshooting guide's words", async () => {
    const image = await workspaceImage("no-tools.img");
    const onlyBlkid = mkdtempSync(join(root, "only-blkid-"));
    const blkid = execFileSync("sh", ["-c", "command -v blkid"], { env: systemEnv }).toString().trim();
    writeFileSync(join(onlyBlkid, "blkid"), `#!/bin/sh\nexec ${blkid} "$@"\n`);
    chmodSync(join(onlyBlkid, "blkid"), 0o755);
    const partial = new ExecaHostTools({ env: { ...process.env, PATH: onlyBlkid } });
    await assert.rejects(
      runFsck({ device: image, mode: "check", tools: partial }),
      (error: AgentlabError) => {
        assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
        assert.equal(
          error.message,
          `workspace fsck unsupported for volume path ${image}: e2fsck not found in PATH on this host`,
        );
        assert.match(error.hint, /apt install e2fsprogs/);
        return true;
      },
    );
  });

  test("the clock decides the timestamps", async () => {
    const image = await workspaceImage("clock.img");
    const times = [new Date("2026-01-02T03:04:05.000Z"), new Date("2026-01-02T03:04:09.000Z")];
    const run = await runFsck({ device: image, mode: "check", tools, clock: { now: () => times.shift()! } });
    assert.equal(run.started_at, "2026-01-02T03:04:05.000Z");
    assert.equal(run.completed_at, "2026-01-02T03:04:09.000Z");
  });
});

describe("prepareDevice", () => {
  /** Fake lvs/lvchange keeping the LV's active flag in a file; every call is logged. */
  function fakeLvm(active: boolean): { tools: ExecaHostTools; calls(): string[] } {
    const dir = mkdtempSync(join(root, "lvm-"));
    const log = join(dir, "calls.log");
    const script = (name: string, body: string) => {
      writeFileSync(join(dir, name), `#!/bin/sh\necho "${name} $*" >> "${log}"\n${body}\n`);
      chmodSync(join(dir, name), 0o755);
    };
    script("lvs", `if [ -f "${dir}/active" ]; then echo "  active"; else echo "  "; fi`);
    script("lvchange", `case "$1" in -ay) touch "${dir}/active";; -an) rm -f "${dir}/active";; esac`);
    if (active) writeFileSync(join(dir, "active"), "");
    return {
      tools: new ExecaHostTools({ env: { ...systemEnv, PATH: `${dir}${delimiter}${SYSTEM_PATH}` } }),
      calls: () => {
        try {
          return readFileSync(log, "utf8").trim().split("\n").filter(Boolean);
        } catch {
          return [];
        }
      },
    };
  }

  test("lvmthin: an inactive LV is activated with -ay -K, and undo deactivates it", async () => {
    const lvm = fakeLvm(false);
    const path = await workspaceImage("lv-inactive.img");
    const prepared = await prepareDevice({
      storageType: "lvmthin",
      path,
      vg: "pve",
      lv: "vm-130-disk-0",
      tools: lvm.tools,
    });
    assert.equal(prepared.device, path);
    assert.deepEqual(prepared.activations, [{ kind: "lv", vg: "pve", lv: "vm-130-disk-0" }]);
    assert.deepEqual(lvm.calls(), [
      "lvs --noheadings -o lv_active pve/vm-130-disk-0",
      "lvchange -ay -K pve/vm-130-disk-0",
    ]);
    // The device is usable in between: the real check runs on it.
    assert.equal(
      (await runFsck({ device: prepared.device, mode: "check", tools: lvm.tools })).status,
      "clean",
    );
    await prepared.undo();
    await prepared.undo();
    assert.deepEqual(lvm.calls().slice(2), ["lvchange -an pve/vm-130-disk-0"]);
    assert.equal(await lvm.tools.lvActive("pve", "vm-130-disk-0"), false);
  });

  test("lvmthin: an LV that was already active is left active", async () => {
    const lvm = fakeLvm(true);
    const path = await workspaceImage("lv-active.img");
    const prepared = await prepareDevice({
      storageType: "lvmthin",
      path,
      vg: "pve",
      lv: "vm-131-disk-0",
      tools: lvm.tools,
    });
    assert.deepEqual(prepared.activations, []);
    await prepared.undo();
    assert.deepEqual(lvm.calls(), ["lvs --noheadings -o lv_active pve/vm-131-disk-0"]);
    assert.equal(await lvm.tools.lvActive("pve", "vm-131-disk-0"), true);
  });

  test("lvmthin: vg and lv come from /dev/<vg>/<lv> when not given", async () => {
    const lvm = fakeLvm(true);
    await assert.rejects(
      prepareDevice({ storageType: "lvmthin", path: "/srv/images/vm-1-disk-0", tools: lvm.tools }),
      /does not name its volume group and LV/,
    );
    await assert.rejects(
      prepareDevice({
        storageType: "lvmthin",
        path: "/dev/pve/vm-132-disk-0",
        tools: lvm.tools,
        linkWaitMs: 50,
      }),
      /\/dev\/pve\/vm-132-disk-0 did not appear within 50 ms/,
    );
    assert.deepEqual(lvm.calls(), ["lvs --noheadings -o lv_active pve/vm-132-disk-0"]);
  });

  test("lvmthin: when the device never appears after activating, the activation is undone", async () => {
    const lvm = fakeLvm(false);
    await assert.rejects(
      prepareDevice({
        storageType: "lvmthin",
        path: join(root, "never-there"),
        vg: "pve",
        lv: "vm-133-disk-0",
        tools: lvm.tools,
        linkWaitMs: 50,
      }),
      (error: AgentlabError) => error.code === "NOT_FOUND",
    );
    assert.deepEqual(lvm.calls(), [
      "lvs --noheadings -o lv_active pve/vm-133-disk-0",
      "lvchange -ay -K pve/vm-133-disk-0",
      "lvchange -an pve/vm-133-disk-0",
    ]);
  });

  test("zfspool: waits for the zvol link to appear, and gives up with a clear error", async () => {
    const link = join(root, "zvol-link");
    setTimeout(() => writeFileSync(link, ""), 300);
    const prepared = await prepareDevice({ storageType: "zfspool", path: link, tools, linkWaitMs: 5_000 });
    assert.equal(prepared.device, link);
    assert.deepEqual(prepared.activations, []);
    await assert.rejects(
      prepareDevice({ storageType: "zfspool", path: join(root, "no-zvol"), tools, linkWaitMs: 100 }),
      (error: AgentlabError) => {
        assert.equal(error.code, "NOT_FOUND");
        assert.match(error.message, /zvol link .*no-zvol did not appear within 100 ms/);
        assert.match(error.hint, /zpool list/);
        return true;
      },
    );
  });

  test("dir qcow2 needs qemu-nbd: the troubleshooting guide's unsupported-path error with the manual steps", async () => {
    const path = "/var/lib/vz/images/140/vm-140-disk-0.qcow2";
    await assert.rejects(
      prepareDevice({ storageType: "dir", path, tools, node: "pve1" }),
      (error: AgentlabError) => {
        assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
        assert.ok(
          error.message.startsWith(`workspace fsck unsupported for volume path ${path}: `),
          error.message,
        );
        assert.match(error.hint, /^use a maintenance sandbox, or on pve1: /);
        assert.match(error.hint, /qemu-nbd --connect=\/dev\/nbd0 --read-only --format=qcow2 \/var\/lib\/vz/);
        assert.match(error.hint, /e2fsck -f -n \/dev\/nbd0/);
        return true;
      },
    );
  });

  test("other storage types (rbd) get the same unsupported-path wording", async () => {
    await assert.rejects(
      prepareDevice({ storageType: "rbd", path: "rbd:ceph/vm-150-disk-0", tools, node: "pve1" }),
      (error: AgentlabError) => {
        assert.equal(error.code, "HOST_TOOLS_UNAVAILABLE");
        assert.equal(
          error.message,
          "workspace fsck unsupported for volume path rbd:ceph/vm-150-disk-0: storage type rbd is not supported for workspaces",
        );
        return true;
      },
    );
  });
});
