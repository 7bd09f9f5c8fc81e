/** `pvesim init`: a fresh cluster with storages, a template per node, and a full-rights API token. */
import { randomInt } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { addToken } from "./access.js";
import type { Ctx } from "./context.js";
import { DEFAULT_KNOBS, readControl } from "./control.js";
import { materialiseDrive } from "./disks.js";
import { hostRoot, makeHostLayout } from "./host-files.js";
import { makeTemplate } from "./lifecycle.js";
import { controlPath, statePath, storageRoot, tokenPath } from "./paths.js";
import { qemuMode } from "./qemu.js";
import { getStorage, splitVolid, volumeFile } from "./storage.js";
import { writeFileAtomic, writeState } from "./store.js";
import type { ConfigMap, SimState, StorageRec, VmRec } from "./types.js";
import { newSmbios, newVmgenid, parseDrive, randomMac } from "./vmconfig.js";

export interface InitOptions {
  nodes: string[];
  /** VMID of the first node's template (the next nodes get the following IDs); 0 = no template. */
  template: number;
  cluster: string;
  force: boolean;
  /** Storage specs (see `parseStorageSpecs`); default `local`, `local-lvm`, `local-zfs`. */
  storages?: string[];
  /** Real guests: sets the knobs `guests=qemu` and `guest_image`, so the templates' disks are the image. */
  guestImage?: string;
}

export const DEFAULT_TOKEN_ID = "root@pam!agentlab";

const GiB = 1024 ** 3;

export const DEFAULT_STORAGES = ["local", "local-lvm", "local-zfs"];

const STANDARD: Record<string, StorageRec> = {
  local: {
    id: "local",
    type: "dir",
    content: ["backup", "images", "iso", "snippets", "vztmpl"],
    total: 98 * GiB,
    shared: false,
    enabled: true,
    active: true,
    hostPath: "/var/lib/vz",
  },
  "local-lvm": {
    id: "local-lvm",
    type: "lvmthin",
    content: ["images", "rootdir"],
    total: 350 * GiB,
    shared: false,
    enabled: true,
    active: true,
    hostPath: "/dev/pve",
    vgname: "pve",
    thinpool: "data",
  },
  "local-zfs": {
    id: "local-zfs",
    type: "zfspool",
    content: ["images", "rootdir"],
    total: 450 * GiB,
    shared: false,
    enabled: true,
    active: true,
    hostPath: "/dev/zvol/rpool/data",
    pool: "rpool/data",
  },
};

const SPEC_USAGE =
  "a storage is local, local-lvm, local-zfs, ID:dir, ID:lvm[:VG], ID:lvmthin[:VG/THINPOOL] or ID:zfspool[:POOL]";

/**
 * Storage specs for `init --storages`: the three PVE defaults by name, or `ID:TYPE[:ARG]` for others,
 * e.g. `thick:lvm:vmdata` (thick LVM on VG vmdata: no snapshots, no linked clones).
 */
export function parseStorageSpecs(specs: string[]): StorageRec[] {
  const out: StorageRec[] = [];
  for (const spec of specs) {
    const standard = STANDARD[spec];
    if (standard) {
      out.push(structuredClone(standard));
      continue;
    }
    const [id, type, arg, ...extra] = spec.split(":");
    if (!id || !type || extra.length > 0 || !/^[a-z][a-z0-9\-_.]*[a-z0-9]$/i.test(id))
      throw new Error(`bad storage '${spec}': ${SPEC_USAGE}`);
    const base = { id, shared: false, enabled: true, active: true };
    if (type === "dir") {
      if (arg !== undefined) throw new Error(`bad storage '${spec}': dir takes no argument`);
      out.push({ ...base, type, content: ["images"], total: 98 * GiB, hostPath: `/mnt/pve/${id}` });
    } else if (type === "lvm") {
      const vg = arg ?? id;
      if (!/^[a-zA-Z0-9_.+-]+$/.test(vg))
        throw new Error(`bad storage '${spec}': invalid volume group '${vg}'`);
      out.push({
        ...base,
        type,
        content: ["images", "rootdir"],
        total: 200 * GiB,
        hostPath: `/dev/${vg}`,
        vgname: vg,
      });
    } else if (type === "lvmthin") {
      const [vg, thinpool, ...more] = (arg ?? `pve/${id}`).split("/");
      if (!vg || !thinpool || more.length > 0)
        throw new Error(`bad storage '${spec}': lvmthin wants VG/THINPOOL, got '${arg}'`);
      out.push({
        ...base,
        type,
        content: ["images", "rootdir"],
        total: 350 * GiB,
        hostPath: `/dev/${vg}`,
        vgname: vg,
        thinpool,
      });
    } else if (type === "zfspool") {
      const pool = arg ?? `rpool/${id}`;
      if (!/^[a-zA-Z0-9][a-zA-Z0-9_.:-]*(\/[a-zA-Z0-9_.:-]+)*$/.test(pool))
        throw new Error(`bad storage '${spec}': invalid pool '${pool}'`);
      out.push({
        ...base,
        type,
        content: ["images", "rootdir"],
        total: 450 * GiB,
        hostPath: `/dev/zvol/${pool}`,
        pool,
      });
    } else {
      throw new Error(`bad storage '${spec}': unknown type '${type}' (${SPEC_USAGE})`);
    }
  }
  const seen = new Set<string>();
  for (const s of out) {
    // Two storages sharing an ID, a volume group or a pool would share volume names and devices.
    for (const key of [
      `id ${s.id}`,
      s.vgname ? `volume group ${s.vgname}` : "",
      s.pool ? `pool ${s.pool}` : "",
    ]) {
      if (key === "") continue;
      if (seen.has(key)) throw new Error(`two storages use the same ${key}`);
      seen.add(key);
    }
  }
  return out;
}

