/**
 * Helpers for the workspace tests that go through the real CLI and daemon: the simulator's view of a
 * VM, and the real file behind a workspace volume, so a test can write bytes "as the guest would" and
 * prove they survive.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readSync, statSync, writeSync } from "node:fs";
import Database from "better-sqlite3";
import type { SimHost } from "../helpers/simhost.js";
import { inspect, runTool } from "../pvesim/harness.js";
import { findVolume, getStorage, volumeFile as storageFile } from "../pvesim/storage.js";

export interface WorkspaceBody {
  id: string;
  name: string;
  state: string;
  storage: string;
  size_gb: number;
  volid: string;
  holder_vmid: number;
  attached_vmid?: number;
  last_attached_vmid?: number;
  lease_owner?: string;
  copy_mode?: "cow" | "full";
}

export interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  workspace_id?: string;
  failure_reason?: string;
}

export interface ErrorBody {
  error: string;
  code: string;
  message: string;
  details: Record<string, unknown>;
  hint: string;
}

/** The simulator's view of a VM: its config and each snapshot's config; undefined when it is gone. */
export function simVm(
  h: SimHost,
  vmid: number,
): Promise<
  | { status: string; config: Record<string, string>; snapshots: Record<string, Record<string, string>> }
  | undefined
> {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    if (!vm) return undefined;
    return {
      status: vm.runtime.status,
      config: Object.fromEntries(Object.entries(vm.config).map(([k, v]) => [k, String(v)])),
      snapshots: Object.fromEntries(
        Object.entries(vm.snapshots).map(([name, config]) => [
          name,
          Object.fromEntries(Object.entries(config).map(([k, v]) => [k, String(v)])),
        ]),
      ),
    };
  });
}

/** The volid a drive value names (`local-lvm:vm-1000-disk-0,backup=0,...`). */
export function volidOf(drive: string | undefined): string | undefined {
  return drive?.split(",")[0];
}

/** The real file behind a volume, from the simulator's `pvesm path`. */
export async function volumeFile(h: SimHost, volid: string): Promise<string> {
  const result = await runTool(h.sim, "pvesm", ["path", volid]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

/**
 * The file that stores a volume's bytes in the simulator, whether or not its device is active (an
 * inactive thin LV has no /dev link, so `pvesm path` would name a path that does not exist).
 */
export async function volumeBackingFile(h: SimHost, volid: string): Promise<string> {
  return inspect(h.sim.dir, (ctx) => {
    const rec = findVolume(ctx.state, "pve", volid);
    if (!rec) throw new Error(`no volume ${volid} in the simulator`);
    return storageFile(ctx.dir, getStorage(ctx.state, rec.storage), rec.volname);
  });
}

/** Where test data goes in a workspace volume: past the first MiB, as a file's blocks would be. */
export const DATA_AT = 1024 * 1024;
export const DATA_SIZE = 1024 * 1024;

/** Write `data` (default: 1 MiB of random bytes) into the volume at DATA_AT, as a guest writing /work would. */
export function writeData(path: string, data: Buffer = randomBytes(DATA_SIZE)): Buffer {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, data, 0, data.length, DATA_AT);
  } finally {
    closeSync(fd);
  }
  return data;
}

/** The bytes at DATA_AT. */
export function readData(path: string, size = DATA_SIZE): Buffer {
  const fd = openSync(path, "r");
  try {
    const out = Buffer.alloc(size);
    readSync(fd, out, 0, size, DATA_AT);
    return out;
  } finally {
    closeSync(fd);
  }
}

/**
 * sha256 of the whole volume file plus its size: the fingerprint that must not change when a sandbox
 * using the workspace is destroyed. Volumes in these tests are 1 GiB sparse files, quick to read.
 */
export function fingerprint(path: string): string {
  const hash = createHash("sha256");
  const fd = openSync(path, "r");
  try {
    const chunk = Buffer.alloc(8 * 1024 * 1024);
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      hash.update(chunk.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return `${statSync(path).size}:${hash.digest("hex")}`;
}

export async function workspaceShow(h: SimHost, name: string): Promise<WorkspaceBody> {
  const shown = await h.json<WorkspaceBody>(["workspace", "show", name]);
  assert.equal(shown.code, 0, shown.stderr);
  return shown.body;
}

/** The kinds of a workspace's events, oldest first, read from the daemon's database. */
export function workspaceEvents(h: SimHost, id: string): string[] {
  const db = new Database(h.host.dbPath, { readonly: true });
  try {
    return (
      db.prepare("SELECT kind FROM events WHERE workspace_id = ? ORDER BY id").all(id) as { kind: string }[]
    ).map((r) => r.kind);
  } finally {
    db.close();
  }
}

/** `workspace create` of a 1 GiB workspace on `storage`, which must succeed. */
export async function createWorkspace<T = WorkspaceBody>(
  h: SimHost,
  name: string,
  storage: string,
): Promise<T> {
  const created = await h.json<T>([
    "workspace",
    "create",
    "--name",
    name,
    "--size",
    "1G",
    "--storage",
    storage,
  ]);
  assert.equal(created.code, 0, `${created.stderr}${JSON.stringify(created.body)}`);
  return created.body;
}

/** Where the fork tests keep their data on their 1 GiB volumes: 1 MiB at 16 MiB, past the filesystem's start. */
export const FORK_DATA_AT = 16 * 1024 * 1024;

/** Write the fork tests' data into a workspace's volume. */
export async function writeForkData(h: SimHost, volid: string, data: Buffer): Promise<void> {
  const fd = openSync(await volumeBackingFile(h, volid), "r+");
  try {
    writeSync(fd, data, 0, data.length, FORK_DATA_AT);
  } finally {
    closeSync(fd);
  }
}

/** sha256 of a volume's first 8 MiB (where the filesystem's metadata is) and of the fork tests' data. */
export async function forkDigest(h: SimHost, volid: string): Promise<string> {
  const MiB = 1024 * 1024;
  const fd = openSync(await volumeBackingFile(h, volid), "r");
  try {
    const hash = createHash("sha256");
    for (const [at, length] of [
      [0, 8 * MiB],
      [FORK_DATA_AT, MiB],
    ] as const) {
      const bytes = Buffer.alloc(length);
      readSync(fd, bytes, 0, length, at);
      hash.update(bytes);
    }
    return hash.digest("hex");
  } finally {
    closeSync(fd);
  }
}
