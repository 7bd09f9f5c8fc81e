/**
 * The api backend's token privilege check of `agentlab init` and `agentlab status`: what the daemon
 * will use (templates, their storages and bridges, the workspace storage, the node, the PVE version)
 * against what GET /access/permissions says the token has, each gap with the command that closes it.
 */
import { AgentlabError, type InitCheck } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
import {
  AGENTLAB_ROLE,
  missingPrivileges,
  type PrivilegeInputs,
  privilegePurpose,
  pveMajor,
  requiredPrivileges,
  roleAddCommand,
} from "../proxmox/privileges.js";
import type { ClusterVm, VmConfig } from "../proxmox/types.js";

const DRIVE_KEY = /^(?:ide|sata|scsi|virtio|efidisk|tpmstate)\d+$/;
const NET_KEY = /^net\d+$/;

/** Storages of the template's disks (not its CD-ROMs); clones put their disks there. */
function diskStorages(config: VmConfig): string[] {
  const out = new Set<string>();
  for (const [key, value] of Object.entries(config)) {
    const text = String(value);
    if (!DRIVE_KEY.test(key) || /media=cdrom/.test(text)) continue;
    const storage = /^([A-Za-z0-9._-]+):/.exec(text)?.[1];
    if (storage) out.add(storage);
  }
  return [...out];
}

function bridgesOf(config: VmConfig): string[] {
  return Object.entries(config)
    .filter(([key]) => NET_KEY.test(key))
    .map(([, value]) => /(?:^|,)bridge=([^,]+)/.exec(String(value))?.[1])
    .filter((b): b is string => b !== undefined);
}

/** `USER@REALM` and `USER@REALM!TOKENID` of the configured token. */
function tokenParts(token: string): { user: string; tokenId: string } {
  const tokenId = token.split("=")[0] ?? token;
  return { user: tokenId.split("!")[0] ?? tokenId, tokenId };
}

async function inputs(
  ctx: DaemonContext,
  version: string,
  cluster: ClusterVm[],
  node: string,
): Promise<PrivilegeInputs> {
  const templates: PrivilegeInputs["templates"] = [];
  for (const vmid of [...new Set(ctx.profiles.map((p) => p.template_vmid))].sort((a, b) => a - b)) {
    const vm = cluster.find((entry) => entry.vmid === vmid);
    // A missing template is the templates check's finding; its storages are unknown here.
    if (!vm) {
      templates.push({ vmid, storages: [], bridges: [] });
      continue;
    }
    const config = await ctx.backend.getConfig({ vmid, node: vm.node });
    templates.push({ vmid, storages: diskStorages(config), bridges: bridgesOf(config) });
  }
  const bridges = ctx.profiles.flatMap((p) => (p.network.bridge ? [p.network.bridge] : []));
  const storages = node ? await ctx.backend.listStorages(node) : [];
  const ws = storages.find((s) => s.storage === ctx.config.workspace_storage);
  return {
    pveVersion: version,
    templates,
    bridges,
    workspaceStorage: { id: ctx.config.workspace_storage, ...(ws ? { type: ws.type } : {}) },
    nodes: node ? [node] : [],
  };
}

/**
 * The `privileges` check. On the shell backend there is no token: pvesh runs as root@pam, which
 * Proxmox grants everything, so the check says it does not apply rather than claiming it passed.
 */
export async function privilegesCheck(
  ctx: DaemonContext,
  facts: { version: string; cluster: ClusterVm[]; node: string },
): Promise<InitCheck> {
  if (ctx.backend.kind === "shell") {
    return {
      name: "privileges",
      status: "ok",
      detail:
        "not applicable: the shell backend runs pvesh as root@pam; only an api backend token is checked",
    };
  }
  const { user, tokenId } = tokenParts(ctx.config.proxmox_api_token);
  const needs = requiredPrivileges(await inputs(ctx, facts.version, facts.cluster, facts.node));
  const gaps: { path: string; missing: string[] }[] = [];
  for (const need of needs) {
    const missing = missingPrivileges(need, await ctx.backend.permissions(need.path));
    if (missing.length > 0) gaps.push({ path: need.path, missing: missing.map((m) => m.split("|")[0]!) });
  }
  const paths = needs.map((n) => n.path).join(", ");
  if (gaps.length === 0) {
    return {
      name: "privileges",
      status: "ok",
      detail: `token ${tokenId} has what agentlabd uses on ${paths}`,
    };
  }
  const detail = gaps
    .map((g) => `${g.path} lacks ${g.missing.map((p) => `${p} (${privilegePurpose(p)})`).join(", ")}`)
    .join("; ");
  // With privilege separation the token gets the intersection of its own and its user's ACLs: grant both.
  const grants = gaps.flatMap((g) => [
    `pveum acl modify ${g.path} --users ${user} --roles ${AGENTLAB_ROLE}`,
    `pveum acl modify ${g.path} --tokens '${tokenId}' --roles ${AGENTLAB_ROLE}`,
  ]);
  return {
    name: "privileges",
    status: "fail",
    detail: `token ${tokenId}: ${detail}`,
    fix: `${grants.join(" && ")} (role ${AGENTLAB_ROLE} from docs/runbook.md, PVE ${pveMajor(facts.version)}: ${roleAddCommand(pveMajor(facts.version))})`,
  };
}

/** The check for callers that have not asked Proxmox anything yet (status). */
export async function privilegesCheckFresh(ctx: DaemonContext): Promise<InitCheck> {
  if (ctx.backend.kind === "shell") return privilegesCheck(ctx, { version: "", cluster: [], node: "" });
  try {
    const version = (await ctx.backend.version()).version;
    const cluster = await ctx.backend.listVms();
    let node = ctx.config.proxmox_node;
    if (node === "") {
      const nodes = await ctx.backend.listNodes();
      node = nodes.find((n) => n.online)?.node ?? nodes[0]?.node ?? "";
    }
    return await privilegesCheck(ctx, { version, cluster, node });
  } catch (error) {
    const known = error instanceof AgentlabError ? error : new AgentlabError("PROXMOX_ERROR", String(error));
    return { name: "privileges", status: "fail", detail: known.message, fix: known.hint };
  }
}
