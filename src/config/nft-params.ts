/**
 * The parameters of the sandbox bridge's nftables ruleset (rendered by daemon/network/nft.ts), and how
 * config.yaml sets them. Both the daemon and the CLI (reading a config file while the daemon is down)
 * need them, so they live below both.
 */
import { isIPv4 } from "node:net";
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
