/**
 * SSH public host keys as agentlab records them ("type base64", the form of an OpenSSH .pub file or a
 * known_hosts entry without its host field) and their OpenSSH fingerprints, so the keys a sandbox
 * reported at phone-home are compared byte for byte with the one its sshd presents.
 */

import { AgentlabError } from "../../protocol/errors.js";
import { blobFingerprint } from "../../protocol/host-keys.js";

export interface HostKey {
  /** The key's type as named inside its blob, e.g. ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256. */
  type: string;
  /** The SSH wire-format public key blob. */
  blob: Buffer;
}

/** The type string an SSH public key blob starts with (uint32 length, then the name), or undefined. */
export function blobType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  if (length === 0 || length > 64 || 4 + length > blob.length) return undefined;
  const name = blob.subarray(4, 4 + length).toString("latin1");
  return /^[a-z0-9@.-]+$/i.test(name) ? name : undefined;
}

/**
 * "ssh-ed25519 AAAA... [comment]" as a HostKey, or undefined when it is not one (unknown shape, or a
 * blob whose inner type differs from the one named in front of it).
 */
export function parseHostKey(text: string): HostKey | undefined {
  const [type, base64] = text.trim().split(/\s+/);
  if (!type || !base64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) return undefined;
  const blob = Buffer.from(base64, "base64");
  return blobType(blob) === type ? { type, blob } : undefined;
}

/** The one-line form, "ssh-ed25519 AAAA...", as known_hosts and .pub files hold it. */
export function keyLine(key: HostKey): string {
  return `${key.type} ${key.blob.toString("base64")}`;
}

/**
 * The host key algorithms a client may negotiate to get one of these keys, the recorded keys' types
 * first: as OpenSSH orders HostKeyAlgorithms by what known_hosts holds, so a server with several keys
 * presents one that can be checked. An RSA key is signed with rsa-sha2-512/256 by current servers.
 */
export function hostKeyAlgorithms(keys: HostKey[]): string[] {
  const algorithms: string[] = [];
  for (const key of keys) {
    const forType = key.type === "ssh-rsa" ? ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] : [key.type];
    for (const algorithm of forType) if (!algorithms.includes(algorithm)) algorithms.push(algorithm);
  }
  return algorithms;
}

/**
 * The host keys recorded for a sandbox, from its record (sandbox.show): each "type base64" string
 * parsed. Unparseable entries are skipped; none at all is refused by the caller (no blind trust).
 */
export function recordedHostKeys(sandbox: { ssh_host_keys?: string[] | undefined }): HostKey[] {
  const keys: HostKey[] = [];
  for (const line of sandbox.ssh_host_keys ?? []) {
    const key = parseHostKey(line);
    if (key) keys.push(key);
  }
  return keys;
}

/** The error for a server that presented a key other than the recorded ones: both fingerprints named. */
export function hostKeyMismatch(
  what: string,
  address: string,
  presented: Buffer,
  expected: HostKey[],
  hint: string,
): AgentlabError {
  const seen = `${blobType(presented) ?? "key"} ${blobFingerprint(presented)}`;
  const wanted = expected.map((key) => `${key.type} ${blobFingerprint(key.blob)}`).join(", ");
  return new AgentlabError(
    "SSH_HOST_KEY_MISMATCH",
    `the SSH host key of ${what} (${address}) does not match: it presented ${seen}, expected ${wanted}`,
    {
      hint,
      details: {
        address,
        presented: blobFingerprint(presented),
        expected: expected.map((key) => blobFingerprint(key.blob)),
      },
    },
  );
}
