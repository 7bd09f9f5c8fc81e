/**
 * The daemon's own SSH identity: the key `sandbox exec` and `sandbox cp` log in to guests with. Made once
 * (ed25519, OpenSSH format) under data_dir/ssh (directory 0700, private key 0600, owned by the daemon's
 * user: root in production) and kept across restarts, because every guest provisioned since carries its
 * public half in the agent user's authorized_keys (cloud-init), next to the configured ssh_public_key.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import ssh2 from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";

export interface SshIdentity {
  /** The private key, OpenSSH PEM. */
  privateKey: string;
  /** The authorized_keys line: "ssh-ed25519 AAAA... agentlabd@<host>". */
  publicKey: string;
  path: string;
}

export const SSH_IDENTITY_FILE = "id_ed25519";

type KeyPairGenerator = () => { private: string; public: string };

const generateEd25519: KeyPairGenerator = () =>
  ssh2.utils.generateKeyPairSync("ed25519", { comment: `agentlabd@${hostname()}` });

/** Tries before giving up on the generator: one pair in 256 is unusable, sixteen in a row never are. */
const GENERATE_TRIES = 16;

/**
 * A pair that ssh2 can read back. ssh2 1.17 strips leading zero bytes from an ed25519 public key, so
 * about one pair in 256 (a public key starting with 0x00) comes out malformed and parseKey refuses it
 * (mscdex/ssh2#1390, #1513). Written to disk, such a key would stop every later start of the daemon.
 */
function generateUsablePair(generate: KeyPairGenerator): { private: string; public: string } {
  for (let attempt = 1; ; attempt++) {
    const pair = generate();
    const usable = [pair.private, pair.public].every((text) => !(ssh2.utils.parseKey(text) instanceof Error));
    if (usable) return pair;
    if (attempt >= GENERATE_TRIES)
      throw new Error(`ssh2 made ${GENERATE_TRIES} unreadable key pairs in a row`);
  }
}

/** Read the identity under `dataDir`/ssh, making it first when there is none. */
export function loadSshIdentity(dataDir: string, generate: KeyPairGenerator = generateEd25519): SshIdentity {
  const dir = join(dataDir, "ssh");
  const path = join(dir, SSH_IDENTITY_FILE);
  try {
    if (!existsSync(path)) {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      chmodSync(dir, 0o700);
      const pair = generateUsablePair(generate);
      // Written aside and renamed, so a crash never leaves a half key that the next start would trust.
      const tmp = `${path}.tmp-${process.pid}`;
      writeFileSync(tmp, pair.private, { mode: 0o600 });
      writeFileSync(`${path}.pub`, `${pair.public}\n`, { mode: 0o644 });
      renameSync(tmp, path);
    }
    const privateKey = readFileSync(path, "utf8");
    const parsed = ssh2.utils.parseKey(privateKey);
    if (parsed instanceof Error) throw parsed;
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    if (key === undefined) throw new Error("no key in the file");
    const publicKey = `${key.type} ${key.getPublicSSH().toString("base64")} agentlabd@${hostname()}`;
    return { privateKey, publicKey, path };
  } catch (error) {
    rmSync(`${path}.tmp-${process.pid}`, { force: true });
    throw new AgentlabError(
      "CONFIG_INVALID",
      `cannot load agentlabd's SSH key ${path}: ${(error as Error).message}`,
      {
        hint: `check that data_dir (${dataDir}) is writable by agentlabd; a damaged key may be removed (a new one is made at start, and only sandboxes created after that accept it)`,
        details: { path },
        cause: error,
      },
    );
  }
}
