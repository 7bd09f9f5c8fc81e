import { AsyncLocalStorage } from "node:async_hooks";
import { readFileSync } from "node:fs";
import { type Proxmox, proxmoxApi } from "proxmox-api";
import { Agent, fetch as undiciFetch } from "undici";
import { AgentlabError } from "../../protocol/errors.js";
import {
  type ApiPath,
  type HttpMethod,
  type Params,
  PveRequestError,
  type PveTransport,
} from "./transport.js";

export interface ApiTransportOptions {
  /** https://host:8006 */
  url: string;
  /** USER@REALM!TOKENID=SECRET */
  token: string;
  timeoutMs: number;
  tlsCaPath?: string;
  tlsInsecure?: boolean;
}

/**
 * proxmox-api reports failures only as message text; take the status, the reason and Proxmox's
 * per-field errors back out of it.
 */
export function parseApiError(method: HttpMethod, path: string, error: unknown): unknown {
  const message = error instanceof Error ? error.message : String(error);
  const match =
    /(?:return Error|connection failed with) (\d{3}) ([\s\S]*?)(?:: | return: )(\{[\s\S]*\})$/.exec(message);
  if (!match) return error;
  let body: { message?: unknown; errors?: unknown } = {};
  try {
    body = JSON.parse(match[3]!) as typeof body;
  } catch {
    // The body is informational; the status and reason are enough.
  }
  const reason =
    typeof body.message === "string" && body.message.trim() !== "" ? body.message.trim() : match[2]!;
  const errors =
    body.errors && typeof body.errors === "object" ? (body.errors as Record<string, string>) : undefined;
  return new PveRequestError(method, path, reason, Number(match[1]), errors, undefined, { cause: error });
}

function splitToken(token: string): { tokenID: string; tokenSecret: string } {
  const eq = token.lastIndexOf("=");
  return { tokenID: token.slice(0, eq), tokenSecret: token.slice(eq + 1) };
}

/** What the one shared client needs to know about the request it is sending right now. */
interface InFlight {
  method: HttpMethod;
  signal: AbortSignal | undefined;
  /** The first network failure; proxmox-api re-sends once after it (ProxmoxEngine.ts doRequest). */
  failure?: unknown;
}

/** The API backend's transport: HTTPS with an API token, TLS verified unless configured otherwise. */
export class ApiTransport implements PveTransport {
  readonly kind = "api" as const;
  readonly calls = { count: 0 };
  private readonly dispatcher: Agent;
  readonly tokenId: string;
  /**
   * One proxmox-api client for the daemon's lifetime, as its authors intend: it holds the
   * credentials and the fetch that owns our keep-alive connection pool. The per-request bits (the
   * caller's abort signal) travel through `inFlight` instead of a fresh client per call.
   */
  private readonly api: Proxmox.Api;
  private readonly inFlight = new AsyncLocalStorage<InFlight>();

  constructor(options: ApiTransportOptions) {
    const url = new URL(options.url);
    const schema = url.protocol === "http:" ? "http" : "https";
    // URL drops a port equal to the scheme's default (https://pve:443 gives ""), so read it from the text.
    const explicitPort = /^[a-z]+:\/\/(?:\[[^\]]+\]|[^/:]+):(\d+)/i.exec(options.url)?.[1];
    const { tokenID, tokenSecret } = splitToken(options.token);
    this.tokenId = tokenID;
    let ca: string | undefined;
    if (options.tlsCaPath) {
      try {
        ca = readFileSync(options.tlsCaPath, "utf8");
      } catch (error) {
        throw new AgentlabError("CONFIG_INVALID", `proxmox_tls_ca_path: cannot read ${options.tlsCaPath}`, {
          hint: "copy the cluster CA from the Proxmox host: /etc/pve/pve-root-ca.pem",
          cause: error,
        });
      }
    }
    this.dispatcher = new Agent({
      connect: { ...(ca ? { ca } : {}), rejectUnauthorized: !options.tlsInsecure },
      connectTimeout: Math.min(options.timeoutMs, 10_000),
    });
    this.api = proxmoxApi({
      host: url.hostname,
      port: explicitPort ? Number(explicitPort) : 8006,
      schema,
      tokenID,
      tokenSecret,
      queryTimeout: options.timeoutMs,
      fetch: ((input: string | URL, init: Record<string, unknown> = {}) => this.send(input, init)) as never,
    });
  }

  /** The fetch behind the shared client: our dispatcher, the caller's signal, no blind re-sends. */
  private async send(input: string | URL, init: Record<string, unknown>): Promise<unknown> {
    const flight = this.inFlight.getStore();
    // proxmox-api re-sends a request once after any network error or its own timeout, POST
    // included. A POST/PUT/DELETE that may already have reached Proxmox (a clone, a destroy) must
    // not run twice, so only GETs get that second try; the others report the first failure.
    if (flight?.failure !== undefined && flight.method !== "GET") throw flight.failure;
    this.calls.count++;
    const signals = [init.signal as AbortSignal | undefined, flight?.signal].filter(
      (s): s is AbortSignal => s !== undefined,
    );
    try {
      return await undiciFetch(input, {
        ...init,
        dispatcher: this.dispatcher,
        ...(signals.length > 0 ? { signal: AbortSignal.any(signals) } : {}),
      } as Parameters<typeof undiciFetch>[1]);
    } catch (error) {
      if (flight && flight.failure === undefined) flight.failure = error;
      throw error;
    }
  }

  async request(
    method: HttpMethod,
    path: ApiPath,
    params: Params = {},
    signal?: AbortSignal,
  ): Promise<unknown> {
    // The backend is written once for pvesh and HTTPS, so it names paths as raw segments, not
    // through proxmox-api's typed property chain (which pvesh cannot take). This walk is the narrow
    // escape hatch: `$()` escapes only '/' (proxmox-api proxy.ts), and a raw '%', '?' or '#' in a
    // volid would change the URL, so every segment is percent-encoded here; pve-http-server
    // unescapes the whole path before routing (AnyEvent.pm:1452).
    let node = this.api as unknown as { $(segment: string): typeof node } & Record<string, unknown>;
    for (const segment of path.segments) node = node.$(encodeURIComponent(segment));
    const verb = node[`$${method.toLowerCase()}`] as (p: Params) => Promise<unknown>;
    const clean: Params = {};
    for (const [key, value] of Object.entries(params)) if (value !== undefined) clean[key] = value;
    try {
      return await this.inFlight.run({ method, signal }, () => verb(clean));
    } catch (error) {
      if (signal?.aborted)
        throw new AgentlabError("CANCELLED", `${method} ${path}: cancelled`, { cause: signal.reason });
      throw parseApiError(method, String(path), error);
    }
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}
