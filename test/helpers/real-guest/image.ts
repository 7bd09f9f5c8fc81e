/**
 * The guest image (scripts/dev/guest-image) as the real-guest tests use it: built on first use, then
 * taken from its cache in well under a second.
 */
import { execFile } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "../paths.js";

const run = promisify(execFile);

export const GUEST_IMAGE_SCRIPT = join(REPO_ROOT, "scripts/dev/guest-image");

export interface GuestImageManifest {
  key: string;
  built_at: string;
  build_seconds: number;
  size_bytes: number;
  apparent_size_bytes: number;
  kernel: string;
  packages: Record<string, string>;
}

export interface GuestImage {
  dir: string;
  rootfs: string;
  vmlinuz: string;
  initrd: string;
  /** The kernel command line, one line. */
  cmdline: string;
  manifest: GuestImageManifest;
}

/** Why real guests cannot boot here, or false. The build needs root; booting needs QEMU and genisoimage. */
export function realGuestSkipReason(): string | false {
  if (process.env.AGENTLAB_REAL_GUESTS !== "1") return "set AGENTLAB_REAL_GUESTS=1 to boot real QEMU guests";
  if (process.getuid?.() !== 0) return "real guests need root (the image build runs debootstrap)";
  for (const tool of ["/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img", "/usr/bin/genisoimage"]) {
    try {
      accessSync(tool, constants.X_OK);
    } catch {
      return `${tool} is missing: apt-get install qemu-system-x86 qemu-utils genisoimage`;
    }
  }
  return false;
}

/** Build (or take from the cache) the image; the script's last stdout line is its directory. */
export async function guestImage(options: { force?: boolean } = {}): Promise<GuestImage> {
  const { stdout } = await run(GUEST_IMAGE_SCRIPT, options.force ? ["--force"] : [], {
    maxBuffer: 16 * 1024 * 1024,
    timeout: 20 * 60_000,
  });
  const dir = stdout.trimEnd().split("\n").pop() ?? "";
  if (!dir.startsWith("/") || !existsSync(join(dir, "manifest.json"))) {
    throw new Error(`scripts/dev/guest-image printed no image directory (last line: ${JSON.stringify(dir)})`);
  }
  return {
    dir,
    rootfs: join(dir, "rootfs.raw"),
    vmlinuz: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.img"),
    cmdline: readFileSync(join(dir, "cmdline"), "utf8").trim(),
    manifest: JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as GuestImageManifest,
  };
}
