/**
 * The control listener's certificate: the operator's PEM files (control_tls_cert / control_tls_key), or
 * a self-signed pair the daemon makes once and keeps under data_dir/control-tls (directory 0700, key
 * 0600). Node 20 can make keys but not X.509 certificates, so the pair comes from `openssl req -x509`:
 * openssl is on every Proxmox VE host (pve-manager depends on it), which an npm generator such as
 * `selfsigned` would not improve on. Clients pin the certificate's SHA-256 fingerprint on first use.
 */

import { createPrivateKey, X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import type { Config } from "../../config/config.js";
import { parseHostPort } from "../../config/net.js";
import { AgentlabError } from "../../protocol/errors.js";

export interface ControlCertificate {
  cert: string;
  key: string;
  /** SHA-256 of the DER certificate, as "AB:CD:..." (what `openssl x509 -fingerprint -sha256` prints). */
  fingerprint: string;
  certPath: string;
  keyPath: string;
  /** True when this start made the self-signed pair. */
  generated: boolean;
}

function failed(message: string, hint: string, cause?: unknown): AgentlabError {
  return new AgentlabError("CONTROL_LISTEN_FAILED", message, { hint, ...(cause ? { cause } : {}) });
}

/** Read and check a PEM pair: the certificate parses, the key parses and belongs to it. */
function readPair(certPath: string, keyPath: string, keys: string): Omit<ControlCertificate, "generated"> {
  let cert: string;
  let key: string;
  try {
    cert = readFileSync(certPath, "utf8");
    key = readFileSync(keyPath, "utf8");
  } catch (error) {
    throw failed(
      `${keys}: cannot read ${(error as NodeJS.ErrnoException).path ?? certPath}: ${(error as Error).message}`,
      "check the path and that the daemon's user may read it",
      error,
    );
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
    if (!x509.checkPrivateKey(createPrivateKey(key)))
      throw new Error("the key does not belong to the certificate");
  } catch (error) {
    throw failed(
      `${keys}: ${certPath} and ${keyPath} are not a PEM certificate and its private key: ${(error as Error).message}`,
      "give the certificate (with its chain) in control_tls_cert and its unencrypted private key in control_tls_key",
      error,
    );
  }
  return { cert, key, fingerprint: x509.fingerprint256, certPath, keyPath };
}

/** The names a client may use for this host, for the self-signed certificate's subjectAltName. */
function altNames(listen: string): string {
  const names = new Set([`DNS:${hostname()}`, "DNS:localhost", "IP:127.0.0.1", "IP:::1"]);
  const host = parseHostPort(listen)?.host ?? "";
  if (isIP(host)) names.add(`IP:${host}`);
  else if (host !== "") names.add(`DNS:${host}`);
  return [...names].join(",");
}

export async function controlCertificate(config: Config): Promise<ControlCertificate> {
  if (config.control_tls_cert !== "") {
    return {
      ...readPair(config.control_tls_cert, config.control_tls_key, "control_tls_cert/control_tls_key"),
      generated: false,
    };
  }
  const dir = join(config.data_dir, "control-tls");
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  if (existsSync(certPath) && existsSync(keyPath)) {
    return { ...readPair(certPath, keyPath, `self-signed certificate in ${dir}`), generated: false };
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const tmpCert = `${certPath}.tmp-${process.pid}`;
  const tmpKey = `${keyPath}.tmp-${process.pid}`;
  try {
    await execa(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-sha256",
        "-days",
        "3650",
        "-nodes",
        "-subj",
        `/CN=agentlabd ${hostname()}`,
        "-addext",
        `subjectAltName=${altNames(config.control_listen)}`,
        "-keyout",
        tmpKey,
        "-out",
        tmpCert,
      ],
      { timeout: 30_000, stdin: "ignore" },
    );
    chmodSync(tmpKey, 0o600);
    renameSync(tmpKey, keyPath);
    renameSync(tmpCert, certPath);
  } catch (error) {
    rmSync(tmpCert, { force: true });
    rmSync(tmpKey, { force: true });
    const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
    throw failed(
      missing
        ? "control_listen: cannot make a self-signed certificate: openssl is not installed"
        : `control_listen: openssl could not make a self-signed certificate: ${(error as { stderr?: string }).stderr?.trim() || (error as Error).message}`,
      "install openssl (apt install openssl), or give your own certificate in control_tls_cert and control_tls_key",
      error,
    );
  }
  return { ...readPair(certPath, keyPath, `self-signed certificate in ${dir}`), generated: true };
}
