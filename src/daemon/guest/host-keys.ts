/**
 * The guest's SSH host keys, as its ready report carries them (`host_keys`, read by the guest from
 * /etc/ssh/ssh_host_*_key.pub at report time) and as the daemon stores them per sandbox: "type base64",
 * the comment dropped. They are what `sandbox exec`, `sandbox cp` and `agentlab ssh` check the guest's
 * sshd against, so nothing is trusted blindly on first contact.
 *
 * The report comes from an untrusted guest: every line is checked strictly (an allowlisted key type,
 * canonical base64 whose SSH wire blob names the same type, count and size caps) and a bad one refuses
 * the whole report with a 400 that says what is wrong.
 */

/** The key types OpenSSH's sshd can serve as host keys (ssh-keygen -A writes rsa, ecdsa and ed25519). */
export const HOST_KEY_TYPES: readonly string[] = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "ssh-rsa",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
];
/** A guest has one key per type; a few spare for templates with extra ones. */
export const MAX_HOST_KEYS = 8;
/** One line: a 16384-bit RSA key is about 2.8 KB in base64; anything longer is not a host key. */
export const MAX_HOST_KEY_CHARS = 4096;

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** The key type named inside an SSH wire-format key blob (a uint32 length, then the name), if any. */
function blobType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  if (length === 0 || length > 64 || 4 + length > blob.length) return undefined;
  return blob.subarray(4, 4 + length).toString("latin1");
}

/**
 * One OpenSSH public key line ("type base64 [comment]") as "type base64", or why it is not one.
 * `where` names it in the message (e.g. `host_keys[1]`).
 */
export function parseHostKeyLine(line: unknown, where: string): { key: string } | { error: string } {
  if (typeof line !== "string") return { error: `${where} must be a string ("ssh-ed25519 AAAA...")` };
  if (line.length > MAX_HOST_KEY_CHARS) {
    return { error: `${where} is longer than ${MAX_HOST_KEY_CHARS} characters; not an SSH host key` };
  }
  const [type, blob] = line.trim().split(/\s+/);
  if (type === undefined || type === "" || blob === undefined) {
    return { error: `${where} must be an OpenSSH public key line: "<type> <base64> [comment]"` };
  }
  if (!HOST_KEY_TYPES.includes(type)) {
    return {
      error: `${where} has key type ${JSON.stringify(type.slice(0, 40))}; allowed: ${HOST_KEY_TYPES.join(", ")}`,
    };
  }
  const decoded = BASE64.test(blob) ? Buffer.from(blob, "base64") : undefined;
  if (decoded === undefined || decoded.toString("base64") !== blob) {
    return { error: `${where}: the key after "${type}" is not base64` };
  }
  if (blobType(decoded) !== type) {
    return { error: `${where}: the key's data is not a ${type} key` };
  }
  return { key: `${type} ${blob}` };
}

/** The `host_keys` field of a ready report: an array of key lines, or why it is refused. */
export function parseHostKeys(value: unknown): { keys: string[] } | { error: string } {
  if (!Array.isArray(value)) {
    return { error: 'host_keys must be an array of OpenSSH public key lines ("ssh-ed25519 AAAA...")' };
  }
  if (value.length > MAX_HOST_KEYS) {
    return { error: `host_keys has ${value.length} keys; at most ${MAX_HOST_KEYS}` };
  }
  const keys: string[] = [];
  for (const [index, line] of value.entries()) {
    const parsed = parseHostKeyLine(line, `host_keys[${index}]`);
    if ("error" in parsed) return parsed;
    if (!keys.includes(parsed.key)) keys.push(parsed.key);
  }
  return { keys };
}
