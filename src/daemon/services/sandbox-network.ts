import { setTimeout as sleep } from "node:timers/promises";
import type { NetworkMode } from "../../config/profiles.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { Logger } from "../log.js";
import { NFT } from "../network/nft.js";
import { bridgePortCandidates, type PortFinder, type PortLookup } from "../network/ports.js";
import {
  egressPolicyForMode,
  type SandboxFirewall,
  type SandboxNetEntry,
} from "../network/sandbox-firewall.js";

export type IsolationMode = "auto" | "on" | "off";

/**
 * The sandbox lifecycle's side of host network isolation: register a sandbox's bridge port before it
 * boots, bind port + MAC + address (and the profile's egress policy) when it is READY, release them
 * when it is destroyed. The ruleset itself is loaded by scripts/net/apply.sh.
 *
 * network_isolation decides what a failure means: "on" makes it the sandbox's failure (no sandbox runs
 * unisolated); "auto" uses the ruleset when it is loaded and otherwise only warns (a host without
 * vmbr1/nftables yet, or the simulator); "off" never touches nftables.
 *
 * The port is not predicted: before the start both names Proxmox may give it are registered, and at
 * READY the one really on the bridge is looked up (ports.ts) and bound, the other forgotten. A NIC with
 * no port on any bridge fails the sandbox whenever bindings are made ("on", and "auto" with the ruleset
 * loaded): its traffic would not be policed, so it must not run as if it were isolated.
 */
export interface PortLookupOptions {
  /** Looks the NIC's port up on the host (bridgePortFinder in the daemon). */
  findPort: PortFinder;
  /** Lookups before giving up (default 5): the port exists once `qm start` returned, this is slack. */
  attempts?: number;
  /** Pause between lookups (default 1000 ms). */
  retryDelayMs?: number;
}

/** A sandbox whose NIC has no port on a bridge: bindings for it are not in place. */
export class BridgePortMissingError extends AgentlabError {
  constructor(vmid: number, reason: string) {
    super(
      "INTERNAL",
      `anti-spoofing not in place for sandbox ${vmid}: its NIC net0 has no port on a bridge (${reason})`,
      {
        hint:
          `check that VM ${vmid} is running and where its NIC is plugged: ip -br link show | grep ${vmid}; ` +
          'docs/troubleshooting.md, "anti-spoofing not in place"',
        details: { vmid, reason },
      },
    );
    this.name = "BridgePortMissingError";
  }
}

/** What `agentlab status` says about isolation: what is in force now, not what the config asks for. */
export interface IsolationReport {
  mode: IsolationMode;
  in_force: boolean;
  reason: string;
  hint?: string;
  ruleset: { loaded: boolean; tables: string[]; error?: string };
  /** Sandboxes with an address that should be bound: how many are, and which are not. */
  bound: number;
  unbound_vmids: number[];
}

/** The tables agentlabd reads and writes (the NAT table is apply.sh's alone). */
const TABLES = [NFT.filterTable, NFT.l2Table].map((t) => `${t.family} ${t.name}`);
const RELOAD =
  "sudo scripts/net/apply.sh --apply, then sudo systemctl restart agentlabd (it binds the running sandboxes again at start)";

/** What resync could not bind, for the caller to record on each sandbox. */
export interface ResyncResult {
  unbound: Array<{ vmid: number; reason: string }>;
}

export class SandboxNetworking {
  private enabled = false;
  private startReason = "not initialised";

  constructor(
    private readonly mode: IsolationMode,
    private readonly firewall: SandboxFirewall | undefined,
    private readonly log: Logger,
    private readonly ports: PortLookupOptions,
  ) {}

