/**
 * Binding one of the daemon's TCP listeners (control_listen, metrics_listen) from its config key:
 * the bind either succeeds or stops the start-up with an error that names the key, the address and
 * what to do, so a daemon never runs with a listener that silently is not there.
 */
import type { Server } from "node:net";
import { parseHostPort } from "../config/net.js";
import { AgentlabError, type ErrorCode } from "../protocol/errors.js";

export interface TcpListenSpec {
  /** The config key the address comes from, e.g. "metrics_listen". */
  key: string;
  /** Its value, "host:port" (validated by the config). */
  listen: string;
  /** The error code a failed bind carries, e.g. "METRICS_LISTEN_FAILED". */
  code: ErrorCode;
  /** What to do when no interface has the address (EADDRNOTAVAIL). */
  addressHint: string;
  /** What to do when the port needs privileges (EACCES). */
  permissionHint: string;
}

/** The error for a failed bind, with the key's name in the message and a hint per cause. */
export function tcpListenError(spec: TcpListenSpec, error: NodeJS.ErrnoException): AgentlabError {
  const { key, listen, code } = spec;
  const details = { key, listen };
  switch (error.code) {
    case "EADDRINUSE":
      return new AgentlabError(code, `${key}: address ${listen} is already in use`, {
        hint: `stop what holds it (ss -ltnp 'sport = :${parseHostPort(listen)?.port}' names it), or set ${key} to another port`,
        details,
        cause: error,
      });
    case "EADDRNOTAVAIL":
      return new AgentlabError(code, `${key}: ${listen}: no interface of this host has that address`, {
        hint: spec.addressHint,
        details,
        cause: error,
      });
    case "EACCES":
      return new AgentlabError(code, `${key}: permission denied binding ${listen}`, {
        hint: spec.permissionHint,
        details,
        cause: error,
      });
    default:
      return new AgentlabError(code, `${key}: cannot listen on ${listen}: ${error.message}`, {
        details,
        cause: error,
      });
  }
}

/**
 * Binds the server to the spec's address and resolves with where it listens, as a URL's host and
 * port (the port the kernel chose when the config says 0; an IPv6 host in brackets). A bind error
 * rejects with tcpListenError's answer; later errors are the caller's to log.
 */
export async function listenTcp(
  server: Server,
  spec: TcpListenSpec,
): Promise<{ host: string; port: number }> {
  const { host, port } = parseHostPort(spec.listen)!;
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => reject(tcpListenError(spec, error));
    server.once("error", onError);
    server.listen({ port, ...(host === "" ? {} : { host }) }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  const bound = server.address();
  return {
    host: host === "" ? "0.0.0.0" : host.includes(":") ? `[${host}]` : host,
    port: typeof bound === "object" && bound ? bound.port : port,
  };
}
