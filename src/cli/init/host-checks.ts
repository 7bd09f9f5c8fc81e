/**
 * The host half of `agentlab init`: checks that need no daemon and run in the CLI process on the Proxmox
 * host. Everything they touch goes through HostEnv, so tests point them at a temp root and fake
 * commands.
 */
import { existsSync, readFileSync, statfsSync } from "node:fs";
import { isIPv4 } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { checkNftParams, DEFAULT_NFT_PARAMS } from "../../config/nft-params.js";
import type { DaemonChecks, InitCheck } from "../../protocol/init.js";
import { type RunResult, runCommand } from "./spawn.js";

export type { RunResult } from "./spawn.js";

export type HostSettings = DaemonChecks["host"];

export type CommandRunner = (command: string, args: readonly string[]) => Promise<RunResult>;

export interface HostEnv {
  /** Prefix of every host file read ("/" on a real host; AGENTLAB_ROOT in tests). */
  root: string;
  /** The `ip` command (AGENTLAB_IP, default ip). */
  ip: string;
  /** The `nft` command (AGENTLAB_NFT, default nft; the same variable apply.sh reads). */
  nft: string;
  run: CommandRunner;
  statfs(dir: string): { bsize: number; blocks: number; bavail: number };
  /** Where scripts/net lives: the repository or /opt/agentlab. */
  scriptsDir: string;
  /** The directory the fix commands are shown relative to. */
  cwd: string;
}

export const execRunner: CommandRunner = (command, args) => runCommand(command, args);

/** scripts/net of this installation: dist/src/cli/init/ is four levels below the repository root. */
export const SCRIPTS_DIR = fileURLToPath(new URL("../../../../scripts/net", import.meta.url));

