import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import { type PreparedDevice, prepareDevice } from "../../host/device.js";
import type { HostTools } from "../../host/host-tools.js";
import type { Workspace } from "../../store/workspaces.js";

/** The node workspaces are created on: config proxmox_node, else the first online node. */
export async function workspaceNode(ctx: DaemonContext): Promise<string> {
  if (ctx.config.proxmox_node) return ctx.config.proxmox_node;
  const nodes = await ctx.backend.listNodes();
  const online = nodes
    .filter((n) => n.online)
    .map((n) => n.node)
    .sort();
  if (online.length === 0) {
    throw new AgentlabError("PROXMOX_UNREACHABLE", "no online Proxmox node to create the workspace on", {
      hint: "check the cluster with pvesh get /nodes, or set proxmox_node in the daemon's config",
    });
  }
  return online[0]!;
}

/** The volume name without its storage (`vm-1005-disk-0` of `local-lvm:vm-1005-disk-0`). */
export function volumeName(volid: string): string {
  const rest = volid.slice(volid.indexOf(":") + 1);
  return rest.slice(rest.lastIndexOf("/") + 1);
}

/**
 * The workspace volume as a host device: its path from Proxmox, activated if it must be (lvmthin after a
 * reboot), for host tools to open. The caller must call undo() when done.
 */
export async function openVolume(
  ctx: DaemonContext,
  ws: Pick<Workspace, "node" | "storage" | "storage_type" | "volid">,
  tools: HostTools,
): Promise<PreparedDevice & { path: string }> {
  const node = ws.node ?? ctx.config.proxmox_node;
  const info = await ctx.backend.volumeInfo(node, ws.volid);
  let vg: string | undefined;
  if (ws.storage_type === "lvmthin") {
    const storage = await ctx.backend.storageConfig(ws.storage);
    vg = storage.vgname;
  }
  const prepared = await prepareDevice({
    storageType: ws.storage_type ?? "unknown",
    path: info.path,
    ...(vg ? { vg, lv: volumeName(ws.volid) } : {}),
    tools,
    node,
  });
  return { ...prepared, path: info.path };
}
