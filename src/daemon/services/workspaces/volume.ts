import type { DaemonContext } from "../../context.js";
import { type PreparedDevice, prepareDevice } from "../../host/device.js";
import type { HostTools } from "../../host/host-tools.js";
import type { Workspace } from "../../store/workspaces.js";
import { daemonNode } from "../placement.js";

/**
 * The node workspaces are created on: agentlabd's own node (proxmox_node, else this host's node), where
 * its sandboxes run and host tools reach the volume; never just the first node in alphabetical order.
 */
export function workspaceNode(ctx: DaemonContext): Promise<string> {
  return daemonNode(ctx);
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