function createTemplate(ctx: Ctx, node: string, vmid: number): void {
  const config: ConfigMap = {
    agent: "1",
    boot: "order=scsi0",
    cores: "2",
    cpu: "x86-64-v2-AES",
    ipconfig0: "ip=dhcp",
    memory: "2048",
    meta: `creation-qemu=9.2.0,ctime=${Math.floor(ctx.now / 1000)}`,
    name: "agentlab-template",
    net0: `virtio=${randomMac()},bridge=vmbr1`,
    ostype: "l26",
    scsihw: "virtio-scsi-pci",
    serial0: "socket",
    smbios1: newSmbios(),
    vga: "serial0",
    vmgenid: newVmgenid(),
  };
  const vm: VmRec = {
    vmid,
    node,
    config,
    pending: {},
    pendingDelete: [],
    snapshots: {},
    runtime: { status: "stopped", qmpstatus: "stopped" },
    createdAt: ctx.now,
  };
  ctx.state.vms[String(vmid)] = vm;
  config["scsi0"] = materialiseDrive(ctx, vm, "scsi0", "local-zfs:8,discard=on,iothread=1");
  if (qemuMode(ctx.control)) linkGuestImage(ctx, config["scsi0"]);
  config["ide2"] = materialiseDrive(ctx, vm, "ide2", "local-zfs:cloudinit");
  makeTemplate(ctx, vm);
}

/**
 * Real guests (guests=qemu): the template's root disk holds the guest image. Its volume file becomes a
 * symlink to the image's rootfs.raw (read-only in use: the template's base is only ever the backing
 * file of its linked clones' qcow2 overlays, and a full clone copies it).
 */
function linkGuestImage(ctx: Ctx, drive: string): void {
  const image = ctx.control.guest_image;
  const rootfs = join(image, "rootfs.raw");
  if (!image || !existsSync(rootfs)) {
    throw new Error(
      `guests=qemu needs the knob guest_image to name a built guest image (no ${rootfs || "guest_image"}): ` +
        "run scripts/dev/guest-image and pass its directory",
    );
  }
  const { storage, volname } = splitVolid(parseDrive(drive).file);
  const file = volumeFile(ctx.dir, getStorage(ctx.state, storage), volname);
  rmSync(file, { force: true });
  symlinkSync(rootfs, file);
}

/** Creates DIR with a new cluster; returns the API token (`USER@REALM!ID=SECRET`). */
export function initCluster(dir: string, opts: InitOptions): string {
  // Bad specs are refused before anything of an existing simulator is removed.
  const storages = parseStorageSpecs(opts.storages ?? DEFAULT_STORAGES);
  if (opts.template > 0 && !storages.some((s) => s.id === "local-zfs"))
    throw new Error(
      "the template's disks live on local-zfs: keep local-zfs in --storages or use --template 0",
    );
  if (existsSync(statePath(dir))) {
    if (!opts.force) throw new Error(`${dir} already holds a simulator (use --force to start over)`);
    for (const name of [
      "state.json",
      "control.json",
      "token",
      "api.json",
      "storage",
      "guests",
      "dev",
      "host",
    ]) {
      rmSync(`${dir}/${name}`, { recursive: true, force: true });
    }
  }
  mkdirSync(dir, { recursive: true });
  const now = Date.now();
  const state: SimState = {
    format: 1,
    cluster: opts.cluster,
    nodes: opts.nodes.map((name, i) => ({
      name,
      bootMs: now - 3 * 86_400_000 - i * 60_000,
      online: true,
      nodeid: i + 1,
    })),
    vms: {},
    storages,
    volumes: {},
    tasks: [],
    nextPid: 0x3000 + randomInt(0x10000),
    users: { "root@pam": { enabled: true, tokens: {} } },
    acl: [],
    faultUse: {},
    createdAt: now,
  };
  makeHostLayout(hostRoot(dir));
  for (const s of state.storages) {
    mkdirSync(storageRoot(dir, s.id), { recursive: true });
    if (s.content.includes("snippets")) mkdirSync(`${storageRoot(dir, s.id)}/snippets`, { recursive: true });
  }
  if (opts.guestImage !== undefined) {
    const control = existsSync(controlPath(dir))
      ? (JSON.parse(readFileSync(controlPath(dir), "utf8")) as object)
      : {};
    writeFileAtomic(
      controlPath(dir),
      `${JSON.stringify({ faults: [], ...control, guests: "qemu", guest_image: resolve(opts.guestImage) }, null, 2)}\n`,
    );
  }
  const ctx: Ctx = { dir, state, control: { ...DEFAULT_KNOBS, ...readControl(dir), faults: [] }, now };
  if (opts.template > 0) {
    for (const [i, node] of opts.nodes.entries()) createTemplate(ctx, node, opts.template + i);
  }
  const secret = addToken(state, DEFAULT_TOKEN_ID, false);
  writeState(dir, state);
  const token = `${DEFAULT_TOKEN_ID}=${secret}`;
  writeFileSync(tokenPath(dir), `${token}\n`, { mode: 0o600 });
  return token;
}
