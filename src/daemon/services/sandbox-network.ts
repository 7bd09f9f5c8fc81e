import type { NetworkMode } from "../../config/profiles.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { Logger } from "../log.js";
import { egressPolicyForMode, type SandboxFirewall, sandboxPortName } from "../network/sandbox-firewall.js";

export type IsolationMode = "auto" | "on" | "off";

/**
 * The sandbox lifecycle's side of host network isolation: register a sandbox's bridge port before it
 * boots, bind port + MAC + address (and the profile's egress policy) when it is READY, release them
 * when it is destroyed. The ruleset itself is loaded by scripts/net/apply.sh.
 *
 * network_isolation decides what a failure means: "on" makes it the sandbox's failure (no sandbox runs
 * unisolated); "auto" uses the ruleset when it is loaded and otherwise only warns (a host without
 * vmbr1/nftables yet, or the simulator); "off" never touches nftables.
 */
export class SandboxNetworking {
  private enabled = false;

  constructor(
    private readonly mode: IsolationMode,
    private readonly firewall: SandboxFirewall | undefined,
    private readonly log: Logger,
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

  private set(enabled: boolean, reason: string): { enabled: boolean; reason: string } {
    this.enabled = enabled;
    (enabled ? this.log.info.bind(this.log) : this.log.warn.bind(this.log))(
      { network_isolation: this.mode },
      reason,
    );
    return { enabled, reason };
  }

  /** The port Proxmox gives net0 with its firewall on (agentlab sets firewall=1). */
  portOf(vmid: number): string {
    return sandboxPortName(vmid, 0, true);
  }

  /** Before the VM boots: police its port from the first frame. */
  beforeStart(vmid: number): Promise<void> {
    return this.guard(vmid, "register port", () => this.firewall!.registerPort(this.portOf(vmid)));
  }

  /** At READY: the port may use only this MAC and address; the address gets the profile's policy. */
  bind(vmid: number, mac: string | undefined, ip: string, mode: NetworkMode): Promise<void> {
    if (!mac) {
      return this.guard(vmid, "bind", async () => {
        throw new AgentlabError("INTERNAL", `sandbox ${vmid} has no net0 MAC to bind`);
      });
    }
    return this.guard(vmid, "bind", () =>
      this.firewall!.bind({ port: this.portOf(vmid), mac, ip }, egressPolicyForMode(mode)),
    );
  }

  /**
   * At daemon start: make the sets exactly what the database says, so a reloaded ruleset or a daemon
   * that was down while sandboxes changed does not leave stale or missing bindings. `live` lists the
   * sandboxes that should be bound, with the MAC read from their VM config.
   */
  resync(
    live: ReadonlyArray<{ vmid: number; ip: string | null; mac: string | undefined; mode: NetworkMode }>,
  ): Promise<void> {
    return this.guard(0, "resync", () =>
      this.firewall!.sync(
        live.map((s) => {
          const port = this.portOf(s.vmid);
          return s.ip && s.mac
            ? { port, binding: { port, mac: s.mac, ip: s.ip }, policy: egressPolicyForMode(s.mode) }
            : { port };
        }),
      ),
    );
  }

  /** On destroy: every trace of the port and the address. */
  release(vmid: number, ip: string | null): Promise<void> {
    return this.guard(vmid, "release", () =>
      this.firewall!.release({ port: this.portOf(vmid), ...(ip ? { ip } : {}) }),
    );
  }

  private async guard(vmid: number, what: string, work: () => Promise<void>): Promise<void> {
    if (!this.enabled) return;
    try {
      await work();
    } catch (error) {
      if (this.mode === "on") throw error;
      this.log.warn({ vmid, err: error }, `network isolation: ${what} failed for sandbox ${vmid}`);
    }
  }
}
