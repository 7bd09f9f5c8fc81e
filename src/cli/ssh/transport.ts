/**
 * Opening the SSH connection to a sandbox with ssh2: a TCP connection straight to its address, or a
 * direct-tcpip channel through a jump host (what OpenSSH's -J does), then the handshake with the host
 * key checked against what is known (the sandbox's recorded keys; the jump host's entries in
 * known_hosts), then the user's keys offered in order.
 */
import { type Socket, connect as tcpConnect } from "node:net";
import type { Duplex } from "node:stream";
import ssh2, { type AnyAuthMethod, type AuthenticationType, type Client, type ConnectConfig } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";
import { blobFingerprint } from "../../protocol/host-keys.js";
import { type HostKey, hostKeyAlgorithms, keyLine } from "./host-keys.js";
import { type Identity, identityName, type PassphrasePrompt, unlock } from "./identities.js";
import { knownHostsName } from "./known-hosts.js";

/** OpenSSH's ConnectTimeout as upstream agentlab set it: a route that swallows packets fails in 10 s. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** The SSH handshake (without the time a passphrase prompt waits for a person). */
const HANDSHAKE_TIMEOUT_MS = 30_000;

/** Host key algorithms ssh2 can verify; the recorded keys' types are asked for first among these. */
const SUPPORTED_HOST_KEY_ALGORITHMS = new Set([
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "rsa-sha2-512",
  "rsa-sha2-256",
  "ssh-rsa",
]);

/** Why a TCP connection (or a jump host's channel) did not open, in the terms the messages need. */
export type ReachFailure = "no-route" | "timeout" | "refused" | "unresolved" | "other";

export class ReachError extends Error {
  constructor(
    readonly failure: ReachFailure,
    readonly address: string,
    readonly reason: string,
  ) {
    super(`${address}: ${reason}`);
  }
}

function classifyErrno(code: string | undefined): ReachFailure {
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EADDRNOTAVAIL") return "no-route";
  if (code === "ETIMEDOUT") return "timeout";
  if (code === "ECONNREFUSED") return "refused";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN") return "unresolved";
  return "other";
}

/** A TCP connection, or a ReachError saying why not (a silent route times out after timeoutMs). */
export function openTcp(host: string, port: number, timeoutMs: number = CONNECT_TIMEOUT_MS): Promise<Socket> {
  const address = `${host}:${port}`;
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ReachError("timeout", address, `no answer in ${Math.round(timeoutMs / 1000)} s`));
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new ReachError(classifyErrno(error.code), address, error.code ?? error.message));
    });
  });
}

/** A channel to host:port opened by the jump host's sshd; its refusals classified like a TCP error. */
export function openThrough(jump: Client, host: string, port: number): Promise<Duplex> {
  const address = `${host}:${port}`;
  return new Promise((resolve, reject) => {
    jump.forwardOut("127.0.0.1", 0, host, port, (error, channel) => {
      if (!error) return resolve(channel);
      // sshd reports the connect(2) error of its side as the description: "Connection refused",
      // "No route to host", "Connection timed out"; a refusal by policy is "administratively prohibited".
      const text = error.message.replace(/^\(SSH\) Channel open failure: /, "");
      const failure: ReachFailure = /refused/i.test(text)
        ? "refused"
        : /no route|unreachable/i.test(text)
          ? "no-route"
          : /timed out/i.test(text)
            ? "timeout"
            : "other";
      reject(new ReachError(failure, address, `${text || "refused"} (from the jump host)`));
    });
  });
}

export interface Endpoint {
  /** How the messages name it: "sandbox 105", "jump host host.tailnet.ts.net". */
  label: string;
  host: string;
  port: number;
  user: string;
}

export interface Verification {
  /** Keys this server may present. */
  accept: HostKey[];
  /** Keys it must not present (known_hosts @revoked). */
  revoked?: HostKey[];
  /** The error when it presents a key not in accept (both fingerprints in it). */
  onMismatch: (presented: Buffer) => AgentlabError;
}

export interface HandshakeOptions {
  endpoint: Endpoint;
  sock: Duplex;
  verify: Verification;
  identities: Identity[];
  prompt: PassphrasePrompt;
}

/**
 * The SSH handshake and authentication over an open stream. Resolves with the ready client; rejects
 * with an AgentlabError naming what failed (host key, keys offered, timeout).
 */
