/**
 * Volume files whose bytes are a real disk (guests=qemu): a linked clone is a qcow2 overlay backed by
 * its base's file (`qemu-img create -f qcow2 -F <fmt> -b <base>`), so no clone copies the guest image,
 * and snapshots of such a file are qcow2 internal snapshots (`qemu-img snapshot -c/-a/-d`), as
 * pve-storage's Plugin.pm does for qcow2 (`volume_snapshot`, `volume_snapshot_rollback`,
 * `volume_snapshot_delete`) and qemu-server for a running VM (QMP, snapshots.ts).
 *
 * Whether a file is qcow2 is read from its header, so raw files (every volume in process mode, fresh
 * workspace disks, the template's base) keep the simulator's sparse-copy semantics unchanged.
 */
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import { fail } from "./errors.js";

/** A qcow2 file starts with `QFI\xfb`; anything else (or a missing file) is raw. */
export function fileFormat(file: string): "qcow2" | "raw" {
  const buf = Buffer.alloc(4);
  try {
    const fd = openSync(file, "r");
    try {
      readSync(fd, buf, 0, buf.length, 0);
    } finally {
      closeSync(fd);
    }
  } catch {
    return "raw";
  }
  return buf.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? "qcow2" : "raw";
}

export const isQcow2 = (file: string): boolean => fileFormat(file) === "qcow2";

/** Runs qemu-img; its last stderr line becomes the error, as PVE's run_command reports it. */
function qemuImg(args: string[]): string {
  const run = spawnSync("qemu-img", args, { encoding: "utf8" });
  if (run.error) throw fail(`qemu-img: ${run.error.message}`);
  if (run.status !== 0) {
    const last = (run.stderr || run.stdout).trim().split("\n").pop() ?? "";
    throw fail(`qemu-img ${args[0]} failed: ${last}`);
  }
  return run.stdout;
}

/** A copy-on-write overlay of `base` with the given virtual size (never smaller than the base's). */
export function createOverlay(base: string, file: string, size: number): void {
  mkdirSync(dirname(file), { recursive: true });
  const baseSize = virtualSize(base);
  qemuImg([
    "create",
    "-q",
    "-f",
    "qcow2",
    "-F",
    fileFormat(base),
    "-b",
    base,
    file,
    String(Math.max(size, baseSize)),
  ]);
}

export function virtualSize(file: string): number {
  const info = JSON.parse(qemuImg(["info", "--output=json", "-U", file])) as { "virtual-size": number };
  return info["virtual-size"];
}

/** A full, independent copy of a qcow2 file (backing chain flattened), as a full clone needs. */
export function copyQcow2(from: string, to: string, snapshot?: string): void {
  mkdirSync(dirname(to), { recursive: true });
  rmSync(to, { force: true });
  qemuImg([
    "convert",
    // -U: the source may be in use by a running QEMU (a full clone of a running VM).
    "-U",
    "-f",
    "qcow2",
    "-O",
    "qcow2",
    ...(snapshot ? ["-l", `snapshot.name=${snapshot}`] : []),
    from,
    to,
  ]);
}

export function resizeQcow2(file: string, size: number): void {
  if (virtualSize(file) >= size) return;
  qemuImg(["resize", "-q", "-f", "qcow2", file, String(size)]);
}

export function internalSnapshot(file: string, action: "-c" | "-a" | "-d", name: string): void {
  qemuImg(["snapshot", action, name, file]);
}

/** The internal snapshot names of a qcow2 file. */
export function listInternalSnapshots(file: string): string[] {
  if (!existsSync(file)) return [];
  const info = JSON.parse(qemuImg(["info", "--output=json", "-U", file])) as {
    snapshots?: Array<{ name: string }>;
  };
  return (info.snapshots ?? []).map((s) => s.name);
}
