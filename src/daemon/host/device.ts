/**
 * From a workspace volume's path to a device the host tools can open (design §8.2 steps 3 and 6), and
 * back: lvmthin LVs are activated when inactive, zvols are waited for, and undo reverses only what was
 * done here. The activations are returned as data too, so a service can record them in its op row and
 * crash recovery can undo them later with undoActivations.
 *
 * qcow2 files on dir storage need a qemu-nbd export. agentlabd does not set one up: such volumes get the
 * troubleshooting guide's "unsupported volume path" error with the manual steps. A qemu-nbd path would
 * be one more case here, returning the /dev/nbdN device and an `nbd` activation to undo.
 */
import { statSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { AgentlabError } from "../../protocol/errors.js";
import { fsckUnsupportedError } from "./fsck.js";
import type { HostTools } from "./host-tools.js";

/** Something prepareDevice changed on the host, to be reversed afterwards. */
export type Activation = { kind: "lv"; vg: string; lv: string };

export interface PrepareDeviceOptions {
  /** The storage's type as Proxmox reports it: `zfspool`, `lvmthin`, `dir`, ... */
  storageType: string;
  /** The volume's path (`pvesm path <volid>`, or the API content entry's `path`). */
  path: string;
  /** lvmthin: the volume group (storage config `vgname`); taken from `/dev/<vg>/<lv>` when absent. */
  vg?: string;
  /** lvmthin: the LV name (`vm-H-disk-0`); taken from `/dev/<vg>/<lv>` when absent. */
  lv?: string;
  tools: HostTools;
  /** The workspace's node, for the words of the "unsupported" error. */
  node?: string;
  /** How long a device node may take to appear (zvol links, LVs after activation). Default 10 s, as PVE. */
  linkWaitMs?: number;
}

export interface PreparedDevice {
  /** The path to hand to blkid/e2fsck/mkfs. */
  device: string;
  /** What was done to get there; empty when the volume was already usable. */
  activations: Activation[];
  /** Reverse `activations`, newest first. Safe to call more than once. */
  undo(): Promise<void>;
}

const DEFAULT_LINK_WAIT_MS = 10_000;
const POLL_MS = 100;

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Wait for a device node udev creates asynchronously; false when it did not come in time. */
async function waitForPath(path: string, waitMs: number): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (exists(path)) return true;
    if (Date.now() >= deadline) return false;
    await sleep(POLL_MS);
  }
}

/** Reverse recorded activations, newest first; used by undo() and by crash recovery. */
export async function undoActivations(activations: readonly Activation[], tools: HostTools): Promise<void> {
  for (const activation of [...activations].reverse()) {
    if (activation.kind === "lv") await tools.lvDeactivate(activation.vg, activation.lv);
  }
}

function lvNames(options: PrepareDeviceOptions): { vg: string; lv: string } {
  if (options.vg && options.lv) return { vg: options.vg, lv: options.lv };
  const m = /^\/dev\/([^/]+)\/([^/]+)$/.exec(options.path);
  if (m) return { vg: options.vg ?? m[1]!, lv: options.lv ?? m[2]! };
  throw new AgentlabError(
    "INVALID_PARAMS",
    `lvmthin volume path ${options.path} does not name its volume group and LV (/dev/<vg>/<lv>)`,
    { hint: "pass vg (the storage's vgname) and lv (the volume name) explicitly" },
  );
}

/**
 * Make the volume at `path` usable on this host and say how to put things back. Throws
 * HOST_TOOLS_UNAVAILABLE (`workspace fsck unsupported for volume path ...`) for volumes this host cannot
 * open, and changes nothing in that case.
 */
export async function prepareDevice(options: PrepareDeviceOptions): Promise<PreparedDevice> {
  const { storageType, path, tools } = options;
  const linkWaitMs = options.linkWaitMs ?? DEFAULT_LINK_WAIT_MS;
  const activations: Activation[] = [];
  let undone = false;
  const prepared = (device: string): PreparedDevice => ({
    device,
    activations,
    async undo() {
      if (undone) return;
      undone = true;
      await undoActivations(activations, tools);
    },
  });

  switch (storageType) {
    case "lvmthin": {
      const { vg, lv } = lvNames(options);
      // PVE 9 creates LVs with autoactivation off, so after a reboot a workspace LV is inactive.
      if (!(await tools.lvActive(vg, lv))) {
        await tools.lvActivate(vg, lv);
        activations.push({ kind: "lv", vg, lv });
      }
      if (!(await waitForPath(path, linkWaitMs))) {
        await undoActivations(activations, tools);
        throw new AgentlabError(
          "NOT_FOUND",
          `${path} did not appear within ${linkWaitMs} ms of activating ${vg}/${lv}`,
          {
            hint: `check the LV: lvs -a ${vg}; udevadm settle; ls -l /dev/${vg}/`,
          },
        );
      }
      return prepared(path);
    }
    case "zfspool": {
      // The /dev/zvol link exists while the pool is imported, but udev may still be creating it.
      if (!(await waitForPath(path, linkWaitMs))) {
        throw new AgentlabError("NOT_FOUND", `zvol link ${path} did not appear within ${linkWaitMs} ms`, {
          hint: "check that the pool is imported (zpool list) and the volume exists (zfs list -t volume); udevadm trigger --subsystem-match=block recreates missing links",
        });
      }
      return prepared(path);
    }
    case "dir": {
      const node = options.node ?? "the workspace's node";
      if (/\.qcow2$/.test(path)) {
        throw fsckUnsupportedError({
          path,
          ...(options.node ? { node: options.node } : {}),
          reason: "qcow2 volumes need a qemu-nbd export, which agentlabd does not set up",
          hint: `use a maintenance sandbox, or on ${node}: modprobe nbd max_part=8; qemu-nbd --connect=/dev/nbd0 --read-only --format=qcow2 ${path}; e2fsck -f -n /dev/nbd0; qemu-nbd --disconnect /dev/nbd0`,
        });
      }
      throw fsckUnsupportedError({
        path,
        ...(options.node ? { node: options.node } : {}),
        reason: "workspaces on dir storage are qcow2 files, and this volume is not one",
        hint: "check the volume's format: pvesm list <storage>; workspaces support zfspool, lvmthin and dir (qcow2)",
      });
    }
    default:
      throw fsckUnsupportedError({
        path,
        ...(options.node ? { node: options.node } : {}),
        reason: `storage type ${storageType} is not supported for workspaces`,
        hint: "workspaces support zfspool, lvmthin and dir (qcow2); check the volume from a maintenance sandbox",
      });
  }
}
