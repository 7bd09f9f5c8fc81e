/**
 * An SSH connection from the daemon to a guest (ssh2): logged in with agentlabd's own key, and the
 * guest's host key checked against the keys the guest reported at phone-home. Nothing is trusted on
 * first use: no recorded keys, or a key that is not among them, is refused before any auth happens.
 * Every failure becomes an AgentlabError that says which of the usual causes it is.
 */
import ssh2, { type Client, type ConnectConfig } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";
import { describeHostKey } from "../../protocol/host-keys.js";
import type { SshIdentity } from "./identity.js";

export interface GuestTarget {
  vmid: number;
  host: string;
  port?: number;
  user: string;
  /** The guest's recorded host keys, "type base64". */
  hostKeys: readonly string[];
}

/** Seconds to wait for TCP + SSH handshake + auth: a guest on the local bridge answers in well under one. */
export const SSH_READY_TIMEOUT_MS = 15_000;

/** The host key algorithms that can prove each recorded key type (RSA keys sign with SHA-2 too). */
function hostKeyAlgorithms(types: readonly string[]): string[] {
  const algorithms = new Set<string>();
  for (const type of types) {
    if (type === "ssh-rsa") for (const a of ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]) algorithms.add(a);
    else algorithms.add(type);
  }
  return [...algorithms];
}

/** Open an authenticated connection to the guest, or throw the reason it could not be opened. */
export function connectGuest(
  target: GuestTarget,
  identity: SshIdentity,
  signal: AbortSignal,
): Promise<Client> {
  const recorded = new Set(target.hostKeys.map((key) => key.trim().split(/\s+/)[1]));
  const where = `${target.user}@${target.host}:${target.port ?? 22}`;
  if (recorded.size === 0) {
    return Promise.reject(
      new AgentlabError(
        "HOST_KEY_MISMATCH",
        `sandbox ${target.vmid} has no recorded SSH host keys, so its sshd cannot be verified`,
        {
          hint: "the guest reports its host keys when it first boots (phone-home); a sandbox created before agentlabd recorded them, or whose guest never phoned home, has none: recreate it",
          details: { vmid: target.vmid },
        },
      ),
    );
  }
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    let offered: string | undefined;
    let settled = false;
    const finish = (error?: Error) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener("abort", onAbort);
      if (error) {
        client.end();
        reject(error);
      } else resolve(client);
    };
    const onAbort = () => {
      client.destroy();
      finish(new AgentlabError("CANCELLED", `connecting to sandbox ${target.vmid} was cancelled`));
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    client.on("ready", () => finish());
    client.on("error", (error: Error & { level?: string; code?: string }) => {
      if (offered !== undefined) {
        finish(
          new AgentlabError(
            "HOST_KEY_MISMATCH",
            `sandbox ${target.vmid}: the SSH host key at ${target.host} (${describeHostKey(offered)}) is not one the guest reported when it booted; refusing to connect`,
            {
              details: {
                vmid: target.vmid,
                host: target.host,
                offered: describeHostKey(offered),
                recorded: target.hostKeys.map(describeHostKey),
              },
              cause: error,
            },
          ),
        );
      } else if (error.level === "client-authentication") {
        finish(
          new AgentlabError(
            "GUEST_AUTH_FAILED",
            `sandbox ${target.vmid}: the guest refused agentlabd's SSH key for ${where}`,
            {
              hint: `the key is authorized for the agent user of sandboxes created since agentlabd made it (${identityHint(identity)}); another --user needs it in its authorized_keys, and an older sandbox does not have it: recreate it`,
              details: { vmid: target.vmid, user: target.user, host: target.host },
              cause: error,
            },
          ),
        );
      } else {
        finish(unreachable(target, where, error));
      }
    });
    const config: ConnectConfig = {
      host: target.host,
      port: target.port ?? 22,
      username: target.user,
      privateKey: identity.privateKey,
      readyTimeout: SSH_READY_TIMEOUT_MS,
      algorithms: {
        serverHostKey: hostKeyAlgorithms(target.hostKeys.map((key) => key.split(" ")[0] ?? "")) as never,
      },
      hostVerifier: (key: Buffer) => {
        const blob = key.toString("base64");
        if (recorded.has(blob)) return true;
        const type = key.length >= 4 ? key.subarray(4, 4 + key.readUInt32BE(0)).toString("latin1") : "?";
        offered = `${type} ${blob}`;
        return false;
      },
      // No agent, no password, no keyboard-interactive: only the daemon's key.
      tryKeyboard: false,
    };
    try {
      client.connect(config);
    } catch (error) {
      finish(unreachable(target, where, error as Error));
    }
  });
}

function identityHint(identity: SshIdentity): string {
  return `${identity.path}.pub`;
}

function unreachable(target: GuestTarget, where: string, error: Error & { code?: string }): AgentlabError {
  const reason =
    error.code === "ECONNREFUSED"
      ? "connection refused (is sshd running in the guest?)"
      : error.code === "EHOSTUNREACH" || error.code === "ENETUNREACH"
        ? "no route to the guest's address"
        : /Timed out while waiting for handshake/.test(error.message) || error.code === "ETIMEDOUT"
          ? "no answer (timed out)"
          : error.message;
  return new AgentlabError(
    "GUEST_UNREACHABLE",
    `cannot reach sandbox ${target.vmid} over SSH at ${where}: ${reason}`,
    {
      details: { vmid: target.vmid, host: target.host, port: target.port ?? 22, code: error.code ?? null },
      cause: error,
    },
  );
}
