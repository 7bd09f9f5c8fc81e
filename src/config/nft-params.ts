/**
 * The parameters of the sandbox bridge's nftables ruleset (rendered by daemon/network/nft.ts), and how
 * config.yaml sets them. Both the daemon and the CLI (reading a config file while the daemon is down)
 * need them, so they live below both.
 */
import { isIPv4, isIPv6 } from "node:net";
import { parseHostPort } from "./net.js";

export interface NftParams {
  /** The sandbox bridge, e.g. vmbr1. */
  bridge: string;
  /** The sandboxes' IPv4 subnet, e.g. 10.77.0.0/16 (host bits must be zero). */
  subnet: string;
  /** The host's address on the bridge, e.g. 10.77.0.1: the gateway, DNS server and guest listeners. */
  bridgeAddress: string;
  /** The interface sandbox traffic leaves by, masqueraded, e.g. vmbr0. */
  wan: string;
  /** TCP ports of the daemon's guest listeners on the bridge address (bootstrap, artifacts). */
  guestPorts: readonly number[];
  /** The Tailscale interface allowed to open connections to sandboxes; "" for none. */
  tailscaleIf: string;
  /** Tailnet ranges sandboxes may never reach (v4 and v6). */
  tailnetV4: string;
  tailnetV6: string;
  /**
   * Also police every frame on the bridge by name (`meta ibrname`), not only the ports in
   * sandbox_ports. Needs CONFIG_NFT_BRIDGE_META (Proxmox and Debian kernels have it as a module; some
   * minimal kernels do not, and then the ruleset would not load). apply.sh detects it.
   */
  bridgeMeta: boolean;
}

export const DEFAULT_NFT_PARAMS: Readonly<NftParams> = Object.freeze({
  bridge: "vmbr1",
  subnet: "10.77.0.0/16",
  bridgeAddress: "10.77.0.1",
  wan: "vmbr0",
  guestPorts: Object.freeze([8844, 8846]),
  tailscaleIf: "tailscale0",
  tailnetV4: "100.64.0.0/10",
  tailnetV6: "fd7a:115c:a1e0::/48",
  bridgeMeta: false,
});

/**
 * Parameters from the daemon's config: the bridge address and ports of the guest listeners, the subnet.
 * A listener that binds every interface leaves the default bridge address; bad values surface in
 * checkNftParams (the config loader has validated them already).
 */
export function nftParamsFromConfig(
  config: { bootstrap_listen: string; artifact_listen: string; agent_subnet: string },
  overrides: Partial<NftParams> = {},
): NftParams {
  const bootstrap = parseHostPort(config.bootstrap_listen) ?? { host: "", port: Number.NaN };
  const artifact = parseHostPort(config.artifact_listen) ?? { host: "", port: Number.NaN };
  const ports = [...new Set([bootstrap.port, artifact.port])];
  return {
    ...DEFAULT_NFT_PARAMS,
    subnet: config.agent_subnet,
    ...(isIPv4(bootstrap.host) ? { bridgeAddress: bootstrap.host } : {}),
    guestPorts: ports,
    ...overrides,
  };
}

export const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

export function ipv4ToInt(ip: string): number {
  return ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
}

export function intToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join(".");
}

/** An IPv4 CIDR split into network and prefix length; undefined when it is not one. */
export function parseCidr4(text: string): { network: number; bits: number } | undefined {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(text);
  if (!match || !isIPv4(match[1]!)) return undefined;
  const bits = Number(match[2]);
  if (bits > 32) return undefined;
  return { network: ipv4ToInt(match[1]!), bits };
}

function hostBitsZero(network: number, bits: number): boolean {
  return network % 2 ** (32 - bits) === 0;
}

function isCidr6(text: string): boolean {
  const match = /^([0-9A-Fa-f:]+)\/(\d{1,3})$/.exec(text);
  return match !== null && isIPv6(match[1]!) && Number(match[2]) <= 128;
}

/** Every problem with the parameters (empty when they render a valid ruleset). */
export function checkNftParams(params: NftParams): string[] {
  const problems: string[] = [];
  for (const [key, value] of [
    ["bridge", params.bridge],
    ["wan", params.wan],
  ] as const) {
    if (!IFNAME.test(value))
      problems.push(`${key}: "${value}" is not an interface name (1-15 of A-Z a-z 0-9 _ . -)`);
  }
  if (params.tailscaleIf !== "" && !IFNAME.test(params.tailscaleIf)) {
    problems.push(`tailscale-if: "${params.tailscaleIf}" is not an interface name (or "" for none)`);
  }
  if (params.bridge === params.wan) problems.push(`wan: must differ from the bridge (${params.bridge})`);
  const subnet = parseCidr4(params.subnet);
  if (!subnet) {
    problems.push(`subnet: "${params.subnet}" is not an IPv4 CIDR such as 10.77.0.0/16`);
  } else if (!hostBitsZero(subnet.network, subnet.bits)) {
    problems.push(`subnet: "${params.subnet}" has host bits set (did you mean the network address?)`);
  } else if (subnet.bits > 30) {
    problems.push(`subnet: /${subnet.bits} leaves no room for sandboxes`);
  }
  if (!isIPv4(params.bridgeAddress)) {
    problems.push(`bridge-addr: "${params.bridgeAddress}" is not an IPv4 address`);
  } else if (subnet && hostBitsZero(subnet.network, subnet.bits) && subnet.bits <= 30) {
    const size = 2 ** (32 - subnet.bits);
    const addr = ipv4ToInt(params.bridgeAddress);
    if (Math.floor(addr / size) * size !== subnet.network) {
      problems.push(`bridge-addr: ${params.bridgeAddress} is outside the subnet ${params.subnet}`);
    } else if (addr === subnet.network || addr === subnet.network + size - 1) {
      problems.push(`bridge-addr: ${params.bridgeAddress} is the subnet's network or broadcast address`);
    }
  }
  if (params.guestPorts.length === 0) problems.push("guest-ports: at least one port is needed");
  for (const port of params.guestPorts) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      problems.push(`guest-ports: ${port} is not a TCP port (1-65535)`);
    }
  }
  if (new Set(params.guestPorts).size !== params.guestPorts.length) {
    problems.push("guest-ports: a port is listed twice");
  }
  const tailnet = parseCidr4(params.tailnetV4);
  if (!tailnet || !hostBitsZero(tailnet.network, tailnet.bits)) {
    problems.push(`tailnet-v4: "${params.tailnetV4}" is not an IPv4 network such as 100.64.0.0/10`);
  }
  if (!isCidr6(params.tailnetV6)) {
    problems.push(`tailnet-v6: "${params.tailnetV6}" is not an IPv6 network such as fd7a:115c:a1e0::/48`);
  }
  return problems;
}
