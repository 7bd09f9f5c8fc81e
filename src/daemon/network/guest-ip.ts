import type { GuestInterface } from "../proxmox/types.js";

function ipv4ToInt(ip: string): number | undefined {
  const parts = ip.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return undefined;
    value = value * 256 + Number(part);
  }
  return value;
}

export function inCidr(ip: string, cidr: string): boolean {
  const [base, bitsText] = cidr.split("/");
  const addr = ipv4ToInt(ip);
  const net = ipv4ToInt(base ?? "");
  const bits = Number(bitsText);
  if (addr === undefined || net === undefined || !Number.isInteger(bits) || bits < 0 || bits > 32)
    return false;
  const size = 2 ** (32 - bits);
  return Math.floor(addr / size) === Math.floor(net / size);
}

const PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
const UNUSABLE = ["127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/32"];

/**
 * The sandbox's address among what the guest agent reports: IPv4 only, never loopback or link-local;
 * one inside the agent subnet first, else a private one, else the first left.
 */
export function pickGuestIp(interfaces: GuestInterface[], agentSubnet: string): string | undefined {
  const candidates = interfaces
    .filter((iface) => iface.name !== "lo")
    .flatMap((iface) => iface.ipv4)
    .filter((ip) => ipv4ToInt(ip) !== undefined && !UNUSABLE.some((cidr) => inCidr(ip, cidr)));
  return (
    candidates.find((ip) => inCidr(ip, agentSubnet)) ??
    candidates.find((ip) => PRIVATE.some((cidr) => inCidr(ip, cidr))) ??
    candidates[0]
  );
}
