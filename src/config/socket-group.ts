import { readFileSync } from "node:fs";

/** Group whose members may use the socket (upstream's choice, kept: operators already have it). */
export const SOCKET_GROUP = "agentlab";

/** The gid of a group named in /etc/group, or undefined when the group does not exist. */
export function groupId(name: string, groupFile = "/etc/group"): number | undefined {
  let text: string;
  try {
    text = readFileSync(groupFile, "utf8");
  } catch {
    return undefined;
  }
  for (const line of text.split("\n")) {
    const [group, , gid] = line.split(":");
    if (group === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  return undefined;
}
