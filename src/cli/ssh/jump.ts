/** The jump host of agentlab ssh --jump-host, in OpenSSH's -J form. */
import { AgentlabError } from "../../protocol/errors.js";

export interface JumpHost {
  user: string;
  host: string;
  port: number;
}

/** "user@host[:port]" as given to --jump-host (OpenSSH's -J form), with --jump-user applied. */
export function parseJumpHost(text: string, user: string | undefined, defaultUser: string): JumpHost {
  const match = /^(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s]+)(?::(\d+))?$/.exec(text.trim());
  if (!match) {
    throw new AgentlabError("USAGE", `--jump-host: ${JSON.stringify(text)} is not [user@]host[:port]`, {
      hint: "e.g. --jump-host host.tailnet.ts.net --jump-user <user>",
    });
  }
  const [, inlineUser, rawHost, portText] = match;
  if (inlineUser && user && inlineUser !== user) {
    throw new AgentlabError("USAGE", `--jump-host names user ${inlineUser} and --jump-user ${user}`, {
      hint: "give the user once",
    });
  }
  const port = portText ? Number(portText) : 22;
  if (port < 1 || port > 65535)
    throw new AgentlabError("USAGE", `--jump-host: port ${portText} is out of range`);
  return { user: user ?? inlineUser ?? defaultUser, host: rawHost!.replace(/^\[|\]$/g, ""), port };
}

export interface JumpSources {
  flags: { host?: string | undefined; user?: string | undefined };
  /** The remote endpoint this invocation uses; undefined on the local socket. */
  endpoint?: string | undefined;
  /** What `agentlab connect` saved. */
  saved?: { endpoint: string; jump_host?: string | undefined; jump_user?: string | undefined } | undefined;
  localUser: string;
  vmid: number;
}

/**
 * The jump host from the flags, else the one `agentlab connect` saved, but only while its endpoint is
 * the one in use: a jump host belongs to the daemon it was saved with. Flags win field by field. A jump
 * user without a host means the endpoint's host, as in `connect`. Also returns the endpoint's host name
 * (for the no-route hint).
 */
export function resolveJumpHost(sources: JumpSources): { jump?: JumpHost; endpointHost?: string } {
  const { flags, endpoint, saved } = sources;
  const fromSaved = saved !== undefined && endpoint !== undefined && saved.endpoint === endpoint;
  const endpointHost =
    endpoint !== undefined ? new URL(endpoint).hostname.replace(/^\[|\]$/g, "") : undefined;
  const withHost = endpointHost !== undefined ? { endpointHost } : {};
  const host = flags.host ?? (fromSaved ? saved.jump_host : undefined);
  const user = flags.user ?? (fromSaved ? saved.jump_user : undefined);
  if (host !== undefined) return { jump: parseJumpHost(host, user, sources.localUser), ...withHost };
  if (flags.user === undefined) return withHost;
  if (endpointHost === undefined) {
    throw new AgentlabError(
      "USAGE",
      "--jump-user needs --jump-host (or an endpoint saved by agentlab connect)",
      {
        hint: `name the jump host: agentlab ssh ${sources.vmid} --jump-host host.tailnet.ts.net --jump-user ${flags.user}`,
      },
    );
  }
  return { jump: parseJumpHost(endpointHost, user, sources.localUser), endpointHost };
}
