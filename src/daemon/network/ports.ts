/**
 * Which interface is a VM NIC's port on the sandbox bridge. The anti-spoofing sets are keyed by it.
 *
 * Proxmox names a NIC's tap `tap<vmid>i<n>`. With the NIC's firewall on (`firewall=1`, which the daemon
 * sets by default) and the classic iptables pve-firewall, the tap sits in its own `fwbr<vmid>i<n>` and
 * the port on the sandbox bridge is the veth `fwpr<vmid>p<n>`; with the nftables proxmox-firewall (or
 * firewall=0) the tap is the port itself. So: predict before the VM starts, look after.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { sandboxPortName } from "./sandbox-firewall.js";

/** The port names a NIC can have on the bridge, the likelier first. */
export function bridgePortCandidates(vmid: number, netIndex = 0, proxmoxFirewall = true): string[] {
  const tap = sandboxPortName(vmid, netIndex, false);
  const fwpr = sandboxPortName(vmid, netIndex, true);
  return proxmoxFirewall ? [fwpr, tap] : [tap];
}

/**
 * The NIC's port among the bridge's ports (`/sys/class/net/<bridge>/brif/`), or undefined when the VM
 * is not (yet) attached. `sysfs` is for tests.
 */
export async function findBridgePort(
  bridge: string,
  vmid: number,
  netIndex = 0,
  sysfs = "/sys/class/net",
): Promise<string | undefined> {
  let ports: string[];
  try {
    ports = await readdir(join(sysfs, bridge, "brif"));
  } catch {
    return undefined;
  }
  return bridgePortCandidates(vmid, netIndex, true).find((name) => ports.includes(name));
}
