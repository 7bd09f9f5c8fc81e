import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { groupId, SOCKET_GROUP } from "../../config/socket-group.js";
import { AgentlabError } from "../../protocol/errors.js";

function isLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
}

/**
 * Make `path` free for a new listener. A socket file nobody answers on is left over from a daemon that
 * died (kill -9, power loss) and is removed; a socket with a live listener means another agentlabd is
 * serving it, and we refuse rather than steal it; anything that is not a socket is never deleted.
 */
export async function claimSocketPath(path: string): Promise<void> {
  const dir = dirname(path);
  const created = mkdirSync(dir, { recursive: true, mode: 0o750 });
  // Group members must be able to enter the directory to reach the socket in it.
  const gid = groupId(SOCKET_GROUP);
  if (created !== undefined && gid !== undefined) {
    try {
      chownSync(dir, -1, gid);
    } catch {
      // Unprivileged daemons keep the directory as their own; only the owner uses it then.
    }
  }
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  if (!isSocket) {
    throw new AgentlabError("SOCKET_IN_USE", `socket path ${path} exists and is not a socket`, {
      hint: `move the file away or set socket_path in the config to another path`,
      details: { path },
    });
  }
  if (await isLive(path)) {
    throw new AgentlabError("SOCKET_IN_USE", `another agentlabd is already listening on ${path}`, {
      hint: "stop it first (systemctl stop agentlabd), or give this daemon another socket_path",
      details: { path },
    });
  }
  unlinkSync(path);
}

/**
 * Socket access is the daemon's only authorisation: owner and the agentlab group read and write,
 * nobody else. When the group does not exist (a dev machine) the socket stays owner-only plus the
 * current group.
 */
export function restrictSocket(path: string): { mode: number; group?: string } {
  chmodSync(path, 0o660);
  const gid = groupId(SOCKET_GROUP);
  if (gid === undefined) return { mode: 0o660 };
  try {
    chownSync(path, -1, gid);
    return { mode: 0o660, group: SOCKET_GROUP };
  } catch {
    // Unprivileged daemons cannot hand the socket to a group they are not in; owner access still works.
    return { mode: 0o660 };
  }
}