  /** Decide once at start whether bindings are made. */
  async init(): Promise<{ enabled: boolean; reason: string }> {
    if (this.mode === "off" || !this.firewall) return this.set(false, "network_isolation: off");
    try {
      await this.firewall.state();
      return this.set(true, "agentlab nftables ruleset loaded");
    } catch (error) {
      if (this.mode === "on") {
        throw new AgentlabError(
          "CONFIG_INVALID",
          `network_isolation is "on" but the agentlab nftables ruleset is not usable: ${(error as Error).message}`,
          {
            hint: "load it: sudo scripts/net/apply.sh --apply (or set network_isolation: auto while setting up)",
          },
        );
      }
      return this.set(
        false,
        `agentlab nftables ruleset not loaded; sandboxes are not bound to their addresses (${(error as Error).message})`,
      );
    }
  }

  get active(): boolean {
    return this.enabled;
  }

  /**
   * The isolation in force now, for `agentlab status`: the ruleset is read again (it may have been
   * flushed or loaded since start), and each sandbox with an address is looked for among the bindings.
   * The spec's firewall checks grep iptables; this is the nftables answer an operator needs.
   */
  async report(live: ReadonlyArray<{ vmid: number; ip: string | null }>): Promise<IsolationReport> {
    const base = { mode: this.mode, bound: 0, unbound_vmids: [] as number[] };
    if (this.mode === "off" || !this.firewall) {
      return {
        ...base,
        in_force: false,
        reason: "network_isolation: off: agentlabd does not bind sandboxes to their addresses",
        ruleset: { loaded: false, tables: [], error: "not checked (network_isolation: off)" },
      };
    }
    let bindings: string[];
    try {
      bindings = (await this.firewall.state()).bindings.map((b) => b.ip);
    } catch (error) {
      const message = (error as Error).message;
      return {
        ...base,
        in_force: false,
        reason: this.enabled
          ? `the agentlab ruleset was loaded when agentlabd started but cannot be read now: ${message}`
          : this.startReason,
        hint: `load the ruleset: ${RELOAD}`,
        ruleset: { loaded: false, tables: [], error: message },
      };
    }
    const ruleset = { loaded: true, tables: TABLES };
    if (!this.enabled) {
      return {
        ...base,
        in_force: false,
        reason: "the agentlab ruleset is loaded, but agentlabd started without it and binds no sandbox",
        hint: "sudo systemctl restart agentlabd",
        ruleset,
      };
    }
    const addressed = live.filter((s): s is { vmid: number; ip: string } => s.ip !== null);
    const bound = new Set(bindings);
    const unbound = addressed.filter((s) => !bound.has(s.ip)).map((s) => s.vmid);
    return {
      mode: this.mode,
      in_force: true,
      reason: "agentlab nftables ruleset loaded; sandboxes are bound to their bridge port, MAC and address",
      ...(unbound.length > 0
        ? {
            hint: 'sandbox show <vmid> has the event that says why; docs/troubleshooting.md "anti-spoofing not in place for sandbox N"; a restart of agentlabd binds running sandboxes again',
          }
        : {}),
      ruleset,
      bound: addressed.length - unbound.length,
      unbound_vmids: unbound,
    };
  }

  private set(enabled: boolean, reason: string): { enabled: boolean; reason: string } {
    this.enabled = enabled;
    this.startReason = reason;
    (enabled ? this.log.info.bind(this.log) : this.log.warn.bind(this.log))(
      { network_isolation: this.mode },
      reason,
    );
    return { enabled, reason };
  }

  /** Every name Proxmox may give net0's port (agentlab sets firewall=1 unless the profile says not to). */
  candidates(vmid: number): string[] {
    return bridgePortCandidates(vmid, 0, true);
  }

  /** Before the VM boots: police whichever of its possible ports appears, from the first frame. */
  beforeStart(vmid: number): Promise<void> {
    return this.guard(vmid, "register port", async () => {
      for (const port of this.candidates(vmid)) await this.firewall!.registerPort(port);
    });
  }

