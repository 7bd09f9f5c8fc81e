/**
 * Where sandboxes and workspaces may live on a Proxmox cluster: only on the node agentlabd runs on.
 *
 * Three things a sandbox needs exist on that node alone. Its cloud-init snippet is a file the daemon
 * writes into `snippets_dir`; a `dir` storage is per node and Proxmox has no API to upload snippets, so
 * another node's start fails with `unable to open file '/var/lib/vz/snippets/agentlab-…'`. Its network
 * policing (the nftables bindings, `nft -f -` on this host) and the guest listener that the guest phones
 * home to are bound to this host's agent bridge, so a VM on another node would run unpoliced and never
 * report. A snippet storage marked `shared` fixes only the first of the three, so it is no exception:
 * such a template is refused before anything is created (docs/configuration.md, proxmox_node).
 */
import { hostname } from "node:os";
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonContext } from "../context.js";

/** The node name Proxmox gives a host: its host name up to the first dot (pve-common INotify.pm nodename). */
export function nodeNameOfHost(host: string): string {
  return host.replace(/\..*$/, "");
}

/**
 * The node each daemon found it runs on, and for which host name. Found once, it stands for the daemon's
 * life, so a create does not ask `GET /nodes` each time (issue 15 counted it per create): a host's node
 * name is fixed while it runs (renaming a node means a reboot and a re-join), and the one-node guess
 * stays where the daemon's snippets and templates already are when a node joins later; `agentlab
 * doctor` asks afresh (`fresh`) and reports a cluster that no longer names this host.
 */
const foundNodes = new WeakMap<DaemonContext, { host: string; node: string }>();

/**
 * The node agentlabd runs on: `proxmox_node` when set; else this host's node name when it is a node of
 * the cluster (the shell backend always is: pvesh runs here); else the only node of a one-node cluster
 * (an API-backend daemon off the host, whose snippets_dir must then be that node's, e.g. a mount).
 * On a cluster of several nodes that does not list this host, there is no safe guess.
 */
export async function daemonNode(
  ctx: DaemonContext,
  host: string = hostname(),
  { fresh = false }: { fresh?: boolean } = {},
): Promise<string> {
  if (ctx.config.proxmox_node) return ctx.config.proxmox_node;
  const own = nodeNameOfHost(host);
  const found = foundNodes.get(ctx);
  if (!fresh && found?.host === own) return found.node;
  const nodes = (await ctx.backend.listNodes()).map((n) => n.node).sort();
  const node = nodes.includes(own) ? own : nodes.length === 1 ? nodes[0] : undefined;
  if (node !== undefined) {
    foundNodes.set(ctx, { host: own, node });
    return node;
  }
  throw new AgentlabError(
    "CONFIG_INVALID",
    `agentlabd cannot tell which node of the cluster it runs on: this host is ${own}, the nodes are ${nodes.join(", ") || "none"}`,
    {
      hint: `set proxmox_node in ${ctx.configPath} to the node whose snippets directory is ${ctx.config.snippets_dir} (the node agentlabd runs on), then restart agentlabd`,
      details: { host: own, nodes },
    },
  );
}

/**
 * Why a sandbox from a template on `templateNode` cannot be made here, or undefined when it can.
 * Checked before anything is reserved or created.
 */
export async function templateNodeRefusal(
  ctx: DaemonContext,
  template: { vmid: number; node: string },
  profile: string,
): Promise<AgentlabError | undefined> {
  const own = await daemonNode(ctx);
  if (template.node === own) return undefined;
  return new AgentlabError(
    "PROVISIONING_FAILED",
    `template ${template.vmid} of profile "${profile}" is on node ${template.node}, but agentlabd runs on node ${own}: a sandbox must run on ${own}, where its cloud-init snippet (${ctx.config.snippets_dir}), its firewall bindings and the guest listener are`,
    {
      hint: `build a template on node ${own} and set template_vmid of profile "${profile}" to it (agentlab runs its sandboxes on its own node only); if agentlabd really runs on ${template.node}, set proxmox_node: ${template.node} in ${ctx.configPath} and restart it`,
      details: { profile, template_vmid: template.vmid, template_node: template.node, daemon_node: own },
    },
  );
}
