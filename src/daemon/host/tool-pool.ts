/**
 * The bound on host programs the daemon runs at once (nft, ip, e2fsck, blkid, mkfs.ext4, lvs, zfs,
 * partx, losetup): the Proxmox calls' pool class (proxmox/call-pool.ts) with one lane of its own. Every
 * process is a fork on a host that also runs the guests; `agentlab status` from many clients used to
 * start one `nft` each. More runs wait in line, first come first served, and a run whose caller gives up
 * while it waits is never started. A long e2fsck or mkfs holds its slot for its whole run.
 */
import { CallPool } from "../proxmox/call-pool.js";

export type HostToolPool = CallPool<"host">;

export const DEFAULT_HOST_TOOL_SLOTS = 4;

export function createHostToolPool(limit: number = DEFAULT_HOST_TOOL_SLOTS): HostToolPool {
  return new CallPool({ host: limit }, "host tool");
}