/** Search PATH and the sbin directories a non-root PATH often lacks. */
function resolveTool(name: string): string {
  if (name.includes("/")) return name;
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    if (dir !== "" && existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  return name;
}

export function hostEnvFromProcess(env: NodeJS.ProcessEnv = process.env): HostEnv {
  const root = env.AGENTLAB_ROOT?.trim() ? env.AGENTLAB_ROOT.trim() : "/";
  return {
    root,
    ip: resolveTool(env.AGENTLAB_IP?.trim() || "ip"),
    nft: resolveTool(env.AGENTLAB_NFT?.trim() || "nft"),
    run: execRunner,
    statfs: (dir) => statfsSync(dir),
    scriptsDir: SCRIPTS_DIR,
    cwd: process.cwd(),
  };
}

/** The script's path as a user types it: relative to the current directory when it is below it. */
export function scriptPath(host: HostEnv, script: string): string {
  const full = path.join(host.scriptsDir, script);
  const relative = path.relative(host.cwd, full);
  return relative.startsWith("..") || path.isAbsolute(relative) ? full : relative;
}

/** Arguments of setup_vmbr1.sh for these settings (none for the defaults). */
export function setupArgs(settings: HostSettings): string[] {
  const args: string[] = [];
  if (settings.bridge !== "vmbr1") args.push("--bridge", settings.bridge);
  if (settings.bridge_address !== "10.77.0.1/16") args.push("--address", settings.bridge_address);
  return args;
}

/** Arguments of apply.sh for these settings (none for the defaults). */
export function nftArgs(settings: HostSettings): string[] {
  const args: string[] = [];
  const address = settings.bridge_address.split("/")[0] ?? "";
  if (settings.bridge !== "vmbr1") args.push("--bridge", settings.bridge);
  if (settings.agent_subnet !== "10.77.0.0/16") args.push("--subnet", settings.agent_subnet);
  if (address !== "10.77.0.1") args.push("--bridge-addr", address);
  const ports = settings.guest_ports.join(",");
  if (ports !== "8844,8846") args.push("--guest-ports", ports);
  return args;
}

/**
 * Why the network scripts would refuse these settings (empty when they accept them). A development
 * config (`bootstrap_listen: 127.0.0.1:0`, `agent_subnet: 0.0.0.0/1`) derives a loopback bridge address
 * and port 0: proposing `--address 127.0.0.1/1 --guest-ports 0,8846` would send the operator to a command
 * the scripts reject. The rules are the scripts' own: setup_vmbr1.sh's valid_address, apply.sh's renderer.
 */
export function unscriptableSettings(settings: HostSettings): string[] {
  const problems: string[] = [];
  const [address = "", prefix = ""] = settings.bridge_address.split("/");
  const bits = Number(prefix);
  if (!isIPv4(address) || !/^\d+$/.test(prefix) || bits < 8 || bits > 30) {
    problems.push(
      `bridge address ${settings.bridge_address} is not an IPv4 address with a prefix length 8-30`,
    );
  } else if (address.startsWith("127.")) {
    problems.push(`bridge address ${address} is a loopback address`);
  }
  const params = {
    ...DEFAULT_NFT_PARAMS,
    bridge: settings.bridge,
    subnet: settings.agent_subnet,
    bridgeAddress: address,
    guestPorts: settings.guest_ports,
  };
  problems.push(...checkNftParams(params));
  return problems;
}

/** The fix when the config itself cannot describe a sandbox network: change it, not the host. */
function configFix(problems: readonly string[]): string {
  return `config.yaml does not describe a sandbox bridge the scripts can build (${problems.join("; ")}): set bootstrap_listen: 10.77.0.1:8844 and agent_subnet: 10.77.0.0/16 (or your bridge's address and subnet), restart agentlabd, then run agentlab init again`;
}

export function setupCommand(host: HostEnv, settings: HostSettings): string {
  const problems = unscriptableSettings(settings);
  if (problems.length > 0) return configFix(problems);
  return ["sudo", scriptPath(host, "setup_vmbr1.sh"), "--apply", ...setupArgs(settings)].join(" ");
}

export function nftCommand(host: HostEnv, settings: HostSettings): string {
  const problems = unscriptableSettings(settings);
  if (problems.length > 0) return configFix(problems);
  return ["sudo", scriptPath(host, "apply.sh"), "--apply", ...nftArgs(settings)].join(" ");
}

interface IpAddr {
  ifname?: string;
  operstate?: string;
  addr_info?: { family?: string; local?: string; prefixlen?: number }[];
}

export async function bridgeCheck(host: HostEnv, settings: HostSettings): Promise<InitCheck> {
  const name = `bridge_${settings.bridge}`;
  const fix = setupCommand(host, settings);
  const result = await host.run(host.ip, ["-j", "addr", "show", settings.bridge]);
  if (result.spawnError) {
    return {
      name,
      status: "fail",
      detail: `cannot run ${host.ip}: ${result.spawnError}`,
      fix: "apt-get install iproute2",
    };
  }
  if (result.code !== 0) {
    const why = result.stderr.trim().split("\n")[0] || `ip exited with ${result.code}`;
    return { name, status: "fail", detail: `bridge ${settings.bridge} is missing (${why})`, fix };
  }
  let links: IpAddr[];
  try {
    links = JSON.parse(result.stdout) as IpAddr[];
  } catch {
    return {
      name,
      status: "fail",
      detail: `cannot parse the output of ip -j addr show ${settings.bridge}`,
      fix,
    };
  }
  const addresses = links
    .flatMap((link) => link.addr_info ?? [])
    .filter((a) => a.family === "inet" && a.local)
    .map((a) => `${a.local}/${a.prefixlen}`);
  if (links.length === 0) {
    return { name, status: "fail", detail: `bridge ${settings.bridge} is missing`, fix };
  }
  if (addresses.includes(settings.bridge_address)) {
    return { name, status: "ok", detail: `${settings.bridge} has ${settings.bridge_address}` };
  }
  return {
    name,
    status: "fail",
    detail: `${settings.bridge} has ${addresses.length > 0 ? addresses.join(", ") : "no IPv4 address"}, expected ${settings.bridge_address}`,
    fix,
  };
}

export function ipForwardCheck(host: HostEnv, settings: HostSettings): InitCheck {
  const file = path.join(host.root, "proc/sys/net/ipv4/ip_forward");
  let value: string;
  try {
    value = readFileSync(file, "utf8").trim();
  } catch (error) {
    return {
      name: "ip_forward",
      status: "fail",
      detail: `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      fix: setupCommand(host, settings),
    };
  }
  if (value === "1") return { name: "ip_forward", status: "ok", detail: "net.ipv4.ip_forward = 1" };
  return {
    name: "ip_forward",
    status: "fail",
    detail: `net.ipv4.ip_forward = ${value} (sandboxes cannot reach the outside)`,
    fix: setupCommand(host, settings),
  };
}

/** The tables the ruleset (src/daemon/network/nft.ts) creates. */
export const NFT_TABLES = ["inet agentlab", "ip agentlab_nat", "bridge agentlab_l2"] as const;

export async function nftablesCheck(host: HostEnv, settings: HostSettings): Promise<InitCheck> {
  const fix = nftCommand(host, settings);
  const result = await host.run(host.nft, ["list", "tables"]);
  if (result.spawnError) {
    return {
      name: "nftables",
      status: "fail",
      detail: `cannot run ${host.nft}: ${result.spawnError}`,
      fix: "apt-get install nftables",
    };
  }
  if (result.code !== 0) {
    const why = result.stderr.trim().split("\n")[0] || `nft exited with ${result.code}`;
    if (/permission denied|not permitted/i.test(why)) {
      return {
        name: "nftables",
        status: "warn",
        detail: `not checked: nft list tables needs root (${why})`,
        fix: "sudo agentlab init",
      };
    }
    return { name: "nftables", status: "fail", detail: `nft list tables failed: ${why}`, fix };
  }
  const present = new Set(
    result.stdout
      .split("\n")
      .map((line) => /^table\s+(\S+)\s+(\S+)/.exec(line.trim()))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => `${m[1]} ${m[2]}`),
  );
  const missing = NFT_TABLES.filter((table) => !present.has(table));
  if (missing.length === 0) {
    return { name: "nftables", status: "ok", detail: `tables ${NFT_TABLES.join(", ")} loaded` };
  }
  return { name: "nftables", status: "fail", detail: `missing table ${missing.join(", ")}`, fix };
}

const GIB = 1024 ** 3;

/** The nearest existing directory at or above dir (a data_dir not created yet is on its parent's filesystem). */
function existingAncestor(dir: string): string {
  let current = path.resolve(dir);
  while (!existsSync(current) && path.dirname(current) !== current) current = path.dirname(current);
  return current;
}

export function diskSpaceCheck(host: HostEnv, settings: HostSettings): InitCheck {
  const dir = existingAncestor(settings.data_dir);
  let stats: { bsize: number; blocks: number; bavail: number };
  try {
    stats = host.statfs(dir);
  } catch (error) {
    return {
      name: "disk_space",
      status: "warn",
      detail: `cannot stat the filesystem of ${dir}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
    };
  }
  const free = stats.bavail * stats.bsize;
  const total = stats.blocks * stats.bsize;
  const percent = total > 0 ? (100 * free) / total : 0;
  const detail = `${(free / GIB).toFixed(1)} GiB free (${percent.toFixed(0)}%) on the filesystem of ${settings.data_dir}`;
  if (percent < 10 || free < 5 * GIB) {
    return {
      name: "disk_space",
      status: "warn",
      detail: `${detail}, under 10% or 5 GiB`,
      fix: `agentlab sandbox prune && du -sh ${settings.data_dir}/*`,
    };
  }
  return { name: "disk_space", status: "ok", detail };
}

/** bridge, ip_forward, nftables and disk space, in that order (the socket check needs the daemon call). */
export async function hostChecks(host: HostEnv, settings: HostSettings): Promise<InitCheck[]> {
  return [
    await bridgeCheck(host, settings),
    ipForwardCheck(host, settings),
    await nftablesCheck(host, settings),
    diskSpaceCheck(host, settings),
  ];
}
