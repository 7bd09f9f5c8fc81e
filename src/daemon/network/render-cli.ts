/**
 * `node dist/src/daemon/network/render-cli.js [flags]`: print the nftables ruleset for the given
 * parameters (defaults: DEFAULT_NFT_PARAMS). scripts/net/apply.sh calls it, so the shell scripts and the
 * daemon share one renderer. Exit 0 with the ruleset on stdout, 2 with the problems on stderr.
 */
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { checkNftParams, DEFAULT_NFT_PARAMS, type NftParams, renderRuleset } from "./nft.js";

export const RENDER_USAGE = `usage: render-cli [--bridge vmbr1] [--wan vmbr0] [--subnet 10.77.0.0/16] [--bridge-addr 10.77.0.1]
                  [--guest-ports 8844,8846] [--tailscale-if tailscale0|""] [--tailnet-v4 100.64.0.0/10]
                  [--tailnet-v6 fd7a:115c:a1e0::/48] [--bridge-meta]
Prints the agentlab nftables ruleset for these parameters on stdout.`;

export type RenderResult = { code: 0; stdout: string } | { code: 2; stderr: string };

/** Parses the flags and renders; never exits, so tests can call it. */
export function renderFromArgs(argv: readonly string[]): RenderResult {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        bridge: { type: "string" },
        wan: { type: "string" },
        subnet: { type: "string" },
        "bridge-addr": { type: "string" },
        "guest-ports": { type: "string" },
        "tailscale-if": { type: "string" },
        "tailnet-v4": { type: "string" },
        "tailnet-v6": { type: "string" },
        "bridge-meta": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    return { code: 2, stderr: `render-cli: ${(error as Error).message}\n${RENDER_USAGE}\n` };
  }
  if (values["help"]) return { code: 0, stdout: `${RENDER_USAGE}\n` };
  const str = (key: string, fallback: string) => {
    const value = values[key];
    return typeof value === "string" ? value.trim() : fallback;
  };
  const portsText = values["guest-ports"];
  const guestPorts =
    typeof portsText === "string"
      ? portsText
          .split(",")
          .map((part) => part.trim())
          .filter((part) => part !== "")
          .map((part) => (/^\d+$/.test(part) ? Number(part) : Number.NaN))
      : [...DEFAULT_NFT_PARAMS.guestPorts];
  const params: NftParams = {
    bridge: str("bridge", DEFAULT_NFT_PARAMS.bridge),
    wan: str("wan", DEFAULT_NFT_PARAMS.wan),
    subnet: str("subnet", DEFAULT_NFT_PARAMS.subnet),
    bridgeAddress: str("bridge-addr", DEFAULT_NFT_PARAMS.bridgeAddress),
    guestPorts,
    tailscaleIf: str("tailscale-if", DEFAULT_NFT_PARAMS.tailscaleIf),
    tailnetV4: str("tailnet-v4", DEFAULT_NFT_PARAMS.tailnetV4),
    tailnetV6: str("tailnet-v6", DEFAULT_NFT_PARAMS.tailnetV6),
    bridgeMeta: values["bridge-meta"] === true,
  };
  const problems = checkNftParams(params);
  if (problems.length > 0) {
    return { code: 2, stderr: problems.map((problem) => `render-cli: ${problem}\n`).join("") };
  }
  return { code: 0, stdout: renderRuleset(params) };
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  const result = renderFromArgs(process.argv.slice(2));
  if (result.code === 0) process.stdout.write(result.stdout);
  else process.stderr.write(result.stderr);
  process.exitCode = result.code;
}
