/**
 * A temporary hole in the host firewall for the smoke test's repo server. The agentlab ruleset's input
 * chain drops every new connection from the sandbox bridge except the guest listener ports, so a
 * sandbox could not clone from a server on another port. While the job runs, one rule at the top of
 * `inet agentlab input` accepts that TCP port from the agent subnet on the bridge; it is deleted by its
 * handle afterwards. Its comment carries the CLI's pid, so a rule left by a smoke test that was killed
 * is recognised and removed by the next one.
 */
import type { RunResult } from "./host-checks.js";

/** Runs nft with these arguments (the CLI's nft, or one inside a network namespace in tests). */
export type NftCall = (args: readonly string[]) => Promise<RunResult>;

export const HOLE_COMMENT = "agentlab-smoke";
const TABLE = ["inet", "agentlab"] as const;
const CHAIN = "input";

export interface HoleSpec {
  bridge: string;
  subnet: string;
  /** The address the server listens on; matched when it is IPv4. */
  host: string;
  port: number;
  pid: number;
}

export type Hole =
  | { opened: true; handle: number; rule: string; spec: HoleSpec }
  | { opened: false; reason: string };

/** Thrown when nft answers but the hole cannot be made; the message says why and the hint what to do. */
export class HoleError extends Error {
  constructor(
    message: string,
    readonly hint: string,
  ) {
    super(message);
    this.name = "HoleError";
  }
}

export function holeComment(pid: number): string {
  return `${HOLE_COMMENT} pid ${pid}`;
}

/** The rule's words after `insert rule inet agentlab input` (nft joins its arguments and parses them). */
export function holeRuleArgs(spec: HoleSpec): string[] {
  const words = ["iifname", `"${spec.bridge}"`, "ip", "saddr", spec.subnet];
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(spec.host)) words.push("ip", "daddr", spec.host);
  words.push("tcp", "dport", String(spec.port), "accept", "comment", `"${holeComment(spec.pid)}"`);
  return words;
}

export interface ChainRule {
  handle: number;
  text: string;
  /** The pid in an agentlab-smoke comment, when the rule is one of ours. */
  smokePid?: number;
}