export function handshake(options: HandshakeOptions): Promise<Client> {
  const { endpoint, verify } = options;
  const client = new ssh2.Client();
  const tried: string[] = [];
  const skipped: string[] = [];
  let refusal: AgentlabError | undefined;
  let prompting = false;
  const where = `${endpoint.label} (${endpoint.user}@${knownHostsName(endpoint.host, endpoint.port)})`;

  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error: AgentlabError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.end();
      reject(error);
    };
    let timer: NodeJS.Timeout;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (prompting) return;
        fail(
          new AgentlabError("SSH_FAILED", `${where} did not finish the SSH handshake in 30 s`, {
            hint: "the sshd there may be overloaded or still starting; retry, or wait for it: agentlab ssh <vmid> --wait",
          }),
        );
      }, HANDSHAKE_TIMEOUT_MS);
    };
    arm();

    const queue = [...options.identities];
    const authHandler = (
      methodsLeft: AuthenticationType[] | null,
      _partial: boolean | null,
      next: (method: AnyAuthMethod | false) => void,
    ) => {
      const offerNext = async (): Promise<void> => {
        if (methodsLeft !== null && !methodsLeft.includes("publickey")) return next(false);
        const identity = queue.shift();
        if (!identity) return next(false);
        tried.push(identityName(identity));
        if (identity.kind === "agent") {
          return next({ type: "agent", username: endpoint.user, agent: identity.socket });
        }
        prompting = true;
        clearTimeout(timer);
        let unlocked: Awaited<ReturnType<typeof unlock>>;
        try {
          unlocked = await unlock(identity, options.prompt);
        } catch (error) {
          prompting = false;
          fail(error as AgentlabError);
          return next(false);
        }
        prompting = false;
        arm();
        if (!unlocked.key) {
          tried.pop();
          skipped.push(unlocked.skipped ?? identity.path);
          return offerNext();
        }
        next({ type: "publickey", username: endpoint.user, key: unlocked.key });
      };
      void offerNext();
    };

    const preferred = hostKeyAlgorithms(verify.accept).filter((a) => SUPPORTED_HOST_KEY_ALGORITHMS.has(a));
    const config: ConnectConfig = {
      sock: options.sock as ConnectConfig["sock"],
      username: endpoint.user,
      // Our own timer covers the handshake, paused while a passphrase prompt waits for a person.
      readyTimeout: 0,
      keepaliveInterval: 15_000,
      keepaliveCountMax: 4,
      authHandler: authHandler as ConnectConfig["authHandler"],
      ...(preferred.length > 0 ? { algorithms: { serverHostKey: { prepend: preferred } } as never } : {}),
      hostVerifier: (key: Buffer) => {
        if (verify.revoked?.some((k) => k.blob.equals(key))) {
          refusal = new AgentlabError(
            "SSH_HOST_KEY_MISMATCH",
            `the SSH host key of ${where} is marked @revoked in known_hosts: ${blobFingerprint(key)}`,
            { hint: "do not connect; ask whoever runs that host which key is current" },
          );
          return false;
        }
        if (verify.accept.some((k) => k.blob.equals(key))) return true;
        refusal = verify.onMismatch(key);
        return false;
      },
    };

    client.on("ready", () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(client);
    });
    client.on("error", (error: Error & { level?: string }) => {
      if (refusal) return fail(refusal);
      if (error.level === "client-authentication") {
        const offered = tried.length > 0 ? tried.join(", ") : "none";
        const why = skipped.length > 0 ? `; not usable: ${skipped.join("; ")}` : "";
        return fail(
          new AgentlabError("SSH_AUTH_FAILED", `${where} refused every key offered (${offered})${why}`, {
            details: { offered: tried, skipped },
            hint: endpoint.label.startsWith("jump host")
              ? `verify SSH works to the jump host directly: ssh ${endpoint.user}@${endpoint.host}; then give the key: --identity ~/.ssh/agentlab_id_ed25519`
              : "give the private key whose public half sandboxes get (ssh_public_key_path in the daemon's config): agentlab ssh <vmid> --identity <key>",
          }),
        );
      }
      fail(new AgentlabError("SSH_FAILED", `${where}: ${error.message}`));
    });
    client.on("close", () => {
      fail(new AgentlabError("SSH_FAILED", `${where} closed the connection during the SSH handshake`));
    });
    try {
      client.connect(config);
    } catch (error) {
      fail(new AgentlabError("SSH_FAILED", `${where}: ${(error as Error).message}`));
    }
  });
}

/** One line of known_hosts for a key of this host: what to add once it is checked. */
export function knownHostsLine(host: string, port: number, key: HostKey): string {
  return `${knownHostsName(host, port)} ${keyLine(key)}`;
}
