/**
 * SSH host keys as the protocol carries them (a sandbox's `ssh_host_keys`: "type base64", no comment),
 * and their fingerprints in OpenSSH's form, so what `sandbox show` prints can be compared with
 * `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` in the guest or with what ssh prints on connect.
 */
import { createHash } from "node:crypto";

/** `SHA256:<base64 without padding>` of the key's blob, as `ssh-keygen -l` prints it. */
export function hostKeyFingerprint(key: string): string {
  return blobFingerprint(Buffer.from(key.trim().split(/\s+/)[1] ?? "", "base64"));
}

/** The same for a key's wire blob, as an SSH server presents it (agentlab ssh compares those). */
export function blobFingerprint(blob: Buffer): string {
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

/** "ssh-ed25519 SHA256:..." for each key: the line `sandbox show` prints and errors quote. */
export function describeHostKey(key: string): string {
  return `${key.trim().split(/\s+/)[0] ?? "?"} ${hostKeyFingerprint(key)}`;
}
