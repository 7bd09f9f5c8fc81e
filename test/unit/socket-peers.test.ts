import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseSsUnix, processUid, SocketPeers, socketInode } from "../../src/daemon/rpc/socket-peers.js";

// `ss -x -p -n` as iproute2 6.1 prints it: a listening socket, an accepted connection on a path with
// a space in it, its client end (unnamed) and an end held by two processes.
const SS_OUTPUT = `Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
u_str LISTEN 0      511    /run/agentlab/agentlabd.sock 1000 * 0 users:(("node",pid=10,fd=20))
u_str ESTAB  0      0      /tmp/with space/agentlabd.sock 1001 * 2001 users:(("node",pid=10,fd=21))
u_str ESTAB  0      0      * 2001 * 1001 users:(("agentlab",pid=77,fd=19))
u_str ESTAB  0      0      * 3001 * 3002 users:(("sh",pid=5,fd=3),("sleep",pid=6,fd=3))
u_str ESTAB  0      0      * 4001 * 4002
`;

describe("ss -x -p -n parsing", () => {
  test("each socket's peer inode and holders, paths with spaces included", () => {
    const table = parseSsUnix(SS_OUTPUT);
    assert.deepEqual(table.get(1001), { peer: 2001, pids: [10] });
    assert.deepEqual(table.get(2001), { peer: 1001, pids: [77] });
    assert.deepEqual(table.get(3001), { peer: 3002, pids: [5, 6] });
    assert.deepEqual(table.get(4001), { peer: 4002, pids: [] });
    assert.deepEqual(table.get(1000), { peer: 0, pids: [10] });
    assert.equal(table.size, 5, "the header is not a socket");
  });

  test("a process's effective user from /proc", () => {
    assert.equal(processUid(process.pid), process.geteuid?.());
    assert.equal(processUid(2 ** 30), undefined);
  });
});

describe("the user behind an accepted connection", () => {
  let dir: string;
  let server: Server;
  const accepted: Socket[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "socket-peers-"));
    server = createServer((socket) => accepted.push(socket));
    await new Promise<void>((resolve) => server.listen(join(dir, "s.sock"), resolve));
  });
  after(() => {
    for (const socket of accepted) socket.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function acceptOne(): Promise<{ ours: Socket; theirs: Socket }> {
    const count = accepted.length;
    const theirs = connect(join(dir, "s.sock"));
    await new Promise<void>((resolve) => theirs.once("connect", () => resolve()));
    while (accepted.length === count) await new Promise((resolve) => setImmediate(resolve));
    return { ours: accepted[accepted.length - 1] as Socket, theirs };
  }

  test("found through the real ss and /proc: this process's user", async (t) => {
    const { ours, theirs } = await acceptOne();
    assert.ok(socketInode(ours), "the accepted socket's inode is readable");
    const peers = new SocketPeers();
    let uids: Map<Socket, number | undefined>;
    try {
      uids = await peers.uids([ours]);
    } catch (error) {
      return t.skip(`no usable ss here: ${(error as Error).message}`);
    }
    assert.equal(uids.get(ours), process.geteuid?.());
    theirs.destroy();
  });

  test("lookups that wait together share one ss run; one made during a run waits for the next", async () => {
    const a = await acceptOne();
    const b = await acceptOne();
    const c = await acceptOne();
    let runs = 0;
    let release = () => {};
    const table = () => {
      const lines = [a, b, c].map(({ ours, theirs }, i) => {
        const mine = socketInode(ours);
        const peer = socketInode(theirs);
        return `u_str ESTAB 0 0 /s.sock ${mine} * ${peer} users:(("x",pid=1,fd=1))\nu_str ESTAB 0 0 * ${peer} * ${mine} users:(("c",pid=${100 + i},fd=3))`;
      });
      return `Netid State\n${lines.join("\n")}\n`;
    };
    const peers = new SocketPeers(
      () => {
        runs++;
        return runs === 1
          ? new Promise((resolve) => (release = () => resolve(table())))
          : Promise.resolve(table());
      },
      (pid) => pid * 10,
    );
    const first = peers.uids([a.ours]);
    const second = peers.uids([b.ours]);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(runs, 1, "the two lookups waiting together started one run");
    const third = peers.uids([c.ours]);
    release();
    const [one, two, three] = await Promise.all([first, second, third]);
    assert.equal(one, two, "the first two got the same answer");
    assert.equal(one.get(a.ours), 1000);
    assert.equal(one.get(b.ours), 1010);
    assert.equal(three.get(c.ours), 1020);
    assert.equal(runs, 2, "the lookup made during the run got a run of its own");
    for (const { theirs } of [a, b, c]) theirs.destroy();
  });

  test("a socket ss does not list, or whose peer has no process, has no user", async () => {
    const { ours, theirs } = await acceptOne();
    const peers = new SocketPeers(
      async () => `u_str ESTAB 0 0 /s.sock ${socketInode(ours)} * 999999 users:(("x",pid=1,fd=1))\n`,
      () => 0,
    );
    assert.equal((await peers.uids([ours])).get(ours), undefined);
    theirs.destroy();
  });
});
