/**
 * Per-sandbox membership in the sets of the agentlab ruleset (nft.ts): the anti-spoofing binding of a
 * sandbox's bridge port to its MAC and IPv4 address, and its egress policy.
 *
 * Life of a sandbox, as the daemon drives it:
 * - before `qm start`: registerPort(tap) - from its first frame the port is policed (unbound floor: any
 *   subnet address except the bridge's and bound sandboxes');
 * - READY (the address is known): bind({port, mac, ip}, policy) - the port may use only that MAC and
 *   address, and the address gets the profile's egress policy;
 * - destroyed: release({port, ip}) - every trace of the port and address is removed;
 * - daemon start / reconcile, or after the ruleset was replaced: sync(all) - the sets become exactly
 *   what the daemon knows.
 *
 * Every change is one `nft -f -` transaction (all or nothing). Removals are idempotent: an element is
 * added and then deleted in the same transaction, so removing what is already gone is not an error.
 * The script builders are pure and exported for tests; SandboxFirewall runs them through an injected
 * CommandRunner (execaRunner in the daemon, a recorder in unit tests).
 */
import { isIPv4 } from "node:net";
import { execa } from "execa";
import type { NetworkMode } from "../../config/profiles.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { HostToolPool } from "../host/tool-pool.js";
import { IFNAME, intToIpv4, ipv4ToInt, NFT, parseCidr4 } from "./nft.js";

// ---------------------------------------------------------------------------------------------------
// Running nft

