/**
 * The client half of the remote control listener: TLS with the pinned certificate, the WebSocket that
 * carries JSON-RPC, /health, and a certificate probe that sends nothing (used to pin on first use and to
 * name the new fingerprint when a pin no longer matches). The token is only ever sent over a connection
 * whose certificate matched the pin (or a public CA and the host name, when nothing is pinned).
 */
import { request } from "node:https";
import { type PeerCertificate, rootCertificates, connect as tlsConnect } from "node:tls";
import type { WebSocket } from "ws";
import { AgentlabError, type ErrorCode, isErrorCode } from "../../protocol/errors.js";
import { MAX_FRAME_BYTES } from "../../protocol/socket.js";
import { HEALTH_PATH, RPC_PATH } from "../../protocol/websocket.js";
import type { CertificatePin, Connection } from "./connection.js";

type Remote = Extract<Connection, { kind: "remote" }>;

/** Our marker on the error checkServerIdentity returns for a fingerprint that differs from the pin. */
const PIN_MISMATCH = "ERR_AGENTLAB_PIN_MISMATCH";

/** Certificate verification failures OpenSSL reports (Node passes them as the error's code). */
const TLS_VERIFY_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_GET_ISSUER_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE",
]);

/** "ab:cd", "ABCD", "SHA256:AB:CD" all become "AB:CD". */
export function normaliseFingerprint(text: string): string | undefined {
  const hex = text
    .trim()
    .replace(/^sha-?256[:=]?/i, "")
    .replace(/[:\s]/g, "")
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return undefined;
  return hex.match(/../g)!.join(":");
}

function toPem(raw: Buffer): string {
  const lines = raw.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----\n`;
}

/**
 * TLS settings for a connection: with a pin, trust exactly that certificate (as its own anchor when it is
 * self-signed) and check its fingerprint instead of the host name; without one, the system's CAs and
 * the host name, as any HTTPS client would.
 */
export function tlsOptions(pin: CertificatePin | undefined): Record<string, unknown> {
  if (!pin) return {};
  return {
    ca: [...rootCertificates, pin.certificate],
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      if (cert.fingerprint256 === pin.fingerprint) return undefined;
      const error = new Error(
        `certificate fingerprint ${cert.fingerprint256} is not the pinned ${pin.fingerprint}`,
      );
      (error as NodeJS.ErrnoException).code = PIN_MISMATCH;
      return error;
    },
  };
}

function hostPort(endpoint: string): { host: string; port: number } {
  const url = new URL(endpoint);
  return { host: url.hostname.replace(/^\[|\]$/g, ""), port: url.port === "" ? 443 : Number(url.port) };
}

export interface ProbedCertificate {
  fingerprint: string;
  certificate: string;
  /** Whether the system's CAs and the host name vouch for it (a public or tailnet certificate). */
  trusted: boolean;
  subject: string;
}

/** Open TLS, read the server's certificate, close. Sends no request and no token. */
export function probeCertificate(endpoint: string, timeoutMs = 10_000): Promise<ProbedCertificate> {
  const { host, port } = hostPort(endpoint);
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host,
      port,
      servername: /^[\d.:]+$/.test(host) ? "" : host,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unreachable(endpoint, `no TLS answer within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const cert = socket.getPeerCertificate(true);
      socket.destroy();
      if (!cert?.raw) {
        reject(unreachable(endpoint, "the server sent no certificate"));
        return;
      }
      resolve({
        fingerprint: cert.fingerprint256,
        certificate: toPem(cert.raw),
        trusted: socket.authorized,
        subject: String(cert.subject?.CN ?? ""),
      });
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(connectFailure(endpoint, error, undefined));
    });
  });
}

function unreachable(endpoint: string, reason: string, cause?: unknown): AgentlabError {
  return new AgentlabError("ENDPOINT_UNREACHABLE", `cannot reach agentlabd at ${endpoint}: ${reason}`, {
    details: { endpoint },
    ...(cause ? { cause } : {}),
  });
}

