/**
 * The way to a sandbox's sshd: straight to its address, or through a jump host whose key is checked
 * against known_hosts as ssh(1) would; with --wait, retried until port 22 answers.
 */
import type { Duplex } from "node:stream";
import type { Client } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";
import { blobFingerprint } from "../../protocol/host-keys.js";
import { blobType, type HostKey, hostKeyMismatch } from "./host-keys.js";
import type { Identity, PassphrasePrompt } from "./identities.js";
import type { JumpHost } from "./jump.js";
import { readKnownHosts } from "./known-hosts.js";
import { directReachError, jumpReachError, throughJumpError, waitForPort } from "./reach.js";
import { handshake, knownHostsLine, openTcp, openThrough, ReachError } from "./transport.js";

export interface SandboxRoute {
  vmid: number;
  ip: string;
  user: string;
  keys: HostKey[];
  jump?: JumpHost | undefined;
  identities: Identity[];
  prompt: PassphrasePrompt;
  /** Wait for port 22 up to this long; undefined: one attempt. */
  waitMs?: number | undefined;
  /** The host to suggest as jump host in the no-route hint (the remote endpoint's), if known. */
  jumpHostGuess?: string | undefined;
  knownHostsFiles?: string[];
  progress: (line: string) => void;
}

/** A connection to the jump host, its key checked against known_hosts as ssh(1) checks it. */
async function connectJump(route: SandboxRoute, jump: JumpHost): Promise<Client> {
  const known = readKnownHosts(jump.host, jump.port, route.knownHostsFiles);
  const label = `jump host ${jump.host}`;
  let sock: Duplex;
  try {
    sock = await openTcp(jump.host, jump.port);
  } catch (error) {
    if (error instanceof ReachError) throw jumpReachError(jump.host, jump.user, error);
    throw error;
  }
  const files = known.files.length > 0 ? known.files.join(", ") : "~/.ssh/known_hosts (absent)";
  return handshake({
    endpoint: { label, host: jump.host, port: jump.port, user: jump.user },
    sock,
    identities: route.identities,
    prompt: route.prompt,
    verify: {
      accept: known.keys,
      revoked: known.revoked,
      onMismatch: (presented) => {
        const key = { type: blobType(presented) ?? "key", blob: presented };
        if (known.keys.length === 0) {
          return new AgentlabError(
            "SSH_HOST_KEY_UNKNOWN",
            `the jump host ${jump.host} is not in known_hosts (${files}); it presented ${key.type} ${blobFingerprint(presented)}`,
            {
              hint: [
                `check that fingerprint on the jump host (ssh-keygen -lf /etc/ssh/ssh_host_${key.type.replace(/^ssh-|-.*$/g, "")}_key.pub), then either connect once with ssh, which asks and records it:`,
                `  ssh ${jump.user}@${jump.host}`,
                "or add this line to ~/.ssh/known_hosts:",
                `  ${knownHostsLine(jump.host, jump.port, key)}`,
              ].join("\n"),
              details: {
                jump_host: jump.host,
                presented: blobFingerprint(presented),
                line: knownHostsLine(jump.host, jump.port, key),
              },
            },
          );
        }
        return hostKeyMismatch(
          label,
          `${jump.host}:${jump.port}`,
          presented,
          known.keys,
          `the key in known_hosts (${files}) differs: if the jump host's key was changed on purpose, remove the old entry (ssh-keygen -R ${jump.host}) and connect once with ssh ${jump.user}@${jump.host}; otherwise do not connect`,
        );
      },
    },
  });
}

/**
 * The stream to the sandbox's port 22 (through the jump host when given), and the jump connection to
 * close afterwards. Waits for the port when route.waitMs is set.
 */
async function openSandboxStream(route: SandboxRoute): Promise<{ sock: Duplex; jump?: Client }> {
  const jump = route.jump ? await connectJump(route, route.jump) : undefined;
  const attempt = (): Promise<Duplex> => (jump ? openThrough(jump, route.ip, 22) : openTcp(route.ip, 22));
  try {
    const sock =
      route.waitMs === undefined
        ? await attempt()
        : await waitForPort(attempt, {
            deadlineMs: route.waitMs,
            // A booting guest refuses, or (before its network is up) lets the packets go unanswered.
            isTransient: (error) =>
              error instanceof ReachError &&
              (error.failure === "refused" ||
                error.failure === "timeout" ||
                (jump !== undefined && error.failure === "no-route")),
            onWait: (elapsed, error) =>
              route.progress(
                `waiting for sandbox ${route.vmid}'s sshd at ${route.ip}:22 (${Math.round(elapsed / 1000)} s: ${(error as ReachError).reason})`,
              ),
          });
    return jump ? { sock, jump } : { sock };
  } catch (error) {
    jump?.end();
    if (!(error instanceof ReachError)) throw error;
    if (jump && route.jump) throw throughJumpError(route.vmid, route.jump.host, error);
    throw directReachError(route.vmid, route.ip, error, route.jumpHostGuess);
  }
}

/** The authenticated SSH connection to the sandbox, its host key one of those recorded for it. */
export async function connectSandbox(route: SandboxRoute): Promise<{ client: Client; close: () => void }> {
  const { sock, jump } = await openSandboxStream(route);
  try {
    const client = await handshake({
      endpoint: { label: `sandbox ${route.vmid}`, host: route.ip, port: 22, user: route.user },
      sock,
      identities: route.identities,
      prompt: route.prompt,
      verify: {
        accept: route.keys,
        onMismatch: (presented) =>
          hostKeyMismatch(
            `sandbox ${route.vmid}`,
            `${route.ip}:22`,
            presented,
            route.keys,
            `the keys were recorded when the sandbox booted; another machine may be answering at ${route.ip} (an address reused, or someone intercepting). Check agentlab sandbox show ${route.vmid}; do not continue until you know why`,
          ),
      },
    });
    return {
      client,
      close: () => {
        client.end();
        jump?.end();
      },
    };
  } catch (error) {
    jump?.end();
    throw error;
  }
}