/** The rules of `nft -a list chain ...` output, each with its handle. */
export function parseChainRules(listing: string): ChainRule[] {
  const rules: ChainRule[] = [];
  for (const line of listing.split("\n")) {
    const match = /^\s*(.*\S)\s+# handle (\d+)\s*$/.exec(line);
    if (!match || /^(table|chain|type)\b/.test(match[1]!)) continue;
    const text = match[1]!;
    const smoke = new RegExp(`comment "${HOLE_COMMENT} pid (\\d+)"`).exec(text);
    rules.push({ handle: Number(match[2]), text, ...(smoke ? { smokePid: Number(smoke[1]) } : {}) });
  }
  return rules;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function firstLine(result: RunResult): string {
  return (result.stderr.trim() || result.stdout.trim()).split("\n")[0] ?? `exit ${result.code}`;
}

const NOT_LOADED = /No such file or directory|does not exist/i;
const NOT_PERMITTED = /Operation not permitted|Permission denied/i;

function rootError(what: string, result: RunResult): HoleError {
  return new HoleError(
    `${what} needs root: nft says ${firstLine(result)}`,
    "run the smoke test as root (sudo agentlab init --smoke-test ...): it opens a temporary firewall rule for the repo server",
  );
}

/**
 * `daemonSaysLoaded` is agentlabd's answer (agentlab status: it reads the ruleset as root). A member of
 * the agentlab group cannot read nftables, but needs no root when there is no ruleset to open.
 */
async function listChain(
  nft: NftCall,
  daemonSaysLoaded?: boolean,
): Promise<{ rules: ChainRule[] } | { absent: string }> {
  const result = await nft(["-a", "list", "chain", ...TABLE, CHAIN]);
  if (result.spawnError === "ENOENT") return { absent: "nft is not installed: no agentlab firewall to open" };
  if (result.spawnError)
    throw new HoleError(`cannot run nft: ${result.spawnError}`, "apt-get install nftables");
  if (result.code === 0) return { rules: parseChainRules(result.stdout) };
  if (NOT_PERMITTED.test(result.stderr)) {
    if (daemonSaysLoaded === false) {
      return {
        absent: "agentlabd reports the agentlab nftables ruleset is not loaded: no firewall hole needed",
      };
    }
    throw rootError("reading the agentlab firewall", result);
  }
  if (NOT_LOADED.test(result.stderr)) {
    return { absent: "nftables table inet agentlab (input chain) is not loaded: no firewall hole needed" };
  }
  throw new HoleError(
    `nft -a list chain inet agentlab input failed: ${firstLine(result)}`,
    "nft list table inet agentlab; reload the ruleset with sudo scripts/net/apply.sh --apply",
  );
}

/** Rules left by smoke tests whose process is gone: removed, and their handles returned. */
async function removeStale(nft: NftCall, rules: readonly ChainRule[]): Promise<number[]> {
  const removed: number[] = [];
  for (const rule of rules) {
    if (rule.smokePid === undefined || alive(rule.smokePid)) continue;
    const result = await nft(["delete", "rule", ...TABLE, CHAIN, "handle", String(rule.handle)]);
    if (result.code === 0) removed.push(rule.handle);
  }
  return removed;
}

/**
 * Open the hole when the agentlab ruleset is loaded; say why not otherwise. Needs root (nft's error says
 * so and the HoleError explains) unless agentlabd says there is no ruleset.
 */
export async function openHole(
  nft: NftCall,
  spec: HoleSpec,
  daemonSaysLoaded?: boolean,
): Promise<Hole & { staleRemoved?: number[] }> {
  const listing = await listChain(nft, daemonSaysLoaded);
  if ("absent" in listing) return { opened: false, reason: listing.absent };
  const staleRemoved = await removeStale(nft, listing.rules);
  const args = ["--echo", "--handle", "insert", "rule", ...TABLE, CHAIN, ...holeRuleArgs(spec)];
  const result = await nft(args);
  if (result.code !== 0) {
    if (NOT_PERMITTED.test(result.stderr))
      throw rootError("opening the firewall for the repo server", result);
    throw new HoleError(
      `nft insert rule inet agentlab input failed: ${firstLine(result)}`,
      `the rule was: ${holeRuleArgs(spec).join(" ")}`,
    );
  }
  const handle = /# handle (\d+)/.exec(result.stdout);
  if (!handle) {
    // Without the handle the rule could not be deleted by it: find it by its comment instead.
    const again = await listChain(nft);
    const ours = "rules" in again ? again.rules.find((r) => r.smokePid === spec.pid) : undefined;
    if (!ours)
      throw new HoleError(
        "nft inserted the rule but did not say its handle",
        "nft -a list chain inet agentlab input",
      );
    return { opened: true, handle: ours.handle, rule: ours.text, spec, staleRemoved };
  }
  const rule = result.stdout
    .replace(/\s*# handle \d+[\s\S]*$/, "")
    .replace(/^.*?insert rule /s, "")
    .trim();
  return { opened: true, handle: Number(handle[1]), rule, spec, staleRemoved };
}

/**
 * Delete the hole by its handle, only if that handle is still our rule (a reloaded ruleset has dropped it
 * already, and handles are never reused within a table). "gone" when there was nothing to delete.
 */
export async function closeHole(nft: NftCall, hole: Hole): Promise<"removed" | "gone" | "none"> {
  if (!hole.opened) return "none";
  const listing = await listChain(nft);
  if ("absent" in listing) return "gone";
  const ours = listing.rules.find((r) => r.handle === hole.handle && r.smokePid === hole.spec.pid);
  if (!ours) return "gone";
  const result = await nft(["delete", "rule", ...TABLE, CHAIN, "handle", String(hole.handle)]);
  if (result.code !== 0) {
    throw new HoleError(
      `cannot delete the temporary firewall rule (handle ${hole.handle}): ${firstLine(result)}`,
      `delete it by hand: nft delete rule inet agentlab input handle ${hole.handle}`,
    );
  }
  return "removed";
}
