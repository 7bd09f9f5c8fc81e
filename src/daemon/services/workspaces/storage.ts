import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { StorageInfo } from "../../proxmox/types.js";
import { SUPPORTED_STORAGE_TYPES } from "./core.js";

const SUPPORTED_TEXT = "workspaces support zfspool, lvmthin and dir (qcow2)";

/** STORAGE_UNSUPPORTED naming the storage and its type (and format, when that is the problem). */
export function storageUnsupported(storage: string, type: string, format?: string): AgentlabError {
  const what = format ? `type ${type} with ${format} volumes` : `type ${type}`;
  return new AgentlabError("STORAGE_UNSUPPORTED", `storage "${storage}" is of ${what}; ${SUPPORTED_TEXT}`, {
    hint: "pick another storage (pvesm status lists them), e.g. --storage local-zfs or --storage local-lvm",
    details: { storage, type, ...(format ? { format } : {}) },
  });
}

/**
 * The storage a new workspace volume goes to, checked before anything is created (design §4, §5.1
 * step 0): it must exist on the node, be enabled and active, hold disk images, and be of a type whose
 * snapshots and forks agentlab knows how to drive.
 */
export async function requireWorkspaceStorage(
  ctx: DaemonContext,
  node: string,
  storage: string,
): Promise<StorageInfo> {
  const storages = await ctx.backend.listStorages(node);
  const info = storages.find((s) => s.storage === storage);
  if (!info) {
    const names = storages
      .filter((s) => s.content.includes("images"))
      .map((s) => s.storage)
      .sort();
    throw new AgentlabError("STORAGE_UNSUPPORTED", `storage "${storage}" does not exist on node ${node}`, {
      hint:
        names.length > 0
          ? `storages for disk images on ${node}: ${names.join(", ")}`
          : "pvesm status lists the storages",
      details: { storage, node, storages: names },
    });
  }
  if (!(SUPPORTED_STORAGE_TYPES as readonly string[]).includes(info.type))
    throw storageUnsupported(storage, info.type);
  if (!info.enabled || !info.active) {
    throw new AgentlabError(
      "STORAGE_UNSUPPORTED",
      `storage "${storage}" is ${info.enabled ? "not active" : "disabled"} on node ${node}`,
      {
        hint: `check it with pvesm status --storage ${storage}`,
        details: { storage, node, enabled: info.enabled, active: info.active },
      },
    );
  }
  if (!info.content.includes("images")) {
    throw new AgentlabError(
      "STORAGE_UNSUPPORTED",
      `storage "${storage}" does not hold disk images (content: ${info.content.join(",") || "none"})`,
      {
        hint: `add images to its content: pvesm set ${storage} --content images,...`,
        details: { storage, content: info.content },
      },
    );
  }
  return info;
}

/** The volid Proxmox gives the first disk of a new VM `vmid` on this storage (design §3.2). */
export function expectedVolid(storage: string, type: string, vmid: number): string {
  return type === "dir" ? `${storage}:${vmid}/vm-${vmid}-disk-0.qcow2` : `${storage}:vm-${vmid}-disk-0`;
}

/** Raw images on dir storage cannot be snapshotted; every other supported type can. */
export function requireSnapshotCapable(ws: {
  storage: string;
  storage_type: string | null;
  format: string | null;
}): void {
  const type = ws.storage_type ?? "unknown";
  if (!(SUPPORTED_STORAGE_TYPES as readonly string[]).includes(type))
    throw storageUnsupported(ws.storage, type);
  if (type === "dir" && ws.format !== null && ws.format !== "qcow2")
    throw storageUnsupported(ws.storage, type, ws.format);
}
