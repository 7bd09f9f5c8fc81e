/**
 * Which interface is a VM NIC's port on its bridge. The anti-spoofing sets are keyed by it, so binding
 * a name that does not exist polices nothing: the port is looked up on the host, never predicted.
 *
 * Proxmox names a NIC's tap `tap<vmid>i<n>` and plugs it in when QEMU starts (qemu-server
 * src/usr/pve-bridge:45 -> src/PVE/QemuServer/Network.pm:351-355 `tap_plug`). It creates a firewall
 * bridge only when the NIC has `firewall=1` AND `needs_fwbr($bridge)` holds, i.e. the iptables
 * pve-firewall is in use or the bridge is OVS (pve-firewall src/PVE/Firewall/Helpers.pm:215-218).
 * `is_nftables()` there is "the flag file /run/proxmox-nftables-firewall-force-disable does not exist"
 * (Helpers.pm:194, 203-205); pve-firewall writes that file unless the cluster firewall is enabled AND
 * the host firewall has `nftables: 1` and proxmox-firewall is installed (src/PVE/Firewall.pm:5273-5313).
 * With a firewall bridge the tap sits in `fwbr<vmid>i<n>` and the port on the sandbox bridge is the
 * veth `fwpr<vmid>p<n>` (pve-common src/PVE/Network.pm:165-174, 443-463); otherwise the tap itself is
 * the port. Which one applies depends on host state the daemon cannot see through the API (a flag file
 * in /run), hence the lookup.
 */
import { AgentlabError } from "../../protocol/errors.js";
import { type CommandRunner, sandboxPortName } from "./sandbox-firewall.js";

/** The port names a NIC can have on the bridge, the firewall bridge's veth first. */
export function bridgePortCandidates(vmid: number, netIndex = 0, proxmoxFirewall = true): string[] {
  const tap = sandboxPortName(vmid, netIndex, false);
  const fwpr = sandboxPortName(vmid, netIndex, true);
  return proxmoxFirewall ? [fwpr, tap] : [tap];
}

/** A NIC's port as found on the host: its name and the bridge it is enslaved to. */
export interface BridgePort {
  port: string;
  bridge: string;
}

/** The result of a lookup: the port, or why there is none (for the operator). */
export type PortLookup = { found: BridgePort } | { found?: undefined; reason: string };

/** Looks a VM NIC's bridge port up on the host. */
export type PortFinder = (vmid: number, netIndex?: number) => Promise<PortLookup>;

interface LinkInfo {
  ifname: string;
  master?: string;
}

/** One interface as `ip -j link show dev <name>` reports it; undefined when it does not exist. */
async function linkInfo(run: CommandRunner, name: string): Promise<LinkInfo | undefined> {
  const result = await run("ip", ["-j", "link", "show", "dev", name], { timeoutMs: 10_000 });
  if (result.exitCode !== 0) {
    if (/does not exist/i.test(result.stderr)) return undefined;
    throw new AgentlabError(
      "INTERNAL",
      `ip link show dev ${name} failed (exit ${result.exitCode}): ${result.stderr.trim().split("\n")[0] ?? ""}`,
      { hint: "agentlabd needs the ip command (iproute2) to find a sandbox's bridge port" },
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(result.stdout);
  } catch {
    throw new AgentlabError(
      "INTERNAL",
      `ip -j link printed something that is not JSON: ${result.stdout.slice(0, 200)}`,
    );
  }
  const entry = Array.isArray(parsed) ? (parsed[0] as LinkInfo | undefined) : undefined;
  return entry && typeof entry.ifname === "string" ? entry : undefined;
}

/**
 * Find the NIC's port: `fwpr<vmid>p<n>` when it exists and is enslaved to a bridge, else
 * `tap<vmid>i<n>` when it is enslaved to a bridge other than its own firewall bridge. `run` executes
 * `ip` (through a netns prefix in tests).
 */
export function bridgePortFinder(run: CommandRunner): PortFinder {
  return async (vmid, netIndex = 0) => {
    const [fwpr, tap] = bridgePortCandidates(vmid, netIndex, true) as [string, string];
    const fwbr = `fwbr${vmid}i${netIndex}`;
    const veth = await linkInfo(run, fwpr);
    if (veth?.master) return { found: { port: fwpr, bridge: veth.master } };
    const nic = await linkInfo(run, tap);
    if (nic?.master && nic.master !== fwbr) return { found: { port: tap, bridge: nic.master } };
    const seen = [
      veth ? `${fwpr} exists but is in no bridge` : `${fwpr} does not exist`,
      nic
        ? nic.master
          ? `${tap} is in its firewall bridge ${fwbr}`
          : `${tap} exists but is in no bridge`
        : `${tap} does not exist`,
    ];
    return { reason: seen.join(", ") };
  };
}
