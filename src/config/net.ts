/**
 * Address syntax the config uses: listen addresses (host:port, Go's net.SplitHostPort shape), CIDRs,
 * loopback tests and the agent subnet derived from the bootstrap address. Pure functions.
 */
import { isIP, isIPv4, isIPv6 } from "node:net";

export interface HostPort {
  /** Without brackets for IPv6; "" when the address binds every interface (":8844"). */
  host: string;
  port: number;
}

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** "10.77.0.1:8844", "[fd00::1]:8844", "localhost:9090" or ":8844"; undefined if it is none of these. */
export function parseHostPort(text: string): HostPort | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  if (match[1] !== undefined) return isIPv6(match[1]) ? { host: match[1], port } : undefined;
  const host = match[2] ?? "";
  if (host !== "" && !isIPv4(host) && !HOSTNAME.test(host)) return undefined;
  return { host, port };
}

/** Binds every interface, so the address says nothing about where guests are. */
export function isWildcardHost(host: string): boolean {
  return (
    host === "" || host === "0.0.0.0" || (isIPv6(host) && expandIPv6(host).every((group) => group === 0))
  );
}

export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === "localhost") return true;
  if (isIPv4(host)) return host.startsWith("127.");
  if (isIPv6(host)) {
    const groups = expandIPv6(host);
    return groups.slice(0, 7).every((group) => group === 0) && groups[7] === 1;
  }
  return false;
}

/** "10.77.0.0/16" or "fd00::/64"; the address part may have host bits set, as Go's ParseCIDR allows. */
export function isCidr(text: string): boolean {
  const match = /^([^/\s]+)\/(\d{1,3})$/.exec(text.trim());
  if (!match) return false;
  const version = isIP(match[1]!);
  const prefix = Number(match[2]);
  return (version === 4 && prefix <= 32) || (version === 6 && prefix <= 128);
}

/**
 * The subnet guests live in when the config does not say: the bootstrap address's /16 for IPv4 and /64
 * for IPv6, as upstream derives it. Undefined for a host name, which has no prefix to take.
 */
export function deriveAgentSubnet(host: string): string | undefined {
  if (isIPv4(host)) {
    const [a, b] = host.split(".");
    return `${a}.${b}.0.0/16`;
  }
  if (isIPv6(host)) {
    const groups = expandIPv6(host).slice(0, 4);
    // Trailing zero groups fold into the "::", as in the canonical form (fd00:1:0:0:: -> fd00:1::).
    while (groups.length > 0 && groups.at(-1) === 0) groups.pop();
    return `${groups.map((group) => group.toString(16)).join(":")}::/64`;
  }
  return undefined;
}

/** The eight 16-bit groups of a valid IPv6 address, with "::" and a dotted IPv4 tail expanded. */
function expandIPv6(address: string): number[] {
  let text = address.split("%")[0]!.toLowerCase();
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const missing = 8 - headGroups.length - tailGroups.length;
  return [...headGroups, ...Array.from({ length: missing }, () => "0"), ...tailGroups].map((group) =>
    Number.parseInt(group, 16),
  );
}
