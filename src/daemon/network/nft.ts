/**
 * The host firewall for the sandbox bridge, rendered as one nftables ruleset from a few parameters.
 *
 * This module is the single source of truth for the rules: scripts/net/apply.sh renders through
 * render-cli.ts, scripts/net/agent_nat.nft is the rendering of the defaults (a unit test fails when it is
 * stale), and sandbox-firewall.ts names the sets declared here. Pure functions, no I/O.
 *
 * Four things, in three tables:
 * - `inet agentlab` forward: traffic from the bridge may go to the Internet, never to private, link-local,
 *   CGNAT/tailnet or ULA destinations; per-sandbox set membership relaxes (allow_private) or tightens
 *   (egress_blocked, egress_allowlist) that for one sandbox, so one ruleset serves every profile.
 * - `inet agentlab` input: from the bridge the host answers only the guest listener ports on the bridge
 *   address, DNS, DHCP and ICMP echo; the Proxmox API (8006), sshd and everything else are dropped.
 * - `bridge agentlab_l2`: anti-spoofing at layer 2; a port bound by the daemon may only use its own MAC
 *   and IPv4 address, an unbound port may not claim the bridge address or a bound sandbox's address.
 * - `ip agentlab_nat`: masquerade the subnet out of the WAN interface.
 *
 * Loading the ruleset again replaces every rule (`flush table`) but keeps the members of the sets, so a
 * reload does not forget which sandbox is bound to which port or allowed what.
 */
// The parameters and their derivation from config.yaml live in config/ so the CLI can read them from
// a config file when the daemon is down; every renderer here takes them from there.
import { checkNftParams, DEFAULT_NFT_PARAMS, type NftParams } from "../../config/nft-params.js";
import { AgentlabError } from "../../protocol/errors.js";

export {
  checkNftParams,
  DEFAULT_NFT_PARAMS,
  IFNAME,
  intToIpv4,
  ipv4ToInt,
  type NftParams,
  nftParamsFromConfig,
  parseCidr4,
} from "../../config/nft-params.js";

/** Table and set names, shared with the code that maintains set members. */
export const NFT = Object.freeze({
  filterTable: { family: "inet", name: "agentlab" },
  l2Table: { family: "bridge", name: "agentlab_l2" },
  natTable: { family: "ip", name: "agentlab_nat" },
  sets: Object.freeze({
    /** inet: sandbox IPv4 addresses allowed to reach the private ranges. */
    allowPrivate: "allow_private",
    /** inet: sandbox addresses with no forwarded traffic at all (the host's services stay reachable). */
    egressBlocked: "egress_blocked",
    /** inet: sandbox addresses that may only reach the destinations paired with them in allowlist_dest. */
    egressAllowlist: "egress_allowlist",
    /** inet: `sandbox . destination-prefix` pairs for the sandboxes in egress_allowlist. */
    allowlistDest: "allowlist_dest",
    /** bridge: sandbox ports (tap names) to police; the daemon adds a VM's before starting it. */
    sandboxPorts: "sandbox_ports",
    /** bridge: ports the daemon has bound to one MAC and IPv4 address. */
    boundPorts: "bound_ports",
    /** bridge: `port . mac` of each bound port. */
    portMacs: "port_macs",
    /** bridge: `port . mac . ipv4` of each bound port. */
    tapBindings: "tap_bindings",
    /** bridge: the addresses of bound ports, which no other port may claim. */
    boundIps: "bound_ips",
  }),
});

/** Destinations no sandbox reaches unless it is in allow_private (RFC 1918). */
export const PRIVATE_V4 = Object.freeze(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
/** Destinations no sandbox reaches at all, besides the tailnet ranges: link-local (and cloud metadata). */
export const LINK_LOCAL_V4 = Object.freeze(["169.254.0.0/16"]);
/** IPv6 destinations no sandbox reaches: unique-local and link-local. */
export const BLOCKED_V6 = Object.freeze(["fc00::/7", "fe80::/10"]);

/** Parameters that cannot render a valid ruleset; `problems` names each one. */
export class NftParamsError extends AgentlabError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super("INVALID_PARAMS", `invalid network parameters: ${problems.join("; ")}`, {
      details: { problems },
      hint: "fix the named parameter (scripts/net/apply.sh --help lists them)",
    });
    this.name = "NftParamsError";
    this.problems = problems;
  }
}

function quote(ifname: string): string {
  return `"${ifname}"`;
}

function set(items: readonly (string | number)[]): string {
  return items.length === 1 ? String(items[0]) : `{ ${items.join(", ")} }`;
}