export interface RunOptions {
  /** Written to the command's stdin. */
  input?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs one program with an argument array (never a shell). Resolves with the exit code; rejects only when it cannot run. */
export type CommandRunner = (
  file: string,
  args: readonly string[],
  options?: RunOptions,
) => Promise<RunResult>;

/**
 * The real runner. `prefix` is put before every command, e.g. `["ip", "netns", "exec", "ns1"]` to run
 * nft inside a network namespace (the system test does).
 */
export function execaRunner(
  options: { prefix?: readonly string[]; env?: NodeJS.ProcessEnv; pool?: HostToolPool } = {},
): CommandRunner {
  return async (file, args, runOptions = {}) => {
    const argv = [...(options.prefix ?? []), file, ...args];
    const [command, ...rest] = argv as [string, ...string[]];
    const spawn = () =>
      execa(command, rest, {
        reject: false,
        ...(runOptions.input === undefined ? { stdin: "ignore" as const } : { input: runOptions.input }),
        ...(runOptions.timeoutMs === undefined ? {} : { timeout: runOptions.timeoutMs }),
        ...(runOptions.signal ? { cancelSignal: runOptions.signal } : {}),
        ...(options.env ? { env: options.env } : {}),
      });
    const result = options.pool
      ? await options.pool.run("host", spawn, runOptions.signal, file)
      : await spawn();
    if (result.isCanceled) {
      throw new AgentlabError("CANCELLED", `${file}: cancelled`, { cause: runOptions.signal?.reason });
    }
    if (result.timedOut) {
      throw new AgentlabError(
        "INTERNAL",
        `${file} ${args.join(" ")} did not finish within ${runOptions.timeoutMs} ms`,
      );
    }
    if (result.exitCode === undefined) {
      const code = (result.cause as NodeJS.ErrnoException | undefined)?.code;
      throw new AgentlabError(
        "INTERNAL",
        code === "ENOENT" ? `${command} not found` : `cannot run ${command}: ${result.message}`,
        {
          hint:
            code === "ENOENT"
              ? "install nftables (apt-get install nftables)"
              : "agentlabd needs root (CAP_NET_ADMIN) for nft",
          cause: result.cause,
        },
      );
    }
    return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
  };
}

// ---------------------------------------------------------------------------------------------------
// Values

/** A sandbox's port on the bridge, bound to the one MAC and IPv4 address it may use. */
export interface PortBinding {
  /** The bridge port: tap<vmid>i<n>, or fwpr<vmid>p<n> when the Proxmox firewall is on for the NIC. */
  port: string;
  mac: string;
  ip: string;
}

export type Egress = "internet" | "none" | "allowlist";

/** What a sandbox may reach beyond the host. The host's guest ports, DNS and DHCP stay reachable always. */
export interface EgressPolicy {
  /** internet: anything public; none: nothing; allowlist: only `allowlist`. */
  egress: Egress;
  /** Private (RFC 1918) ranges too; link-local and the tailnet stay blocked whatever this says. */
  allowPrivate: boolean;
  /** IPv4 addresses or networks, for egress "allowlist". */
  allowlist: readonly string[];
}

export const DEFAULT_EGRESS: Readonly<EgressPolicy> = Object.freeze({
  egress: "internet",
  allowPrivate: false,
  allowlist: Object.freeze([]) as readonly string[],
});

/**
 * A profile's network.mode as a policy: nat = the Internet, nothing private (upstream's default);
 * off = no egress at all; allowlist = only the listed destinations (none listed: nothing).
 */
export function egressPolicyForMode(
  mode: NetworkMode,
  extra: { allowPrivate?: boolean; allowlist?: readonly string[] } = {},
): EgressPolicy {
  const egress: Egress = mode === "off" ? "none" : mode === "allowlist" ? "allowlist" : "internet";
  return { egress, allowPrivate: extra.allowPrivate ?? false, allowlist: extra.allowlist ?? [] };
}

/** The name of a VM NIC's port on the bridge, as Proxmox creates it. */
export function sandboxPortName(vmid: number, netIndex = 0, proxmoxFirewall = false): string {
  return proxmoxFirewall ? `fwpr${vmid}p${netIndex}` : `tap${vmid}i${netIndex}`;
}

function invalid(message: string): AgentlabError {
  return new AgentlabError("INVALID_PARAMS", message, {
    hint: "this is a bug in the caller: check the sandbox record",
  });
}

function checkPort(port: string): string {
  if (!IFNAME.test(port)) throw invalid(`bridge port "${port}" is not an interface name`);
  return port;
}

/** Lower case, colon separated; accepts `BC:24:11:AA:BB:CC` and `bc-24-11-aa-bb-cc`. */
export function normalizeMac(mac: string): string {
  const parts = mac.trim().toLowerCase().split(/[:-]/);
  if (parts.length !== 6 || !parts.every((part) => /^[0-9a-f]{2}$/.test(part))) {
    throw invalid(`"${mac}" is not a MAC address`);
  }
  const first = Number.parseInt(parts[0]!, 16);
  if (first % 2 === 1) throw invalid(`"${mac}" is a multicast MAC address`);
  return parts.join(":");
}

function checkIp(ip: string, subnet?: string): string {
  if (!isIPv4(ip)) throw invalid(`"${ip}" is not an IPv4 address`);
  if (subnet !== undefined) {
    const net = parseCidr4(subnet);
    if (net) {
      const size = 2 ** (32 - net.bits);
      if (Math.floor(ipv4ToInt(ip) / size) * size !== net.network) {
        throw invalid(`${ip} is outside the agent subnet ${subnet}`);
      }
    }
  }
  return ip;
}

/** An allowlist entry as an nft prefix: `1.2.3.4` -> `1.2.3.4/32`; host bits are cleared. */
export function normalizeDestination(entry: string): string {
  const text = entry.trim();
  const cidr = text.includes("/")
    ? parseCidr4(text)
    : isIPv4(text)
      ? { network: ipv4ToInt(text), bits: 32 }
      : undefined;
  if (!cidr) throw invalid(`allowlist entry "${entry}" is not an IPv4 address or network`);
  const size = 2 ** (32 - cidr.bits);
  return `${intToIpv4(Math.floor(cidr.network / size) * size)}/${cidr.bits}`;
}

export function normalizeBinding(binding: PortBinding, subnet?: string): PortBinding {
  return { port: checkPort(binding.port), mac: normalizeMac(binding.mac), ip: checkIp(binding.ip, subnet) };
}

export function normalizePolicy(policy: EgressPolicy): EgressPolicy {
  if (!["internet", "none", "allowlist"].includes(policy.egress)) {
    throw invalid(`egress "${policy.egress}" is not one of internet, none, allowlist`);
  }
  return {
    egress: policy.egress,
    allowPrivate: policy.allowPrivate,
    allowlist: [...new Set(policy.allowlist.map(normalizeDestination))].sort(),
  };
}

// ---------------------------------------------------------------------------------------------------
// What is in the sets

export interface FirewallState {
  sandboxPorts: string[];
  boundPorts: string[];
  portMacs: { port: string; mac: string }[];
  bindings: PortBinding[];
  boundIps: string[];
  allowPrivate: string[];
  egressBlocked: string[];
  egressAllowlist: string[];
  allowlistDest: { ip: string; dest: string }[];
}

export function emptyState(): FirewallState {
  return {
    sandboxPorts: [],
    boundPorts: [],
    portMacs: [],
    bindings: [],
    boundIps: [],
    allowPrivate: [],
    egressBlocked: [],
    egressAllowlist: [],
    allowlistDest: [],
  };
}

/** One element of `nft -j` output as plain values: strings, `a/len` for prefixes, arrays for concatenations. */
function elementValue(raw: unknown): unknown {
  if (typeof raw === "string" || typeof raw === "number") return String(raw);
  if (raw && typeof raw === "object") {
    const obj = raw as Record<string, unknown>;
    if ("elem" in obj) return elementValue((obj["elem"] as Record<string, unknown>)["val"]);
    if ("concat" in obj && Array.isArray(obj["concat"])) return obj["concat"].map(elementValue);
    if ("prefix" in obj) {
      const prefix = obj["prefix"] as { addr: string; len: number };
      return `${prefix.addr}/${prefix.len}`;
    }
    if ("range" in obj && Array.isArray(obj["range"])) {
      // Only prefixes are ever added; a range here was written by someone else. Keep it recognisable.
      return obj["range"].map(elementValue).join("-");
    }
  }
  return String(raw);
}

function setElements(json: string, family: string, table: string): Map<string, unknown[]> {
  const sets = new Map<string, unknown[]>();
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw new AgentlabError("INTERNAL", `nft printed something that is not JSON: ${json.slice(0, 200)}`);
  }
  const items = (parsed as { nftables?: unknown[] }).nftables ?? [];
  for (const item of items) {
    const entry = (item as { set?: { family: string; table: string; name: string; elem?: unknown[] } }).set;
    if (!entry || entry.family !== family || entry.table !== table) continue;
    sets.set(entry.name, (entry.elem ?? []).map(elementValue));
  }
  return sets;
}

