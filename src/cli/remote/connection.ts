/**
 * Which daemon a command talks to: flags > environment > saved (agentlab connect) > the local socket.
 * --endpoint / AGENTLAB_ENDPOINT choose a remote daemon, --socket / AGENTLAB_SOCKET a local one; at the
 * same level the flag that names a transport wins, so `--socket` still reaches the local daemon of a
 * user who has connected elsewhere.
 */
import { AgentlabError } from "../../protocol/errors.js";
import { clientConfigPath, loadSaved } from "./saved.js";

export interface CertificatePin {
  fingerprint: string;
  certificate: string;
}

export type Connection =
  | { kind: "socket"; path: string; source: string }
  | {
      kind: "remote";
      /** The endpoint's origin, e.g. https://host.tailnet.ts.net:8845 */
      endpoint: string;
      token: string;
      source: string;
      tokenSource: string;
      pin?: CertificatePin;
    };

export interface ConnectionFlags {
  socket?: string | undefined;
  socketGiven: boolean;
  endpoint?: string | undefined;
  token?: string | undefined;
}

/** An endpoint URL as the origin the client connects to; https only (the listener speaks nothing else). */
export function normaliseEndpoint(text: string, from: string): string {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new AgentlabError("USAGE", `${from}: ${JSON.stringify(text)} is not a URL`, {
      hint: "give the daemon's control URL, e.g. https://host.tailnet.ts.net:8845",
    });
  }
  if (url.protocol !== "https:") {
    throw new AgentlabError("USAGE", `${from}: ${text} is not an https:// URL`, {
      hint: "the control listener speaks HTTPS only, e.g. https://host.tailnet.ts.net:8845",
    });
  }
  if (url.pathname !== "/" || url.search !== "" || url.hash !== "") {
    throw new AgentlabError("USAGE", `${from}: give the endpoint without a path (${url.origin})`);
  }
  return url.origin;
}

const nonEmpty = (value: string | undefined) => (value !== undefined && value !== "" ? value : undefined);

export function resolveConnection(
  flags: ConnectionFlags,
  env: NodeJS.ProcessEnv = process.env,
  defaultSocket = "/run/agentlab/agentlabd.sock",
): Connection {
  const local = (path: string, source: string): Connection => ({ kind: "socket", path, source });
  let endpoint: { url: string; source: string } | undefined;
  if (nonEmpty(flags.endpoint))
    endpoint = { url: normaliseEndpoint(flags.endpoint!, "--endpoint"), source: "--endpoint" };
  else if (flags.socketGiven && flags.socket) return local(flags.socket, "--socket");
  else if (nonEmpty(env.AGENTLAB_ENDPOINT)) {
    endpoint = {
      url: normaliseEndpoint(env.AGENTLAB_ENDPOINT!, "AGENTLAB_ENDPOINT"),
      source: "AGENTLAB_ENDPOINT",
    };
  } else if (nonEmpty(env.AGENTLAB_SOCKET)) return local(env.AGENTLAB_SOCKET!, "AGENTLAB_SOCKET");

  const savedPath = clientConfigPath(env);
  const saved = loadSaved(savedPath);
  if (endpoint === undefined) {
    if (!saved) {
      if (nonEmpty(flags.token) || nonEmpty(env.AGENTLAB_TOKEN)) {
        throw new AgentlabError("USAGE", "a token was given but no endpoint to send it to", {
          hint: "add --endpoint https://<host>:8845 (or AGENTLAB_ENDPOINT), or connect once: agentlab connect --endpoint <url> --token <token>",
        });
      }
      return local(flags.socket ?? defaultSocket, "default");
    }
    endpoint = { url: saved.endpoint, source: savedPath };
  }
  const sameAsSaved = saved !== undefined && saved.endpoint === endpoint.url;
  let token: { value: string; source: string } | undefined;
  if (nonEmpty(flags.token)) token = { value: flags.token!, source: "--token" };
  else if (nonEmpty(env.AGENTLAB_TOKEN)) token = { value: env.AGENTLAB_TOKEN!, source: "AGENTLAB_TOKEN" };
  else if (sameAsSaved) token = { value: saved.token, source: savedPath };
  if (!token) {
    throw new AgentlabError("USAGE", `no token for ${endpoint.url}`, {
      hint: "give --token (or AGENTLAB_TOKEN), or save it once: agentlab connect --endpoint <url> --token <token>",
    });
  }
  return {
    kind: "remote",
    endpoint: endpoint.url,
    token: token.value,
    source: endpoint.source,
    tokenSource: token.source,
    ...(sameAsSaved && saved.trust === "pin"
      ? { pin: { fingerprint: saved.fingerprint, certificate: saved.certificate } }
      : {}),
  };
}

/** One line for `agentlab status`: which daemon this CLI talks to, and why. */
export function describeConnection(connection: Connection): string {
  const from = (source: string) => (source === "default" ? "default" : `from ${source}`);
  if (connection.kind === "socket") return `local socket ${connection.path} (${from(connection.source)})`;
  const pin = connection.pin
    ? `, certificate pinned ${connection.pin.fingerprint}`
    : ", certificate checked against the system CAs";
  return `remote ${connection.endpoint} (${from(connection.source)}; token ${from(connection.tokenSource)}${pin})`;
}