/** The ruleset text for `nft -f`. Throws NftParamsError when the parameters are invalid. */
export function renderRuleset(params: NftParams = DEFAULT_NFT_PARAMS): string {
  const problems = checkNftParams(params);
  if (problems.length > 0) throw new NftParamsError(problems);
  const br = quote(params.bridge);
  const wan = quote(params.wan);
  const subnet = params.subnet;
  const gw = params.bridgeAddress;
  const ports = set([...params.guestPorts].sort((a, b) => a - b));
  const s = NFT.sets;
  const inet = `${NFT.filterTable.family} ${NFT.filterTable.name}`;
  const l2 = `${NFT.l2Table.family} ${NFT.l2Table.name}`;
  const nat = `${NFT.natTable.family} ${NFT.natTable.name}`;

  const scope = [
    ...(params.bridgeMeta
      ? [`\t\tmeta ibrname ${br} jump antispoof comment "every port of the bridge"`]
      : []),
    `\t\tiifname @${s.sandboxPorts} jump antispoof`,
  ];
  const lines: string[] = [];
  const out = (...more: string[]) => lines.push(...more);

  out(
    "#!/usr/sbin/nft -f",
    "# agentlab: host firewall for the sandbox bridge.",
    "# GENERATED by src/daemon/network/nft.ts - do not edit. Re-render with scripts/net/apply.sh (see --help).",
    `# bridge=${params.bridge} subnet=${subnet} bridge-addr=${gw} wan=${params.wan}` +
      ` guest-ports=${[...params.guestPorts].sort((a, b) => a - b).join(",")}`,
    `# tailscale-if=${params.tailscaleIf === "" ? "(none)" : params.tailscaleIf}` +
      ` tailnet-v4=${params.tailnetV4} tailnet-v6=${params.tailnetV6}` +
      ` bridge-meta=${params.bridgeMeta ? "on" : "off"}`,
    "#",
    "# Loading this file again replaces every rule but keeps the members of the sets: the daemon adds a",
    "# sandbox to them when it becomes READY and removes it when it is destroyed.",
    "",
    "# Declare (no-op when present), then flush the rules only: set members survive a reload.",
    `table ${inet} {`,
    `\tset ${s.allowPrivate} { type ipv4_addr; comment "sandboxes allowed to reach private ranges"; }`,
    `\tset ${s.egressBlocked} { type ipv4_addr; comment "sandboxes with no egress beyond the host"; }`,
    `\tset ${s.egressAllowlist} { type ipv4_addr; comment "sandboxes limited to allowlist_dest"; }`,
    `\tset ${s.allowlistDest} { type ipv4_addr . ipv4_addr; flags interval; comment "sandbox . allowed destination"; }`,
    `}`,
    `table ${l2} {`,
    `\tset ${s.sandboxPorts} { type ifname; comment "sandbox ports on the bridge, policed below"; }`,
    `\tset ${s.boundPorts} { type ifname; comment "bridge ports bound to one MAC and address"; }`,
    `\tset ${s.portMacs} { type ifname . ether_addr; }`,
    `\tset ${s.tapBindings} { type ifname . ether_addr . ipv4_addr; }`,
    `\tset ${s.boundIps} { type ipv4_addr; comment "addresses of bound ports: nobody else may use them"; }`,
    `}`,
    `table ${nat} {`,
    `}`,
    `flush table ${inet}`,
    `flush table ${l2}`,
    `flush table ${nat}`,
    "",
    `table ${inet} {`,
    "\t# The host itself, reached from the bridge: only what sandboxes need.",
    "\tchain input {",
    "\t\ttype filter hook input priority -100; policy accept;",
    `\t\tiifname != ${br} accept comment "only traffic arriving from the sandbox bridge is policed here"`,
    "\t\tct state established,related accept",
    `\t\tip saddr ${subnet} ip daddr ${gw} tcp dport ${ports} accept comment "guest listeners (bootstrap, artifacts)"`,
    `\t\tip saddr ${subnet} ip daddr ${gw} meta l4proto { tcp, udp } th dport 53 accept comment "DNS"`,
    `\t\tudp sport 68 udp dport 67 accept comment "DHCP (clients may still be 0.0.0.0)"`,
    `\t\tip saddr ${subnet} icmp type echo-request accept`,
    "\t\tmeta l4proto ipv6-icmp accept",
    `\t\tcounter drop comment "everything else: Proxmox API 8006, sshd 22, ..."`,
    "\t}",
    "",
    "\t# Routed traffic: sandboxes reach the Internet, nothing private.",
    "\tchain forward {",
    "\t\ttype filter hook forward priority -100; policy accept;",
    "\t\tct state established,related accept",
    ...(params.tailscaleIf === ""
      ? []
      : [
          `\t\tiifname ${quote(params.tailscaleIf)} oifname ${br} accept comment "the tailnet may reach sandboxes"`,
        ]),
    `\t\tiifname ${br} jump from_sandbox`,
    `\t\toifname ${br} ct state new counter drop comment "nothing else opens connections to sandboxes"`,
    "\t}",
    "",
    "\tchain from_sandbox {",
    `\t\toifname ${br} accept comment "sandbox to sandbox on the bridge (seen here only with br_netfilter)"`,
    `\t\tmeta nfproto ipv4 ip saddr != ${subnet} counter drop comment "not from the subnet"`,
    `\t\tip saddr @${s.egressBlocked} counter drop comment "profile: no egress"`,
    `\t\tip daddr ${set([params.tailnetV4, ...LINK_LOCAL_V4])} counter drop comment "tailnet/CGNAT, link-local"`,
    `\t\tip6 daddr ${set([params.tailnetV6, ...BLOCKED_V6])} counter drop comment "tailnet, ULA, link-local"`,
    `\t\tip saddr @${s.allowPrivate} ip daddr ${set(PRIVATE_V4)} accept comment "profile: private ranges allowed"`,
    `\t\tip daddr ${set(PRIVATE_V4)} counter drop comment "RFC 1918: LAN, other hosts' management"`,
    `\t\tip saddr @${s.egressAllowlist} ip saddr . ip daddr @${s.allowlistDest} accept comment "profile: allowlist"`,
    `\t\tip saddr @${s.egressAllowlist} counter drop comment "profile: allowlist, destination not listed"`,
    `\t\toifname ${wan} accept comment "the Internet"`,
    `\t\tcounter drop comment "any other interface"`,
    "\t}",
    "}",
    "",
    `table ${l2} {`,
    "\t# Frames from sandbox ports, before they are bridged or delivered to the host.",
    "\tchain input {",
    "\t\ttype filter hook input priority -200; policy accept;",
    ...scope,
    "\t}",
    "",
    "\tchain forward {",
    "\t\ttype filter hook forward priority -200; policy accept;",
    ...scope,
    "\t}",
    "",
    "\tchain antispoof {",
    `\t\tiifname @${s.boundPorts} jump bound_port`,
    "\t\tjump unbound_port",
    "\t}",
    "",
    "\t# A port the daemon bound: only its own MAC and address, in Ethernet, ARP and IPv4.",
    "\tchain bound_port {",
    `\t\tether type arp iifname . ether saddr @${s.portMacs} iifname . arp saddr ether . arp saddr ip @${s.tapBindings} accept`,
    `\t\tether type arp arp saddr ip 0.0.0.0 iifname . ether saddr @${s.portMacs} iifname . arp saddr ether @${s.portMacs} accept comment "ARP probe"`,
    `\t\tether type ip iifname . ether saddr . ip saddr @${s.tapBindings} accept`,
    `\t\tether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 iifname . ether saddr @${s.portMacs} accept comment "DHCP"`,
    `\t\tcounter drop comment "spoofed, or not ARP/IPv4"`,
    "\t}",
    "",
    "\t# A port not bound (yet): any subnet address, but never the host's or a bound sandbox's.",
    "\tchain unbound_port {",
    `\t\tether type arp arp saddr ip 0.0.0.0 accept comment "ARP probe"`,
    `\t\tether type arp arp saddr ip ${gw} counter drop comment "claims the bridge address"`,
    `\t\tether type arp arp saddr ip @${s.boundIps} counter drop comment "claims a bound sandbox's address"`,
    `\t\tether type arp arp saddr ip ${subnet} accept`,
    `\t\tether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept comment "DHCP"`,
    `\t\tether type ip ip saddr ${gw} counter drop comment "claims the bridge address"`,
    `\t\tether type ip ip saddr @${s.boundIps} counter drop comment "claims a bound sandbox's address"`,
    `\t\tether type ip ip saddr ${subnet} accept`,
    `\t\tcounter drop comment "outside the subnet, or not ARP/IPv4"`,
    "\t}",
    "}",
    "",
    `table ${nat} {`,
    "\tchain postrouting {",
    "\t\ttype nat hook postrouting priority 100; policy accept;",
    `\t\toifname ${wan} ip saddr ${subnet} masquerade`,
    "\t}",
    "}",
  );
  return `${lines.join("\n")}\n`;
}
