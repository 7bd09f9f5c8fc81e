/**
 * Which keys `agentlab ssh` offers, in order: --identity (or AGENTLAB_SSH_IDENTITY), the keys of the
 * ssh-agent at SSH_AUTH_SOCK, the private keys in /etc/agentlab/keys (where the installer puts the pair
 * whose public half sandboxes get, ssh_public_key_path), then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
 * Key files are read here; an encrypted one is decrypted when its turn comes (see unlock), so a key the
 * agent already covers never asks for a passphrase.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import ssh2, { type ParsedKey } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";

export const DEFAULT_KEYS_DIR = "/etc/agentlab/keys";
/** The installer's and upstream agentlab's names for that pair, tried before other files there. */
const PREFERRED_IN_KEYS_DIR = ["agentlab_ed25519", "agentlab_id_ed25519"];
const HOME_KEYS = ["id_ed25519", "id_ecdsa", "id_rsa"];

export type Identity =
  | { kind: "agent"; socket: string; source: string }
  | {
      kind: "file";
      path: string;
      source: string;
      /** The file's text; parsed when offered. */
      text: string;
      /** Given on the command line: a problem with it is an error, not a key skipped. */
      explicit: boolean;
    };

export interface IdentityOptions {
  identity?: string | undefined;
  env?: NodeJS.ProcessEnv;
  home?: string;
}

function readKeyFile(path: string): string | undefined {
  try {
    if (!statSync(path).isFile()) return undefined;
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function looksPrivate(text: string): boolean {
  return /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text) || text.startsWith("PuTTY-User-Key-File");
}

function expandHome(path: string, home: string): string {
  return path === "~" ? home : path.startsWith("~/") ? join(home, path.slice(2)) : path;
}

/** The keys to offer, in order. A missing or unreadable --identity is an error here, before connecting. */
export function collectIdentities(options: IdentityOptions = {}): Identity[] {
  const env = options.env ?? process.env;
  const home = options.home ?? homedir();
  const identities: Identity[] = [];
  const explicit = options.identity ?? (env.AGENTLAB_SSH_IDENTITY || undefined);
  if (explicit !== undefined) {
    const from = options.identity !== undefined ? "--identity" : "AGENTLAB_SSH_IDENTITY";
    const path = expandHome(explicit, home);
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      throw new AgentlabError(
        "SSH_KEY_UNUSABLE",
        `${from}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
        { hint: "give the private key file (not the .pub), e.g. --identity ~/.ssh/agentlab_id_ed25519" },
      );
    }
    if (!looksPrivate(text)) {
      throw new AgentlabError("SSH_KEY_UNUSABLE", `${from}: ${path} is not a private key`, {
        hint: path.endsWith(".pub")
          ? `give the private half: --identity ${path.slice(0, -4)}`
          : "give an OpenSSH or PEM private key file",
      });
    }
    identities.push({ kind: "file", path, source: from, text, explicit: true });
  }
  if (env.SSH_AUTH_SOCK) identities.push({ kind: "agent", socket: env.SSH_AUTH_SOCK, source: "ssh-agent" });
  const keysDir = env.AGENTLAB_SSH_KEYS_DIR || DEFAULT_KEYS_DIR;
  let names: string[] = [];
  try {
    names = readdirSync(keysDir).filter((name) => !name.endsWith(".pub"));
  } catch {
    // absent, or not readable by this user (the installer makes it 0700 root): nothing from there
  }
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const name of names) {
    const path = join(keysDir, name);
    const text = readKeyFile(path);
    if (text !== undefined && looksPrivate(text)) {
      identities.push({ kind: "file", path, source: keysDir, text, explicit: false });
    }
  }
  for (const name of HOME_KEYS) {
    const path = join(home, ".ssh", name);
    if (identities.some((id) => id.kind === "file" && id.path === path)) continue;
    const text = readKeyFile(path);
    if (text !== undefined && looksPrivate(text)) {
      identities.push({ kind: "file", path, source: "~/.ssh", text, explicit: false });
    }
  }
  return identities;
}

function rank(name: string): number {
  const at = PREFERRED_IN_KEYS_DIR.indexOf(name);
  return at === -1 ? PREFERRED_IN_KEYS_DIR.length : at;
}

/** Reads a passphrase from the terminal without echo; undefined when there is no terminal to ask. */
export type PassphrasePrompt = (question: string) => Promise<string | undefined>;

function isEncryptedError(error: Error): boolean {
  return /encrypted|passphrase/i.test(error.message) && !/bad decrypt|integrity/i.test(error.message);
}

/**
 * The parsed private key of a file identity, decrypting it with a passphrase from the prompt (three
 * tries, as ssh). undefined when it cannot be used and was not given explicitly; then `skipped` says why.
 */
export async function unlock(
  identity: Extract<Identity, { kind: "file" }>,
  prompt: PassphrasePrompt,
): Promise<{ key?: ParsedKey; skipped?: string }> {
  const first = ssh2.utils.parseKey(identity.text);
  if (!(first instanceof Error)) return { key: Array.isArray(first) ? first[0]! : first };
  if (!isEncryptedError(first)) return refuse(identity, `${identity.path}: ${first.message}`);
  for (let attempt = 0; attempt < 3; attempt++) {
    const passphrase = await prompt(`Enter passphrase for key '${identity.path}': `);
    if (passphrase === undefined) {
      return refuse(
        identity,
        `${identity.path} is encrypted and there is no terminal to ask for its passphrase`,
        `load it into ssh-agent first (ssh-add ${identity.path}), or run agentlab ssh from a terminal`,
      );
    }
    if (passphrase === "") break;
    const parsed = ssh2.utils.parseKey(identity.text, passphrase);
    if (!(parsed instanceof Error)) return { key: Array.isArray(parsed) ? parsed[0]! : parsed };
  }
  return refuse(
    identity,
    `${identity.path}: wrong passphrase`,
    `check it with ssh-keygen -y -f ${identity.path}, or load the key into ssh-agent: ssh-add ${identity.path}`,
  );
}

function refuse(
  identity: Extract<Identity, { kind: "file" }>,
  why: string,
  hint?: string,
): { skipped: string } {
  if (identity.explicit) {
    throw new AgentlabError("SSH_KEY_UNUSABLE", `${identity.source}: ${why}`, hint ? { hint } : {});
  }
  return { skipped: why };
}

/** How an identity is named in messages. */
export function identityName(identity: Identity): string {
  return identity.kind === "agent" ? `ssh-agent (${identity.socket})` : identity.path;
}
