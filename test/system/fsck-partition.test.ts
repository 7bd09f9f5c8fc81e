/**
 * A partitioned workspace volume (someone ran fdisk in the guest): runFsck checks partition 1 through
 * a real loop device over its byte range, with the real e2fsck, and detaches the loop device every
 * time. Needs root and loop devices (CI runs as root).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runFsck } from "../../src/daemon/host/fsck.js";
import { ExecaHostTools } from "../../src/daemon/host/host-tools.js";

const SYSTEM_PATH = [process.env["PATH"] ?? "", "/usr/sbin", "/sbin"].filter(Boolean).join(delimiter);
const env = { ...process.env, PATH: SYSTEM_PATH, LC_ALL: "C" };

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root (loop devices)";
  try {
    execFileSync("losetup", ["-f"], { env, stdio: "ignore" });
  } catch {
    return "no free loop device (losetup -f failed)";
  }
  return false;
}

const PART_START = 2048; // sectors
const IMAGE_MIB = 64;
const PART_SECTORS = (IMAGE_MIB * 1024 * 1024) / 512 - PART_START;

describe("runFsck on a partitioned volume", { skip: skipReason() }, () => {
  const tools = new ExecaHostTools({ env });
  let root = "";
  before(() => {
    root = mkdtempSync(join(tmpdir(), "agentlab-fsck-part-"));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  /** An image with an MBR whose partition 1 starts at 1 MiB; ext4 in it unless `format` is false. */
  function partitionedImage(name: string, format: boolean): string {
    const image = join(root, name);
    writeFileSync(image, "");
    execFileSync("truncate", ["-s", `${IMAGE_MIB}M`, image]);
    const mbr = Buffer.alloc(512);
    mbr.writeUInt8(0x83, 446 + 4);
    mbr.writeUInt32LE(PART_START, 446 + 8);
    mbr.writeUInt32LE(PART_SECTORS, 446 + 12);
    mbr.writeUInt16LE(0xaa55, 510);
    const bytes = readFileSync(image);
    mbr.copy(bytes, 0);
    writeFileSync(image, bytes);
    if (format) {
      const offset = `offset=${PART_START * 512}`;
      execFileSync(
        "mkfs.ext4",
        ["-F", "-q", "-L", "AGENTLAB_WORK", "-m", "0", "-E", offset, image, `${PART_SECTORS / 2}k`],
        { env, stdio: "ignore" },
      );
      debugfsInPartition(image, "mkdir work");
    }
    return image;
  }

  function debugfsInPartition(image: string, request: string): void {
    execFileSync("debugfs", ["-w", "-R", request, `${image}?offset=${PART_START * 512}`], {
      env,
      stdio: "ignore",
    });
  }

  function loopsOver(image: string): string {
    return execFileSync("losetup", ["-j", image], { env }).toString().trim();
  }

  test("partition 1 is checked read-only, repaired, and clean again; no loop device is left behind", async () => {
    const image = partitionedImage("parted.img", true);
    debugfsInPartition(image, "set_inode_field /work links_count 7");
    const before = readFileSync(image);

    const check = await runFsck({ device: image, mode: "check", tools });
    assert.equal(check.status, "needs_repair");
    assert.equal(check.exit_code, 4);
    assert.match(check.device, /^\/dev\/loop\d+$/);
    assert.equal(check.command, `e2fsck -f -n ${check.device}`);
    assert.match(check.output, /Inode 12 ref count is 7, should be 2\. {2}Fix\? no/);
    assert.equal(loopsOver(image), "");
    assert.ok(readFileSync(image).equals(before), "a read-only check must not write to the volume");

    const repair = await runFsck({ device: image, mode: "repair", tools });
    assert.equal(repair.status, "repaired");
    assert.equal(repair.exit_code, 1);
    assert.equal(loopsOver(image), "");

    const again = await runFsck({ device: image, mode: "check", tools });
    assert.equal(again.status, "clean");
    assert.equal(loopsOver(image), "");
    // The bytes before the partition (the MBR) are untouched by the repair.
    assert.ok(readFileSync(image).subarray(0, 512).equals(before.subarray(0, 512)));
  });

  test("an empty partition 1 fails with the never-formatted text, and the loop device is detached", async () => {
    const image = partitionedImage("empty-part.img", false);
    const run = await runFsck({ device: image, mode: "check", tools });
    assert.equal(run.status, "failed");
    assert.equal(run.exit_summary, `partition 1 of ${image}: no ext4 filesystem (never formatted?)`);
    assert.equal(run.exit_code, undefined);
    assert.equal(loopsOver(image), "");
  });
});
