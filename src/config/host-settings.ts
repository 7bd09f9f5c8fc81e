import type { DaemonChecks } from "../protocol/init.js";
import type { Config } from "./config.js";
import { DEFAULT_NFT_PARAMS, nftParamsFromConfig } from "./nft-params.js";

/** What the host-side checks compare against; the CLI uses it on the config file when the daemon is down. */
export function hostSettings(config: Config): DaemonChecks["host"] {
  const params = nftParamsFromConfig(config);
  const prefix = config.agent_subnet.split("/")[1] ?? "16";
  return {
    bridge: DEFAULT_NFT_PARAMS.bridge,
    bridge_address: `${params.bridgeAddress}/${prefix}`,
    agent_subnet: config.agent_subnet,
    guest_ports: [...params.guestPorts],
    data_dir: config.data_dir,
    socket_path: config.socket_path,
  };
}
