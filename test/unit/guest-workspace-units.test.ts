/**
 * The guest side of the workspace contract (src/daemon/guest/workspace-units.ts): the format script run
 * by real sh with the real blkid, mkfs.ext4 and e2fsprogs on disk images in files; the units checked by
 * the real systemd-analyze, the device name by the real systemd-escape. Mounting in a real guest (cold
 * and hot attach) is test/real-guest/cloud-init.test.ts.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { promisify } from "node:util";
import {
  WORKSPACE_FORMAT_SCRIPT,
  WORKSPACE_FORMAT_UNIT,
  WORKSPACE_LABEL,
  WORKSPACE_MOUNT_UNIT,
  WORKSPACE_OWNER_UNIT,
  WORKSPACE_UDEV_RULE,
} from "../../src/daemon/guest/workspace-units.js";
import { WORKSPACE_FS_LABEL } from "../../src/daemon/services/workspaces/create.js";

const run = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-workspace-units-"));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const PATH = `/usr/sbin:/sbin:${process.env.PATH ?? "/usr/bin:/bin"}`;

/** A 16 MiB disk image in a file. */
function disk(name: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, "");
  fs.truncateSync(file, 16 * 1024 * 1024);
  return file;
}

async function format(file: string): Promise<{ stdout: string; stderr: string }> {
  const script = path.join(dir, "format-workspace");
  fs.writeFileSync(script, WORKSPACE_FORMAT_SCRIPT, { mode: 0o755 });
  return run(script, [file], { env: { PATH } });
}

/** blkid's view of the image: TYPE and LABEL, or "" when it finds nothing. */
async function probe(file: string): Promise<string> {
  try {
    const { stdout } = await run("blkid", ["-p", "-o", "export", file], { env: { PATH } });
    const tags = Object.fromEntries(
      stdout
        .trim()
        .split("\n")
        .map((l) => l.split("=", 2) as [string, string]),
    );
    return `${tags.TYPE ?? ""} ${tags.LABEL ?? ""}`.trim();
  } catch {
    return "";
  }
}

describe("format-workspace: only a blank disk is formatted", () => {
  it("a blank disk (no signature, zeros) becomes ext4 labelled AGENTLAB_WORK", async () => {
    const file = disk("blank.raw");
    const { stdout } = await format(file);
    assert.match(stdout, /formatted .* as ext4 labelled AGENTLAB_WORK/);
    assert.equal(await probe(file), "ext4 AGENTLAB_WORK");
  });

  it("a disk with data but no filesystem is left alone, and says why", async () => {
    const file = disk("data.raw");
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, randomBytes(4096), 0, 4096, 512 * 1024);
    fs.closeSync(fd);
    const before = fs.readFileSync(file);
    const { stderr } = await format(file);
    assert.match(stderr, /has no filesystem but is not blank: not formatting it \(agentlab workspace fsck\)/);
    assert.ok(fs.readFileSync(file).equals(before), "the disk was written");
  });

  it("an existing filesystem, whatever its label, is never formatted", async () => {
    const file = disk("other.raw");
    await run("mkfs.ext4", ["-F", "-q", "-L", "SOMETHING", file], { env: { PATH } });
    const before = fs.readFileSync(file);
    await format(file);
    assert.ok(fs.readFileSync(file).equals(before), "the disk was written");
    assert.equal(await probe(file), "ext4 SOMETHING");
  });
});

describe("the units and the udev rule", () => {
  it("use the label the daemon formats workspaces with", () => {
    assert.equal(WORKSPACE_LABEL, WORKSPACE_FS_LABEL);
  });

  it("name the label's device unit as systemd does", async () => {
    const { stdout } = await run("systemd-escape", ["--path", `/dev/disk/by-label/${WORKSPACE_LABEL}`]);
    const device = stdout.trim();
    assert.ok(WORKSPACE_MOUNT_UNIT.includes(`Requires=systemd-fsck@${device}.service\n`));
    assert.ok(WORKSPACE_MOUNT_UNIT.includes(`After=systemd-fsck@${device}.service\n`));
  });

  it("pass systemd-analyze verify (the mount unit's name matches /work; noatime)", async () => {
    const units = path.join(dir, "units");
    fs.mkdirSync(units);
    const files = {
      "work.mount": WORKSPACE_MOUNT_UNIT,
      "agentlab-work-owner.service": WORKSPACE_OWNER_UNIT,
      "agentlab-work-format@sdb.service": WORKSPACE_FORMAT_UNIT,
    };
    for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(units, name), content);
    // The template's executable is created by write_files in the guest; here a stand-in so verify finds it.
    const formatScript = WORKSPACE_FORMAT_UNIT.match(/^ExecStart=(\S+)/m)?.[1];
    assert.equal(formatScript, "/usr/local/lib/agentlab/format-workspace");
    await run("systemd-analyze", ["verify", ...Object.keys(files).map((name) => path.join(units, name))], {
      env: { PATH, SYSTEMD_UNIT_PATH: `${units}:` },
    }).catch((error: { stderr?: string }) => {
      // Only the stand-in's absence may be reported.
      const lines = (error.stderr ?? "")
        .trim()
        .split("\n")
        .filter((l) => !l.includes(formatScript));
      assert.deepEqual(
        lines.filter((l) => l.trim()),
        [],
        error.stderr,
      );
    });
    assert.match(WORKSPACE_MOUNT_UNIT, /^Where=\/work$/m);
    assert.match(WORKSPACE_MOUNT_UNIT, /^Options=noatime$/m);
  });

  it("hang off the disk's appearance (udev), so nothing waits for a disk that is not attached", () => {
    const rules = WORKSPACE_UDEV_RULE.split("\n").filter((l) => l && !l.startsWith("#"));
    assert.deepEqual(rules, [
      'SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="AGENTLAB_WORK", ENV{SYSTEMD_WANTS}+="work.mount agentlab-work-owner.service"',
      // scsi1 is LUN 1 of target 0 (qemu-server: scsi-id=0,lun=N); only a disk with no filesystem and no
      // partition table is handed to the format script, which checks again.
      'SUBSYSTEM=="block", ENV{DEVTYPE}=="disk", ENV{ID_PATH}=="*-scsi-0:0:0:1", ENV{ID_FS_TYPE}!="?*", ENV{ID_PART_TABLE_TYPE}!="?*", ENV{SYSTEMD_WANTS}+="agentlab-work-format@%k.service"',
    ]);
    // No [Install]: nothing enables the units, so no boot ordering can ever wait for the device.
    for (const unit of [WORKSPACE_MOUNT_UNIT, WORKSPACE_OWNER_UNIT, WORKSPACE_FORMAT_UNIT]) {
      assert.doesNotMatch(unit, /\[Install\]|WantedBy|RequiredBy/);
    }
    assert.match(WORKSPACE_OWNER_UNIT, /^ExecStart=\/bin\/chown agent:agent \/work$/m);
  });
});