/** Explain a failed connection: nobody listening, no such host, no route, or a certificate problem. */
export function connectFailure(
  endpoint: string,
  error: NodeJS.ErrnoException,
  pin: CertificatePin | undefined,
): AgentlabError {
  const code = error.code ?? "";
  switch (code) {
    case "ECONNREFUSED":
      return unreachable(
        endpoint,
        "connection refused (nothing listens there: is control_listen set and agentlabd running?)",
        error,
      );
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return unreachable(endpoint, `no such host (${error.message})`, error);
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return unreachable(endpoint, `no route to the host (${code})`, error);
    case "ECONNRESET":
    case "EPIPE":
      return unreachable(
        endpoint,
        "the connection was closed during the TLS handshake (is it an HTTPS port?)",
        error,
      );
  }
  if (code === PIN_MISMATCH || (pin && TLS_VERIFY_CODES.has(code))) {
    return new AgentlabError(
      "FINGERPRINT_MISMATCH",
      `the certificate of ${endpoint} does not match the one pinned (${pin?.fingerprint ?? "?"})`,
      {
        hint: `if the daemon's certificate was replaced on purpose, check the new fingerprint on its host (agentlab status) and pin it again: agentlab connect --endpoint ${endpoint} --token <token> --fingerprint <new fingerprint>; otherwise someone may be intercepting the connection`,
        details: { endpoint, pinned: pin?.fingerprint, tls_error: code },
        cause: error,
      },
    );
  }
  if (TLS_VERIFY_CODES.has(code) || /certificate/i.test(error.message)) {
    return new AgentlabError(
      "CERTIFICATE_UNTRUSTED",
      `the certificate of ${endpoint} is not trusted: ${error.message}`,
      {
        hint: `pin it on first use: agentlab connect --endpoint ${endpoint} --token <token> (it shows the fingerprint to compare with agentlab status on the daemon's host)`,
        details: { endpoint, tls_error: code },
        cause: error,
      },
    );
  }
  return unreachable(endpoint, `${code || "error"}: ${error.message}`, error);
}

/** An HTTP refusal from the listener: its JSON body is {code, message, hint, details}. */
export function httpFailure(endpoint: string, status: number, body: string): AgentlabError {
  let parsed: { code?: unknown; message?: unknown; hint?: unknown; details?: unknown } | undefined;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  if (parsed && isErrorCode(parsed.code) && typeof parsed.message === "string") {
    return new AgentlabError(parsed.code as ErrorCode, parsed.message, {
      ...(typeof parsed.hint === "string" ? { hint: parsed.hint } : {}),
      details: {
        endpoint,
        status,
        ...(typeof parsed.details === "object" && parsed.details ? parsed.details : {}),
      },
    });
  }
  return unreachable(
    endpoint,
    `HTTP ${status} from something that is not agentlabd (${body.slice(0, 120).trim() || "empty body"}); if a proxy is in front, check that it forwards the WebSocket upgrade to ${RPC_PATH}`,
  );
}

/** Open the JSON-RPC WebSocket, authenticated; refusals come back as the daemon's own errors. */
export async function openRemote(remote: Remote, timeoutMs: number): Promise<WebSocket> {
  const url = `${remote.endpoint.replace(/^https:/, "wss:")}${RPC_PATH}`;
  // Loaded here, not at start: only remote connections need it, and it is a tenth of a second of
  // every local command's start-up otherwise (issue 15's CLI cold start).
  const { WebSocket } = await import("ws");
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      headers: { Authorization: `Bearer ${remote.token}` },
      handshakeTimeout: Math.min(timeoutMs, 30_000),
      maxPayload: MAX_FRAME_BYTES * 16,
      ...tlsOptions(remote.pin),
    });
    ws.once("open", () => {
      ws.removeAllListeners("error");
      ws.removeAllListeners("unexpected-response");
      resolve(ws);
    });
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk.length + body.length < 65_536 ? chunk : ""));
      res.on("end", () => reject(httpFailure(remote.endpoint, res.statusCode ?? 0, body)));
      res.on("error", (error) => reject(connectFailure(remote.endpoint, error, remote.pin)));
    });
    ws.once("error", (error) => {
      if (/handshake timed out|Opening handshake has timed out/i.test(error.message)) {
        reject(
          unreachable(remote.endpoint, `no answer within ${Math.min(timeoutMs, 30_000) / 1000}s`, error),
        );
        return;
      }
      reject(connectFailure(remote.endpoint, error as NodeJS.ErrnoException, remote.pin));
    });
  });
}

export interface Health {
  status: number;
  body: { status?: string; failed?: Record<string, string> };
}

/** GET /health over the same TLS settings; address refusals come back as errors. */
export function fetchHealth(
  endpoint: string,
  pin: CertificatePin | undefined,
  timeoutMs = 15_000,
): Promise<Health> {
  const { host, port } = hostPort(endpoint);
  return new Promise((resolve, reject) => {
    const req = request(
      { host, port, path: HEALTH_PATH, method: "GET", timeout: timeoutMs, ...tlsOptions(pin) },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (text += chunk));
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          if (status !== 200 && status !== 503) {
            reject(httpFailure(endpoint, status, text));
            return;
          }
          try {
            resolve({ status, body: JSON.parse(text) });
          } catch {
            reject(httpFailure(endpoint, status, text));
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" })));
    req.on("error", (error) => reject(connectFailure(endpoint, error, pin)));
    req.end();
  });
}