function withoutPrefix32(value: string): string {
  return value.endsWith("/32") ? value.slice(0, -3) : value;
}

/** The set members, from `nft -j list table inet agentlab` and `nft -j list table bridge agentlab_l2`. */
export function parseFirewallState(inetJson: string, l2Json: string): FirewallState {
  const s = NFT.sets;
  const inet = setElements(inetJson, NFT.filterTable.family, NFT.filterTable.name);
  const l2 = setElements(l2Json, NFT.l2Table.family, NFT.l2Table.name);
  const strings = (values: unknown[] | undefined) => (values ?? []).map((value) => String(value));
  const tuples = (values: unknown[] | undefined) =>
    (values ?? [])
      .filter((value): value is string[] => Array.isArray(value))
      .map((value) => value.map(String));
  return {
    sandboxPorts: strings(l2.get(s.sandboxPorts)),
    boundPorts: strings(l2.get(s.boundPorts)),
    portMacs: tuples(l2.get(s.portMacs)).map(([port, mac]) => ({ port: port!, mac: mac! })),
    bindings: tuples(l2.get(s.tapBindings)).map(([port, mac, ip]) => ({ port: port!, mac: mac!, ip: ip! })),
    boundIps: strings(l2.get(s.boundIps)),
    allowPrivate: strings(inet.get(s.allowPrivate)),
    egressBlocked: strings(inet.get(s.egressBlocked)),
    egressAllowlist: strings(inet.get(s.egressAllowlist)),
    allowlistDest: tuples(inet.get(s.allowlistDest)).map(([ip, dest]) => ({
      ip: withoutPrefix32(ip!),
      dest: dest!.includes("/") ? dest! : `${dest}/32`,
    })),
  };
}

