/**
 * A private CA and a server certificate made with openssl on first start, like a fresh PVE install:
 * clients verify with DIR/tls/ca.pem, and without it verification fails as against a real node.
 */
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tlsDir } from "./paths.js";
import { acquireLock } from "./store.js";

export interface TlsFiles {
  caPath: string;
  certPath: string;
  keyPath: string;
}

export function tlsFiles(dir: string): TlsFiles {
  const root = tlsDir(dir);
  return {
    caPath: join(root, "ca.pem"),
    certPath: join(root, "server.pem"),
    keyPath: join(root, "server.key"),
  };
}

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/**
 * RSA-2048 keys (what a PVE install makes), generated once per machine and user and reused by every
 * simulator: a key costs about 0.3 s of CPU (seconds on a loaded machine), and an API start needs two.
 * Each simulator still signs its own CA (a subject of its own) and server certificate, so one
 * simulator's CA does not verify another's server.
 */
async function sharedKeys(): Promise<{ ca: string; server: string }> {
  const root = join(tmpdir(), `pvesim-tls-keys-${process.getuid?.() ?? 0}`);
  const keys = { ca: join(root, "ca.key"), server: join(root, "server.key") };
  if (existsSync(keys.server)) return keys;
  const lock = await acquireLock(`${root}.lock`);
  try {
    if (existsSync(keys.server)) return keys;
    const work = mkdtempSync(`${root}.tmp-`);
    try {
      for (const name of ["ca.key", "server.key"]) {
        openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", name], work);
      }
      rmSync(root, { recursive: true, force: true });
      renameSync(work, root);
    } catch (err) {
      rmSync(work, { recursive: true, force: true });
      const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? "";
      throw new Error(`openssl failed: ${(err as Error).message}\n${stderr}`);
    }
    return keys;
  } finally {
    lock.release();
  }
}

/** Creates DIR/tls once (built in a temp dir and renamed into place, so it is never half there). */
export async function ensureTls(dir: string): Promise<TlsFiles> {
  const files = tlsFiles(dir);
  if (existsSync(files.certPath)) return files;
  const lock = await acquireLock(join(dir, "tls.lock"));
  try {
    if (existsSync(files.certPath)) return files;
    const keys = await sharedKeys();
    const work = mkdtempSync(join(dir, ".tls-"));
    try {
      copyFileSync(keys.ca, join(work, "ca.key"));
      copyFileSync(keys.server, join(work, "server.key"));
      openssl(
        [
          "req",
          "-x509",
          "-key",
          "ca.key",
          "-out",
          "ca.pem",
          "-days",
          "3650",
          "-subj",
          `/CN=Proxmox Virtual Environment/OU=${randomUUID()}/O=PVE Cluster Manager CA`,
          "-addext",
          "basicConstraints=critical,CA:TRUE",
          "-addext",
          "keyUsage=critical,keyCertSign,cRLSign",
        ],
        work,
      );
      openssl(
        [
          "req",
          "-new",
          "-key",
          "server.key",
          "-out",
          "server.csr",
          "-subj",
          "/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN=pve.simulated",
        ],
        work,
      );
      writeFileSync(
        join(work, "ext.cnf"),
        [
          "basicConstraints=CA:FALSE",
          "keyUsage=critical,digitalSignature,keyEncipherment",
          "extendedKeyUsage=serverAuth",
          "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:pve.simulated",
          "",
        ].join("\n"),
      );
      openssl(
        [
          "x509",
          "-req",
          "-in",
          "server.csr",
          "-CA",
          "ca.pem",
          "-CAkey",
          "ca.key",
          "-set_serial",
          `0x${randomBytes(8).toString("hex")}`,
          "-days",
          "730",
          "-out",
          "server.pem",
          "-extfile",
          "ext.cnf",
        ],
        work,
      );
      rmSync(join(work, "server.csr"));
      rmSync(join(work, "ext.cnf"));
      rmSync(tlsDir(dir), { recursive: true, force: true });
      renameSync(work, tlsDir(dir));
    } catch (err) {
      rmSync(work, { recursive: true, force: true });
      const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? "";
      throw new Error(`openssl failed: ${(err as Error).message}\n${stderr}`);
    }
    return files;
  } finally {
    lock.release();
  }
}
