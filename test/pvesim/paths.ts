/** Where things live inside a simulator directory. */
import { join } from "node:path";

export const statePath = (dir: string): string => join(dir, "state.json");
export const stateLockPath = (dir: string): string => join(dir, "state.lock");
export const controlPath = (dir: string): string => join(dir, "control.json");
export const tokenPath = (dir: string): string => join(dir, "token");
export const apiInfoPath = (dir: string): string => join(dir, "api.json");
export const tlsDir = (dir: string): string => join(dir, "tls");
export const storageRoot = (dir: string, storage: string): string => join(dir, "storage", storage);
/** Copies of volume contents taken by snapshots, beside the storage's live volumes. */
export const snapshotRoot = (dir: string, storage: string): string =>
  join(dir, "storage", ".snapshots", storage);

/**
 * Where the host's block device nodes would be (`/dev/<vg>/<lv>`, `/dev/zvol/<pool>/<name>`): symlinks
 * to the volume files, so host tools get a path shaped like the real one that opens the same bytes.
 */
export const devRoot = (dir: string): string => join(dir, "dev");

/**
 * What a job guest sees at /work when a workspace volume is its scsi1: the files of the filesystem on
 * that disk (a real guest mounts its ext4). A directory per volume, so a later VM given the same volume
 * finds what an earlier one left; freeing the volume removes it.
 */
export const guestWorkDir = (dir: string, node: string, volid: string): string =>
  join(dir, "guests", "work", node, volid.replace(/[^A-Za-z0-9._-]/g, "_"));

/** The simulator directory from the environment, as the fake CLIs find it. */
export function dirFromEnv(): string {
  const dir = process.env["PVESIM_DIR"];
  if (!dir) throw new Error("PVESIM_DIR is not set (it must name a directory made by `pvesim init`)");
  return dir;
}