// ---------------------------------------------------------------------------------------------------
// Scripts for `nft -f -`

const INET = `${NFT.filterTable.family} ${NFT.filterTable.name}`;
const L2 = `${NFT.l2Table.family} ${NFT.l2Table.name}`;

const q = (port: string) => `"${port}"`;
const portMac = (b: { port: string; mac: string }) => `${q(b.port)} . ${b.mac}`;
const triple = (b: PortBinding) => `${q(b.port)} . ${b.mac} . ${b.ip}`;
const pair = (p: { ip: string; dest: string }) => `${p.ip} . ${p.dest}`;

class Script {
  readonly lines: string[] = [];
  add(table: string, set: string, elements: readonly string[]): this {
    const unique = [...new Set(elements)];
    if (unique.length > 0) this.lines.push(`add element ${table} ${set} { ${unique.join(", ")} }`);
    return this;
  }
  /** Idempotent removal: add (a no-op when present) then delete, in the same transaction. */
  remove(table: string, set: string, elements: readonly string[]): this {
    const unique = [...new Set(elements)];
    if (unique.length > 0) {
      this.lines.push(`add element ${table} ${set} { ${unique.join(", ")} }`);
      this.lines.push(`delete element ${table} ${set} { ${unique.join(", ")} }`);
    }
    return this;
  }
  flush(table: string, set: string): this {
    this.lines.push(`flush set ${table} ${set}`);
    return this;
  }
  text(): string {
    return this.lines.length === 0 ? "" : `${this.lines.join("\n")}\n`;
  }
}

/** Police a sandbox's port from its first frame: run before the VM starts. */
export function registerPortScript(port: string): string {
  return new Script().add(L2, NFT.sets.sandboxPorts, [q(checkPort(port))]).text();
}

function addPolicy(script: Script, ip: string, policy: EgressPolicy): void {
  const s = NFT.sets;
  const member = (set: string, isMember: boolean) =>
    isMember ? script.add(INET, set, [ip]) : script.remove(INET, set, [ip]);
  member(s.allowPrivate, policy.allowPrivate);
  member(s.egressBlocked, policy.egress === "none");
  member(s.egressAllowlist, policy.egress === "allowlist");
  if (policy.egress === "allowlist") {
    script.add(
      INET,
      s.allowlistDest,
      policy.allowlist.map((dest) => pair({ ip, dest })),
    );
  }
}

/**
 * Bind a port to its MAC and address and give the address its policy, removing what `current` holds
 * for the same port or address that differs (a stale binding of a destroyed VM whose VMID or address
 * came back).
 */
export function bindScript(
  binding: PortBinding,
  policy: EgressPolicy,
  current: FirewallState = emptyState(),
  subnet?: string,
): string {
  const b = normalizeBinding(binding, subnet);
  const p = normalizePolicy(policy);
  const s = NFT.sets;
  const script = new Script();

  const staleBindings = current.bindings.filter(
    (old) => (old.port === b.port || old.ip === b.ip) && triple(old) !== triple(b),
  );
  // A port whose binding is stale because another port now has its address is unbound altogether.
  const otherPorts = [...new Set(staleBindings.map((old) => old.port).filter((port) => port !== b.port))];
  const staleMacs = current.portMacs.filter(
    (old) => (old.port === b.port && old.mac !== b.mac) || otherPorts.includes(old.port),
  );
  const staleIps = staleBindings.map((old) => old.ip).filter((ip) => ip !== b.ip);
  const stalePairs = current.allowlistDest.filter(
    (old) =>
      staleIps.includes(old.ip) ||
      (old.ip === b.ip && !(p.egress === "allowlist" && p.allowlist.includes(old.dest))),
  );
  script.remove(L2, s.tapBindings, staleBindings.map(triple));
  script.remove(L2, s.portMacs, staleMacs.map(portMac));
  script.remove(L2, s.boundPorts, otherPorts.map(q));
  script.remove(L2, s.boundIps, staleIps);
  // The address a stale binding had loses its policy with it.
  for (const set of [s.allowPrivate, s.egressBlocked, s.egressAllowlist]) script.remove(INET, set, staleIps);
  script.remove(INET, s.allowlistDest, stalePairs.map(pair));

  script.add(L2, s.sandboxPorts, [q(b.port)]);
  script.add(L2, s.portMacs, [portMac(b)]);
  script.add(L2, s.tapBindings, [triple(b)]);
  script.add(L2, s.boundIps, [b.ip]);
  script.add(L2, s.boundPorts, [q(b.port)]);
  addPolicy(script, b.ip, p);
  return script.text();
}