  /**
   * At READY: find net0's port on the host, bind it to this MAC and address with the profile's policy,
   * and forget the other candidate (a tap inside its firewall bridge must not be policed as an unbound
   * port: the sandbox's own address is bound, so its traffic would be dropped there).
   */
  bind(vmid: number, mac: string | undefined, ip: string, mode: NetworkMode): Promise<void> {
    return this.guard(vmid, "bind", async () => {
      if (!mac) throw new AgentlabError("INTERNAL", `sandbox ${vmid} has no net0 MAC to bind`);
      const port = await this.portOf(vmid, this.ports.attempts ?? 5);
      await this.firewall!.bind({ port, mac, ip }, egressPolicyForMode(mode));
      for (const other of this.candidates(vmid).filter((name) => name !== port)) {
        await this.firewall!.release({ port: other });
      }
      this.log.info({ vmid, port, ip }, `sandbox ${vmid} bound to bridge port ${port}`);
    });
  }

  /**
   * net0's port, looked up `attempts` times at most; BridgePortMissingError when there is none, and
   * also when the lookup itself fails (no `ip`): either way the binding cannot be made.
   */
  private async portOf(vmid: number, attempts: number): Promise<string> {
    let reason = "";
    for (let attempt = 1; attempt <= Math.max(1, attempts); attempt++) {
      let lookup: PortLookup;
      try {
        lookup = await this.ports.findPort(vmid, 0);
      } catch (error) {
        throw new BridgePortMissingError(vmid, `cannot look it up: ${(error as Error).message}`);
      }
      if (lookup.found) return lookup.found.port;
      reason = lookup.reason;
      if (attempt < attempts) await sleep(this.ports.retryDelayMs ?? 1000);
    }
    throw new BridgePortMissingError(vmid, reason);
  }

  /**
   * At daemon start: make the sets exactly what the database says, so a reloaded ruleset or a daemon
   * that was down while sandboxes changed does not leave stale or missing bindings. `live` lists the
   * sandboxes that should be bound, with the MAC read from their VM config. Each port is looked up
   * again (once: the VM either runs or not); a sandbox with an address but no port stays registered
   * under both names, unbound, and is reported in `unbound`.
   */
  async resync(
    live: ReadonlyArray<{ vmid: number; ip: string | null; mac: string | undefined; mode: NetworkMode }>,
  ): Promise<ResyncResult> {
    const unbound: ResyncResult["unbound"] = [];
    await this.guard(0, "resync", async () => {
      const entries: SandboxNetEntry[] = [];
      for (const s of live) {
        const registered = this.candidates(s.vmid).map((port) => ({ port }));
        if (!s.ip || !s.mac) {
          entries.push(...registered);
          continue;
        }
        try {
          const port = await this.portOf(s.vmid, 1);
          entries.push({
            port,
            binding: { port, mac: s.mac, ip: s.ip },
            policy: egressPolicyForMode(s.mode),
          });
        } catch (error) {
          if (!(error instanceof BridgePortMissingError)) throw error;
          unbound.push({ vmid: s.vmid, reason: error.message });
          entries.push(...registered);
        }
      }
      await this.firewall!.sync(entries);
    });
    return { unbound };
  }

  /** On destroy: every trace of the port and the address. */
  release(vmid: number, ip: string | null): Promise<void> {
    return this.guard(vmid, "release", async () => {
      const [first, ...rest] = this.candidates(vmid) as [string, ...string[]];
      await this.firewall!.release({ port: first, ...(ip ? { ip } : {}) });
      for (const port of rest) await this.firewall!.release({ port });
    });
  }

  private async guard(vmid: number, what: string, work: () => Promise<void>): Promise<void> {
    if (!this.enabled) return;
    try {
      await work();
    } catch (error) {
      // A missing port is never only a warning: the sandbox would run unpoliced.
      if (this.mode === "on" || error instanceof BridgePortMissingError) throw error;
      this.log.warn({ vmid, err: error }, `network isolation: ${what} failed for sandbox ${vmid}`);
    }
  }
}
