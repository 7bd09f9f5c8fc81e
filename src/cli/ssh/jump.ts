/** The jump host of agentlab ssh --jump-host, in OpenSSH's -J form. */
import { AgentlabError } from "../../protocol/index.js";

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