/**
 * Forget a sandbox: its port (and every binding on it) and its address (in every set). Give what the
 * daemon knows; `current` adds the bindings and allowlist pairs found in the kernel.
 */
export function releaseScript(
  target: { port?: string; ip?: string; mac?: string },
  current: FirewallState = emptyState(),
): string {
  const s = NFT.sets;
  const port = target.port === undefined ? undefined : checkPort(target.port);
  const ip = target.ip === undefined ? undefined : checkIp(target.ip);
  const mac = target.mac === undefined ? undefined : normalizeMac(target.mac);
  if (port === undefined && ip === undefined) throw invalid("release needs a port or an address");
  const bindings = current.bindings.filter((old) => old.port === port || old.ip === ip);
  if (port !== undefined && mac !== undefined && ip !== undefined) bindings.push({ port, mac, ip });
  const ports = [...new Set([...(port === undefined ? [] : [port]), ...bindings.map((old) => old.port)])];
  const ips = [...new Set([...(ip === undefined ? [] : [ip]), ...bindings.map((old) => old.ip)])];
  const macs = [
    ...current.portMacs.filter((old) => ports.includes(old.port)),
    ...(port !== undefined && mac !== undefined ? [{ port, mac }] : []),
  ];
  const pairs = current.allowlistDest.filter((old) => ips.includes(old.ip));

  const script = new Script();
  script.remove(L2, s.tapBindings, bindings.map(triple));
  script.remove(L2, s.portMacs, macs.map(portMac));
  script.remove(L2, s.boundPorts, ports.map(q));
  script.remove(L2, s.sandboxPorts, ports.map(q));
  script.remove(L2, s.boundIps, ips);
  script.remove(INET, s.allowPrivate, ips);
  script.remove(INET, s.egressBlocked, ips);
  script.remove(INET, s.egressAllowlist, ips);
  script.remove(INET, s.allowlistDest, pairs.map(pair));
  return script.text();
}

/** A sandbox as the daemon knows it: its port, and once READY its binding and policy. */
export interface SandboxNetEntry {
  port: string;
  binding?: PortBinding;
  policy?: EgressPolicy;
}

/** Make the sets exactly `entries`: flush every set, then add each sandbox. */
export function syncScript(entries: readonly SandboxNetEntry[], subnet?: string): string {
  const s = NFT.sets;
  const script = new Script();
  for (const set of [s.sandboxPorts, s.boundPorts, s.portMacs, s.tapBindings, s.boundIps])
    script.flush(L2, set);
  for (const set of [s.allowPrivate, s.egressBlocked, s.egressAllowlist, s.allowlistDest])
    script.flush(INET, set);
  const seenIps = new Map<string, string>();
  for (const entry of entries) {
    script.add(L2, s.sandboxPorts, [q(checkPort(entry.port))]);
    if (!entry.binding) continue;
    const b = normalizeBinding(entry.binding, subnet);
    if (b.port !== entry.port) throw invalid(`binding for port ${b.port} listed under port ${entry.port}`);
    const owner = seenIps.get(b.ip);
    if (owner !== undefined) throw invalid(`${b.ip} is bound to both ${owner} and ${b.port}`);
    seenIps.set(b.ip, b.port);
    script.add(L2, s.portMacs, [portMac(b)]);
    script.add(L2, s.tapBindings, [triple(b)]);
    script.add(L2, s.boundIps, [b.ip]);
    script.add(L2, s.boundPorts, [q(b.port)]);
    const p = normalizePolicy(entry.policy ?? DEFAULT_EGRESS);
    if (p.allowPrivate) script.add(INET, s.allowPrivate, [b.ip]);
    if (p.egress === "none") script.add(INET, s.egressBlocked, [b.ip]);
    if (p.egress === "allowlist") {
      script.add(INET, s.egressAllowlist, [b.ip]);
      script.add(
        INET,
        s.allowlistDest,
        p.allowlist.map((dest) => pair({ ip: b.ip, dest })),
      );
    }
  }
  return script.text();
}

