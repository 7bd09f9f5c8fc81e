import { readFileSync } from "node:fs";
import { proxmoxApi } from "proxmox-api";
import { Agent, fetch as undiciFetch } from "undici";
import { AgentlabError } from "../../protocol/errors.js";
import { type HttpMethod, type Params, PveRequestError, type PveTransport } from "./transport.js";

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

/** The API backend's transport: HTTPS with an API token, TLS verified unless configured otherwise. */
export class ApiTransport implements PveTransport {
  readonly kind = "api" as const;
  readonly calls = { count: 0 };
  private readonly dispatcher: Agent;
  private readonly host: string;
  private readonly port: number;
  private readonly schema: "https" | "http";
  readonly tokenId: string;
  private readonly tokenSecret: string;

  constructor(private readonly options: ApiTransportOptions) {
    const url = new URL(options.url);
    this.schema = url.protocol === "http:" ? "http" : "https";
    this.host = url.hostname;
    // URL drops a port equal to the scheme's default (https://pve:443 gives ""), so read it from the text.
    const explicitPort = /^[a-z]+:\/\/(?:\[[^\]]+\]|[^/:]+):(\d+)/i.exec(options.url)?.[1];
    this.port = explicitPort ? Number(explicitPort) : 8006;
    const { tokenID, tokenSecret } = splitToken(options.token);
    this.tokenId = tokenID;
    this.tokenSecret = tokenSecret;
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
  }

  async request(
    method: HttpMethod,
    path: string,
    params: Params = {},
    signal?: AbortSignal,
  ): Promise<unknown> {
    const api = proxmoxApi({
      host: this.host,
      port: this.port,
      schema: this.schema,
      tokenID: this.tokenId,
      tokenSecret: this.tokenSecret,
      queryTimeout: this.options.timeoutMs,
      fetch: ((input: string | URL, init: Record<string, unknown> = {}) => {
        this.calls.count++;
        const signals = [init.signal as AbortSignal | undefined, signal].filter(
          (s): s is AbortSignal => s !== undefined,
        );
        return undiciFetch(input, {
          ...init,
          dispatcher: this.dispatcher,
          ...(signals.length > 0 ? { signal: AbortSignal.any(signals) } : {}),
        } as Parameters<typeof undiciFetch>[1]);
      }) as unknown as typeof globalThis.fetch,
    });
    // proxmox-api builds the path from property accesses; $() adds one escaped segment.
    let node = api as unknown as Record<string, unknown> & { $(segment: string): unknown };
    for (const segment of path.split("/").filter(Boolean)) {
      node = node.$(decodeURIComponent(segment)) as typeof node;
    }
    const verb = node[`$${method.toLowerCase()}`] as (p: Params) => Promise<unknown>;
    const clean: Params = {};
    for (const [key, value] of Object.entries(params)) if (value !== undefined) clean[key] = value;
    try {
      return await verb(clean);
    } catch (error) {
      if (signal?.aborted)
        throw new AgentlabError("CANCELLED", `${method} ${path}: cancelled`, { cause: signal.reason });
      throw parseApiError(method, path, error);
    }
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}
