/**
 * Which user is at the other end of an accepted Unix-socket connection, for the per-client connection
 * cap (rpc_max_connections_per_client). Node has no SO_PEERCRED, so the peer is found the way `ss`
 * finds it: the kernel's socket diagnostics pair each Unix socket's inode with its peer's and `ss -p`
 * names the processes holding each end; /proc/<pid>/status gives that process's user. Our end's inode
 * is the `socket:[N]` link of its descriptor in /proc/self/fd.
 *
 * This costs an `ss` run, so the server asks only when a user could be over the cap at all (at least
 * that many connections are open). Lookups that wait together share one run. A peer that cannot be
 * found (no `ss`, the client process already gone, a daemon not allowed to read other processes' fds)
 * is answered `undefined`: the cap then does not apply to it, and the global rpc_max_connections still
 * does.
 */
import { readFileSync, readlinkSync } from "node:fs";
import type { Socket } from "node:net";
import { execa } from "execa";

/** One Unix socket as `ss -x -p -n` lists it: its peer's inode and the processes that hold it. */
export interface UnixSocketEntry {
  peer: number;
  pids: number[];
}

/**
 * `ss -x -p -n` output by socket inode. Columns: Netid State Recv-Q Send-Q Local-Address Port
 * Peer-Address Port [Process]; for Unix sockets "Port" is the inode. A path may contain spaces, so the
 * row is read from its end: the optional `users:(…)` field, then peer inode, peer address, own inode.
 */
export function parseSsUnix(text: string): Map<number, UnixSocketEntry> {
  const table = new Map<number, UnixSocketEntry>();
  for (const line of text.split("\n")) {
    if (!line.startsWith("u_")) continue;
    const usersAt = line.indexOf("users:(");
    const fields = (usersAt === -1 ? line : line.slice(0, usersAt)).trim().split(/\s+/);
    if (fields.length < 8) continue;
    const inode = Number(fields[fields.length - 3]);
    const peer = Number(fields[fields.length - 1]);
    if (!Number.isSafeInteger(inode) || !Number.isSafeInteger(peer)) continue;
    const pids =
      usersAt === -1 ? [] : [...line.slice(usersAt).matchAll(/pid=(\d+)/g)].map((match) => Number(match[1]));
    table.set(inode, { peer, pids });
  }
  return table;
}

/** The inode of a socket's descriptor, or undefined when Node does not expose it. */
export function socketInode(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return undefined;
  try {
    const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The effective user of a process (the second field of /proc/<pid>/status `Uid:`). */
export function processUid(pid: number): number | undefined {
  try {
    const match = /^Uid:\s+\d+\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

async function runSs(): Promise<string> {
  const result = await execa("ss", ["-x", "-p", "-n"], { timeout: 5_000, reject: false });
  if (result.exitCode !== 0) throw new Error(`ss -x -p -n: ${result.stderr || `exit ${result.exitCode}`}`);
  return result.stdout;
}

export type PeerUids = Map<Socket, number | undefined>;

export class SocketPeers {
  /** The batch that has not started yet: lookups made now join it. */
  #next: { sockets: Set<Socket>; answer: Promise<PeerUids> } | undefined;
  #running: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly listSockets: () => Promise<string> = runSs,
    private readonly uidOf: (pid: number) => number | undefined = processUid,
  ) {}

  /**
   * The peer user of each socket. A lookup made while an `ss` run is under way waits for the next run:
   * the running one may have read the table before the new connection existed.
   */
  uids(sockets: Iterable<Socket>): Promise<PeerUids> {
    if (!this.#next) {
      const batch = { sockets: new Set<Socket>(), answer: Promise.resolve(new Map() as PeerUids) };
      batch.answer = this.#running.then(() => {
        this.#next = undefined;
        const run = this.#lookup(batch.sockets);
        this.#running = run.catch(() => {});
        return run;
      });
      this.#next = batch;
    }
    for (const socket of sockets) this.#next.sockets.add(socket);
    return this.#next.answer;
  }

  async #lookup(sockets: Set<Socket>): Promise<PeerUids> {
    const inodes = new Map<Socket, number | undefined>();
    for (const socket of sockets) inodes.set(socket, socketInode(socket));
    const table = parseSsUnix(await this.listSockets());
    const uids: PeerUids = new Map();
    for (const [socket, inode] of inodes) {
      const peer = inode === undefined ? undefined : table.get(inode)?.peer;
      const pid = peer === undefined ? undefined : table.get(peer)?.pids[0];
      uids.set(socket, pid === undefined ? undefined : this.uidOf(pid));
    }
    return uids;
  }
}