// ---------------------------------------------------------------------------------------------------
// The runner-backed service

export interface SandboxFirewallOptions {
  run: CommandRunner;
  /** The nft executable (default "nft", from PATH). */
  nft?: string;
  /** Per nft call (default 10 s). */
  timeoutMs?: number;
  /** When set, bound addresses must lie inside it. */
  subnet?: string;
}

const NOT_LOADED_HINT =
  "load the agentlab ruleset first: sudo scripts/net/apply.sh --apply (check with nft list table inet agentlab)";

/** Applies the scripts above with nft, one transaction each, one at a time. */
export class SandboxFirewall {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: SandboxFirewallOptions) {}

  /** The set members now in the kernel. */
  state(): Promise<FirewallState> {
    return this.serial(() => this.readState());
  }

  registerPort(port: string): Promise<void> {
    return this.serial(() => this.apply("register port", registerPortScript(port)));
  }

  bind(binding: PortBinding, policy: EgressPolicy = DEFAULT_EGRESS): Promise<void> {
    return this.serial(async () => {
      const current = await this.readState();
      await this.apply("bind", bindScript(binding, policy, current, this.options.subnet));
    });
  }

  release(target: { port?: string; ip?: string; mac?: string }): Promise<void> {
    return this.serial(async () => {
      const current = await this.readState();
      await this.apply("release", releaseScript(target, current));
    });
  }

  sync(entries: readonly SandboxNetEntry[]): Promise<void> {
    return this.serial(() => this.apply("sync", syncScript(entries, this.options.subnet)));
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async nft(args: string[], input?: string): Promise<RunResult> {
    return this.options.run(this.options.nft ?? "nft", args, {
      timeoutMs: this.options.timeoutMs ?? 10_000,
      ...(input === undefined ? {} : { input }),
    });
  }

  private async readState(): Promise<FirewallState> {
    const results = await Promise.all([
      this.nft(["-j", "list", "table", NFT.filterTable.family, NFT.filterTable.name]),
      this.nft(["-j", "list", "table", NFT.l2Table.family, NFT.l2Table.name]),
    ]);
    for (const result of results) {
      if (result.exitCode !== 0) throw this.failure("list", result);
    }
    return parseFirewallState(results[0].stdout, results[1].stdout);
  }

  private async apply(what: string, script: string): Promise<void> {
    if (script === "") return;
    const result = await this.nft(["-f", "-"], script);
    if (result.exitCode !== 0) throw this.failure(what, result, script);
  }

  private failure(what: string, result: RunResult, script?: string): AgentlabError {
    const stderr = result.stderr.trim();
    const missing = /No such file or directory|does not exist/i.test(stderr);
    const denied = /Operation not permitted|Permission denied/i.test(stderr);
    return new AgentlabError(
      "INTERNAL",
      missing
        ? `nftables ${what} failed: the agentlab ruleset is not loaded (${stderr.split("\n")[0] ?? ""})`
        : `nftables ${what} failed (exit ${result.exitCode}): ${stderr.split("\n")[0] ?? ""}`.trim(),
      {
        hint: missing
          ? NOT_LOADED_HINT
          : denied
            ? "agentlabd needs root (CAP_NET_ADMIN) to change nftables sets"
            : "see the details for nft's message and the script it rejected",
        details: { stderr, ...(script === undefined ? {} : { script }) },
      },
    );
  }
}
