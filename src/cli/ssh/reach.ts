/**
 * What `agentlab ssh` says when the sandbox's address cannot be reached, in the words of the
 * troubleshooting guide's "agentlab ssh cannot reach a sandbox from a remote device" (its commands
 * verbatim, with this sandbox's VMID), and the wait for port 22 behind --wait.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { AgentlabError } from "../../protocol/errors.js";
import type { ReachError } from "./transport.js";

/** The agent subnet the guide names; an address outside it is named as itself. */
const GUIDE_SUBNET = "10.77.0.0/16";

function inGuideSubnet(ip: string): boolean {
  return /^10\.77\.\d+\.\d+$/.test(ip);
}

/** The guide's steps, for a sandbox reached directly from this machine. */
export function noRouteHint(vmid: number, jumpHostGuess: string | undefined): string {
  const host = jumpHostGuess ?? "host.tailnet.ts.net";
  return [
    `this machine has no route to the sandboxes' subnet. If you reach the host over Tailscale:`,
    `1. Ensure the subnet route is approved in the Tailscale admin console (look for ${GUIDE_SUBNET}).`,
    "2. Verify the host is advertising routes and this device has a route entry: tailscale status",
    "3. Ensure this device accepts routes (macOS: sudo tailscale up --accept-routes, or enable subnet routes in the Tailscale app).",
    "4. If you cannot accept routes, configure a jump host:",
    "   agentlab connect --endpoint https://host.tailnet.ts.net:8845 --token <token> --jump-user <user>",
    "5. Or use ad-hoc ProxyJump:",
    `   agentlab ssh ${vmid} --jump-host ${host} --jump-user <user>`,
  ].join("\n");
}

/** The error for a direct connection that failed, by why it failed. */
export function directReachError(
  vmid: number,
  ip: string,
  failure: ReachError,
  jumpHostGuess: string | undefined,
): AgentlabError {
  const details = { vmid, address: failure.address, reason: failure.reason };
  if (failure.failure === "refused") {
    return new AgentlabError(
      "SSH_UNREACHABLE",
      `sandbox ${vmid} at ${failure.address} refused the connection: its sshd is not listening (yet)`,
      {
        hint: `a sandbox that just started needs a moment: agentlab ssh ${vmid} --wait waits for port 22`,
        details,
      },
    );
  }
  const route =
    failure.failure === "no-route" || failure.failure === "timeout"
      ? `no route to ${inGuideSubnet(ip) ? GUIDE_SUBNET : ip}`
      : "cannot connect";
  return new AgentlabError(
    "SSH_UNREACHABLE",
    `cannot reach sandbox ${vmid} at ${failure.address}: ${route} (${failure.reason})`,
    { hint: noRouteHint(vmid, jumpHostGuess), details },
  );
}

/** The error when the jump host's sshd could not open the channel to the sandbox. */
export function throughJumpError(vmid: number, jumpHost: string, failure: ReachError): AgentlabError {
  const refused = failure.failure === "refused";
  return new AgentlabError(
    "SSH_UNREACHABLE",
    `the jump host ${jumpHost} cannot reach sandbox ${vmid} at ${failure.address}: ${failure.reason}`,
    {
      hint: refused
        ? `the sandbox's sshd is not listening (yet): agentlab ssh ${vmid} --wait waits for port 22`
        : `the jump host should be the agentlab host itself (it has the route to the sandboxes' bridge): agentlab ssh ${vmid} --jump-host <agentlab host> --jump-user <user>`,
      details: { vmid, jump_host: jumpHost, address: failure.address, reason: failure.reason },
    },
  );
}

/** The error when the jump host itself is not reachable. */
export function jumpReachError(jumpHost: string, user: string, failure: ReachError): AgentlabError {
  return new AgentlabError(
    "SSH_UNREACHABLE",
    `cannot reach the jump host ${failure.address}: ${failure.reason}`,
    {
      hint: `verify SSH works to the jump host directly: ssh ${user}@${jumpHost}`,
      details: { jump_host: jumpHost, address: failure.address, reason: failure.reason },
    },
  );
}

/**
 * Tries `attempt` once a second until it succeeds or the deadline passes, reporting each refusal. Only
 * "not listening yet" (refused, or a route that drops the packets while the guest boots) is waited
 * for; any other failure is final at once.
 */
export async function waitForPort<T>(
  attempt: () => Promise<T>,
  options: {
    deadlineMs: number;
    isTransient: (error: unknown) => boolean;
    onWait: (elapsedMs: number, error: unknown) => void;
    intervalMs?: number;
  },
): Promise<T> {
  const started = Date.now();
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      const elapsed = Date.now() - started;
      if (!options.isTransient(error) || elapsed >= options.deadlineMs) throw error;
      options.onWait(elapsed, error);
      await sleep(options.intervalMs ?? 1000);
    }
  }
}
