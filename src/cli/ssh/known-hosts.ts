/**
 * The user's OpenSSH known_hosts, read the way ssh(1) reads it for a host it connects to, so the jump
 * host is trusted exactly when `ssh user@jumphost` would trust it without asking: plain and hashed
 * (|1|salt|hash, HashKnownHosts) host fields, [host]:port for other ports, * ? wildcards and !negation
 * (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"), @revoked keys refused. @cert-authority lines are skipped:
 * agentlab does not check host certificates.
 */
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { type HostKey, parseHostKey } from "./host-keys.js";

export interface KnownHostsLookup {
  /** Keys listed for the host (any type). */
  keys: HostKey[];
  /** Keys marked @revoked: never accepted, whatever else says. */
  revoked: HostKey[];
  /** The files that were read (those that exist). */
  files: string[];
}

/** ~/.ssh/known_hosts, then the system-wide file: OpenSSH's UserKnownHostsFile and GlobalKnownHostsFile. */
export function defaultKnownHostsFiles(home: string = homedir()): string[] {
  return [join(home, ".ssh", "known_hosts"), "/etc/ssh/ssh_known_hosts"];
}

/** How a host is named in known_hosts: the bare name on port 22, [name]:port otherwise. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function wildcardMatch(pattern: string, text: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`, "i").test(text);
}

/** Whether a host field (comma-separated patterns, or one hashed name) names this host. */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith("|1|")) {
    const [, , salt, hash] = field.split("|");
    if (!salt || !hash) return false;
    const digest = createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64");
    return digest === hash;
  }
  let matched = false;
  for (const pattern of field.split(",")) {
    if (pattern.startsWith("!")) {
      if (wildcardMatch(pattern.slice(1), name)) return false;
    } else if (wildcardMatch(pattern, name)) {
      matched = true;
    }
  }
  return matched;
}

/** The keys these known_hosts texts hold for a host; lines that are not host keys are ignored. */
export function lookupKnownHosts(
  texts: string[],
  host: string,
  port: number,
): Omit<KnownHostsLookup, "files"> {
  const name = knownHostsName(host, port);
  const keys: HostKey[] = [];
  const revoked: HostKey[] = [];
  for (const text of texts) {
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) continue;
      let fields = line.split(/\s+/);
      let marker: string | undefined;
      if (fields[0]?.startsWith("@")) {
        marker = fields[0];
        fields = fields.slice(1);
      }
      if (marker === "@cert-authority") continue;
      const [hosts, type, base64] = fields;
      if (!hosts || !type || !base64 || !hostFieldMatches(hosts, name)) continue;
      const key = parseHostKey(`${type} ${base64}`);
      if (!key) continue;
      (marker === "@revoked" ? revoked : keys).push(key);
    }
  }
  return { keys, revoked };
}

/** Reads the files (missing ones are no error: they hold no keys) and looks the host up. */
export function readKnownHosts(
  host: string,
  port: number,
  files: string[] = defaultKnownHostsFiles(),
): KnownHostsLookup {
  const texts: string[] = [];
  const read: string[] = [];
  for (const file of files) {
    try {
      texts.push(readFileSync(file, "utf8"));
      read.push(file);
    } catch {
      // absent or unreadable: as ssh, nothing known from it
    }
  }
  return { ...lookupKnownHosts(texts, host, port), files: read };
}
