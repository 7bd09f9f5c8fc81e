import { readlinkSync } from "node:fs";
import { basename } from "node:path";
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import { ExecaHostTools, type HostTools } from "../../host/host-tools.js";

/** The node this daemon runs on, as Proxmox names it: /etc/pve/local links to nodes/<name>. */
export function localNodeName(): string | undefined {
  try {
    return basename(readlinkSync("/etc/pve/local"));
  } catch {
    return undefined;
  }
}

export type HostToolsAccess = { tools: HostTools } | { tools?: undefined; reason: string };

/**
 * Whether programs run here act on `node`'s volumes (design §8.1): config host_tools on says so, off
 * says never, auto decides by this host being that node. The reason is what fsck and fork report.
 */
export async function hostToolsFor(
  ctx: DaemonContext,
  node: string,
  tools: HostTools = new ExecaHostTools(ctx.hostToolPool ? { pool: ctx.hostToolPool } : {}),
): Promise<HostToolsAccess> {
  const mode = ctx.config.host_tools;
  if (mode === "off") return { reason: "host_tools is off in the daemon's config" };
  if (mode === "auto") {
    const local = localNodeName();
    if (local !== node) {
      return {
        reason:
          local === undefined
            ? `agentlabd is not running on a Proxmox node (no /etc/pve/local), so not on node ${node}`
            : `agentlabd is not running on node ${node} (this is ${local})`,
      };
    }
  }
  if (!(await tools.available()))
    return { reason: "e2fsck is not installed on this host (apt install e2fsprogs)" };
  return { tools };
}

/** HOST_TOOLS_UNAVAILABLE for work other than fsck (which words its own refusal). */
export function hostToolsUnavailable(
  what: string,
  node: string,
  reason: string,
  hint: string,
): AgentlabError {
  return new AgentlabError("HOST_TOOLS_UNAVAILABLE", `${what} needs host tools on node ${node}: ${reason}`, {
    hint,
    details: { node, reason },
  });
}
