/**
 * The sandbox service's side of host network isolation that needs more than the provisioning flow
 * has at hand: a sandbox's egress mode from its profile's name, and rebuilding the nftables sets from
 * the database when the daemon starts.
 */
import type { NetworkMode } from "../../../config/profiles.js";
import type { DaemonContext } from "../../context.js";
import { vmRefOf } from "../maintenance-steps.js";
import { BridgePortMissingError } from "../sandbox-network.js";
import { recordEvent } from "./journal.js";
import { netMac } from "./vm-config.js";

/** The event a sandbox gets when its anti-spoofing binding is not in place; the reason says why. */
export const UNBOUND_EVENT = "sandbox.network.unbound";

/** The egress mode of a sandbox's profile; nat when the profile is no longer loaded. */
export function networkModeOf(ctx: DaemonContext, profileName: string): NetworkMode {
  return ctx.profiles.find((p) => p.name === profileName)?.network.mode ?? "nat";
}

/**
 * Rebuild the nftables sandbox sets from the database (daemon start). One config read per live
 * sandbox for its MAC; a sandbox whose VM cannot be read is registered without a binding. A sandbox
 * whose port is not on a bridge gets an event saying so (and an error in the log): the operator sees
 * on the sandbox itself that it is not policed.
 */
export async function resyncNetwork(ctx: DaemonContext): Promise<void> {
  const network = ctx.network;
  if (!network?.active) return;
  const live = ctx.store.sandboxes
    .list()
    .filter((row) => row.vm_created && ["BOOTING", "READY", "RUNNING", "SUSPENDED"].includes(row.state));
  const entries = await Promise.all(
    live.map(async (row) => {
      let mac: string | undefined;
      try {
        mac = netMac((await ctx.backend.getConfig(vmRefOf(ctx, row))).net0);
      } catch (error) {
        ctx.log.warn({ vmid: row.vmid, err: error }, "network resync: cannot read the VM's MAC");
      }
      return { vmid: row.vmid, ip: row.ip, mac, mode: networkModeOf(ctx, row.profile) };
    }),
  );
  const { unbound } = await network.resync(entries);
  for (const { vmid, reason } of unbound) {
    ctx.log.error({ vmid }, reason);
    recordEvent(ctx, vmid, UNBOUND_EVENT, reason);
  }
}

/**
 * Bind an address found after the fact (the reconciler advancing a sandbox to READY, or finding its
 * address late) into the anti-spoofing sets, as provisioning does when it sees the address first.
 * A failure is logged, not thrown: the next daemon start resyncs the sets from the database. A port
 * that is missing is also recorded on the sandbox, so it never looks isolated when it is not.
 */
export async function bindDiscoveredAddress(
  ctx: DaemonContext,
  row: Parameters<typeof vmRefOf>[1],
  ip: string,
): Promise<void> {
  const network = ctx.network;
  if (!network?.active) return;
  try {
    const mac = netMac((await ctx.backend.getConfig(vmRefOf(ctx, row))).net0);
    await network.bind(row.vmid, mac, ip, networkModeOf(ctx, row.profile));
  } catch (error) {
    ctx.log.warn(
      { vmid: row.vmid, ip, err: error },
      "could not bind the sandbox's new address into nftables",
    );
    if (error instanceof BridgePortMissingError) recordEvent(ctx, row.vmid, UNBOUND_EVENT, error.message);
  }
}
