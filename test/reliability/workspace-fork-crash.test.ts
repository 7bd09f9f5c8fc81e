/**
 * kill -9 of the daemon inside each Proxmox call of `workspace fork`, on each of its three copy paths
 * (lvmthin linked clone, zfspool `zfs clone` with host tools, dir full copy), then a restart. Each
 * fault point has its own source workspace and fork; the forks are started one after the other and each
 * is held inside its call by the simulator's `hang_calls` (an alternation naming each fork's VMIDs), so
 * one kill -9 interrupts all of them at their points. The knob is then cleared, the calls the dead
 * daemon began let through to their end, and the daemon restarted. The forks are sent straight to the
 * socket (a CLI start per fork costs seconds on a busy host); the last test forks through the CLI. After the first maintenance pass,
 * for each point: no workspace_ops row is left; the source is ready, released, unchanged (bytes, snapshots: the
 * internal fork snapshot is gone unless a zfs clone depends on it); the fork is either ready (protected
 * holder that owns its own volume, holding the source's bytes) or gone with everything it made (no VM,
 * no volume named for its holder); no VM is locked or orphaned; `workspace check` finds no error; and
 * a `workspace.recovered` event says which. Where the outcome is fixed by what Proxmox had done (a task
 * finished, its answer lost), it is asserted. Real daemon and CLI, API backend with the simulator's
 * zfs on PATH (host_tools: on), one daemon for the file.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { call } from "../../src/cli/client.js";
import { workspaceCheck, workspaceCreate, workspaceFork } from "../../src/protocol/workspace.js";
import { type Held, MaintenanceHost } from "../integration/maintenance-host.js";
import { forkDigest, writeForkData } from "../integration/workspace-volume.js";
import { inspect, setControl } from "../pvesim/harness.js";
import { findVolume } from "../pvesim/storage.js";

const MiB = 1024 * 1024;
const TEMPLATE = 9000;

type Path = "lvm" | "zfs" | "dir";
const STORAGE: Record<Path, string> = { lvm: "local-lvm", zfs: "local-zfs", dir: "local" };
const COPY_MODE: Record<Path, string> = { lvm: "cow", zfs: "cow", dir: "full" };

interface Point {
  path: Path;
  /** What the daemon is inside when killed. */
  what: string;
  /** `METHOD /path` of the call to hold; `H` stands for the source's holder VMID, `F` for the fork's. */
  call: string;
  /** The outcome recovery must reach, when what Proxmox had done fixes it. */
  outcome?: "committed" | "rolled_back";
}

const N = String.raw`/nodes/pve`;
const task = (type: string, vm: string) => String.raw`^GET ${N}/tasks/UPID:[^/]*:${type}:${vm}:[^/]*/status$`;

/** Every Proxmox call a fork makes after its intent is recorded, per path (as the call log shows them). */
const POINTS: Point[] = [
  {
    path: "lvm",
    what: "reserving the fork's VMID",
    call: String.raw`^GET /cluster/nextid$`,
    outcome: "rolled_back",
  },
  { path: "lvm", what: "the base snapshot request", call: String.raw`^POST ${N}/qemu/H/snapshot$` },
  {
    path: "lvm",
    what: "the base snapshot's finished task",
    call: task("qmsnapshot", "H"),
    outcome: "rolled_back",
  },

  { path: "lvm", what: "the linked clone request", call: String.raw`^POST ${N}/qemu/H/clone$` },
  { path: "lvm", what: "the linked clone's finished task", call: task("qmclone", "H"), outcome: "committed" },
  {
    path: "lvm",
    what: "protecting the fork's holder",
    call: String.raw`^PUT ${N}/qemu/F/config$`,
    outcome: "committed",
  },
  {
    path: "lvm",
    what: "deleting the base snapshot",
    call: String.raw`^DELETE ${N}/qemu/H/snapshot/agentlab-fork-F$`,
    outcome: "committed",
  },
  {
    path: "lvm",
    what: "the snapshot delete's finished task",
    call: task("qmdelsnapshot", "H"),
    outcome: "committed",
  },

  {
    path: "lvm",
    what: "reading the fork's volume",
    call: String.raw`^GET ${N}/storage/local-lvm/content/local-lvm:vm-F-disk-0$`,
    outcome: "committed",
  },
  {
    path: "zfs",
    what: "the base snapshot's finished task",
    call: task("qmsnapshot", "H"),
    outcome: "rolled_back",
  },
  { path: "zfs", what: "the create of the diskless holder", call: String.raw`^POST ${N}/qemu$` },
  {
    path: "zfs",
    what: "the holder create's finished task",
    call: task("qmcreate", "F"),
    outcome: "rolled_back",
  },
  {
    path: "zfs",
    what: "giving the holder the zfs clone (after zfs clone)",
    // No fixed outcome: a write held when the daemon dies is carried out once released if its body
    // had arrived (as pveproxy carries out what it received), so the holder may or may not have the
    // disk, and recovery may commit or roll back; the checks of both hold. (Fixed as rolled_back, the
    // point failed once on a loaded machine where the body had arrived: committed.)
    call: String.raw`^PUT ${N}/qemu/F/config$`,
  },
  {
    path: "zfs",
    what: "reading the fork's volume",
    call: String.raw`^GET ${N}/storage/local-zfs/content/local-zfs:vm-F-disk-0$`,
    outcome: "committed",
  },
  { path: "dir", what: "the full clone request", call: String.raw`^POST ${N}/qemu/H/clone$` },
  { path: "dir", what: "the full clone's finished task", call: task("qmclone", "H"), outcome: "committed" },
  {
    path: "dir",
    what: "protecting the fork's holder",
    call: String.raw`^PUT ${N}/qemu/F/config$`,
    outcome: "committed",
  },
  {
    path: "dir",
    what: "reading the fork's volume",
    call: String.raw`^GET ${N}/storage/local/content/local:F/vm-F-disk-0\.qcow2$`,
    outcome: "committed",
  },
];

interface WsRow {
  id: string;
  name: string;
  state: string;
  volid: string;
  holder_vmid: number;
  lease_owner: string | null;
  copy_mode: string | null;
  forked_from: string | null;
}

/** One fault point's run: its source, its fork, the call it was held in. */
interface Run {
  point: Point;
  source: string;
  /** sha256 of the source's bytes before the fork (see digest()). */
  digest: string;
  fork: string;
  held?: Held;
  /** The fork's holder VMID once reserved. */
  forkVmid?: number;
}

describe("kill -9 inside each Proxmox call of workspace fork, then restart (api backend, host tools)", () => {
  let m: MaintenanceHost;
  const runs: Run[] = POINTS.map((point, i) => ({
    point,
    source: `s${i}-${point.path}`,
    digest: "",
    fork: `f${i}-${point.path}`,
  }));

  before(async () => {
    // Held calls wait for as long as the forks take to reach their points: the command timeout must
    // outlast that, and the read lane must have room for every held read besides the daemon's own.
    m = await MaintenanceHost.start(
      "api",
      "host_tools: on\nproxmox_command_timeout: 10m\nproxmox_max_reads: 64\n",
    );
    await setControl(m.h.sim.dir, { clone_ms: 50, full_clone_ms: 80, task_ms: 20 });
    for (let i = 0; i < runs.length; i += 4) {
      await Promise.all(
        runs.slice(i, i + 4).map(async (run) => {
          const ws = await call({ socketPath: m.h.host.socketPath, timeoutMs: 120_000 }, workspaceCreate, {
            name: run.source,
            size_gb: 1,
            storage: STORAGE[run.point.path],
          });
          await writeForkData(m.h, ws.volid, randomBytes(MiB));
          run.digest = await digest(ws.volid);
        }),
      );
    }
  });
  after(async () => {
    await m.stop();
  });

  const digest = (volid: string) => forkDigest(m.h, volid);

  function row(name: string): WsRow | undefined {
    return m.db((d) => d.prepare("SELECT * FROM workspaces WHERE name = ?").get(name)) as WsRow | undefined;
  }

  function recovered(wsId: string): Array<{ op_kind: string; outcome: string }> {
    return (
      m.db((d) =>
        d
          .prepare(
            "SELECT json FROM events WHERE workspace_id = ? AND kind = 'workspace.recovered' ORDER BY id",
          )
          .all(wsId),
      ) as Array<{ json: string }>
    ).map((e) => JSON.parse(e.json) as { op_kind: string; outcome: string });
  }

  /** `workspace check` through the socket (a CLI start per check would cost seconds on a busy host). */
  async function noErrorFinding(name: string): Promise<void> {
    const check = await call({ socketPath: m.h.host.socketPath, timeoutMs: 60_000 }, workspaceCheck, {
      workspace: name,
    });
    assert.deepEqual(
      check.findings.filter((f) => f.severity === "error"),
      [],
      `workspace check ${name} has no error finding`,
    );
    assert.equal(check.ok, true);
  }

  /** The pattern that holds `run`'s fork in its call: F any VMID but the source's until it is known. */
  function pattern(run: Run): string {
    const src = row(run.source)!;
    const call = run.point.call.replaceAll("H", String(src.holder_vmid));
    return call.replaceAll(
      "F",
      run.forkVmid !== undefined ? String(run.forkVmid) : String.raw`(?!${src.holder_vmid}\b)\d+`,
    );
  }

  /** Base snapshots that a ready zfs fork depends on. */
  function zfsBases(): string[] {
    const rows = m.db((d) =>
      d
        .prepare(
          "SELECT fork_origin_snapshot AS s FROM workspaces WHERE storage = 'local-zfs' AND fork_origin_snapshot IS NOT NULL",
        )
        .all(),
    ) as Array<{ s: string }>;
    return rows.map((r) => r.s);
  }

  /** Every VM is the template or the holder of a recorded workspace, and none is locked. */
  async function assertNoOrphanOrLock(): Promise<void> {
    const holders = new Set(
      (
        m.db((d) => d.prepare("SELECT holder_vmid FROM workspaces").all()) as Array<{ holder_vmid: number }>
      ).map((r) => r.holder_vmid),
    );
    const vms = await m.simVms();
    assert.deepEqual(
      Object.keys(vms)
        .map(Number)
        .filter((vmid) => vmid !== TEMPLATE && !holders.has(vmid)),
      [],
      "every VM is a recorded workspace's holder",
    );
    assert.deepEqual(
      Object.entries(vms)
        .filter(([, vm]) => vm.lock !== undefined)
        .map(([vmid, vm]) => `${vmid}:${vm.lock}`),
      [],
      "no VM is left locked",
    );
  }

  test("every fork held at its point, one kill -9, one restart: no op left, nothing orphaned or locked", async (t) => {
    const held: Run[] = [];
    // A point whose call names no VMID (the reservation's nextid, the zfs path's create) cannot be
    // held for one fork only: those go last, nextid after the create (an lvmthin fork creates no VM).
    const generic = (run: Run) =>
      run.point.call.includes("nextid") ? 2 : /[HF]/.test(run.point.call) ? 0 : 1;
    const order = [...runs].sort((a, b) => generic(a) - generic(b));
    const t0 = Date.now();
    for (const run of order) {
      const others = held.map(pattern);
      const mine = pattern(run);
      run.held = await m.holdRequest(
        `workspace fork ${run.source} --name ${run.fork}`,
        () =>
          call({ socketPath: m.h.host.socketPath, timeoutMs: 600_000 }, workspaceFork, {
            workspace: run.source,
            name: run.fork,
          }),
        [...others, mine].map((p) => `(?:${p})`).join("|"),
        (calls) => {
          const mineHeld = calls.filter((c) => new RegExp(mine).test(c));
          if (!run.point.call.includes("F")) return mineHeld.length > 0;
          // A call on the fork's VM: held once it names the VMID the fork reserved.
          run.forkVmid = row(run.fork)?.holder_vmid;
          return (
            run.forkVmid !== undefined && mineHeld.some((c) => new RegExp(`\\b${run.forkVmid}\\b`).test(c))
          );
        },
      );
      if (run.forkVmid === undefined) run.forkVmid = row(run.fork)?.holder_vmid;
      held.push(run);
      t.diagnostic(`${Date.now() - t0} ms: ${run.fork} held in ${run.point.what}`);
    }
    await m.killHeldAndRestart(runs.map((run) => run.held!));
    t.diagnostic(`${Date.now() - t0} ms: restarted, first maintenance pass done`);
    const opsLeft = m.db((d) => d.prepare("SELECT kind, step, workspace_id FROM workspace_ops").all());
    assert.deepEqual(opsLeft, [], "no workspace_ops row is left");
    await assertNoOrphanOrLock();
  });

  for (const run of runs) {
    const { point } = run;
    test(`${point.path}: killed inside ${point.what}`, async () => {
      assert.ok(run.held, "the fork was held and killed (the test above)");
      const src = row(run.source)!;
      const fork = row(run.fork);
      const mine = run.held.calls
        .map((line) => `${line.method} ${line.path}`)
        .filter((c) => new RegExp(pattern(run)).test(c));
      assert.equal(
        mine.length,
        1,
        `held inside exactly one call of its own: ${JSON.stringify(run.held.calls)}`,
      );
      const outcome = recovered(src.id).at(-1);
      assert.equal(outcome?.op_kind, "fork");
      if (point.outcome)
        assert.equal(outcome?.outcome, point.outcome, `recovery of the fork held in ${mine[0]}`);
      if (fork) {
        assert.equal(outcome?.outcome, "committed");
        assert.equal(fork.state, "ready");
        assert.equal(fork.lease_owner, null);
        assert.equal(fork.forked_from, src.id);
        assert.equal(fork.copy_mode, COPY_MODE[point.path]);
        const holder = await inspect(m.h.sim.dir, (ctx) => ctx.state.vms[String(fork.holder_vmid)]?.config);
        assert.ok(holder, "the fork's holder exists");
        assert.equal(holder["protection"], "1", "the fork's holder is protected");
        assert.equal(holder["tags"], "agentlab-ws");
        assert.equal(holder["name"], `ws-${run.fork}`);
        assert.equal(holder["scsi0"]?.split(",")[0], fork.volid);
        assert.match(fork.volid, new RegExp(`vm-${fork.holder_vmid}-disk-0`), "it owns its volume");
        assert.equal(await digest(fork.volid), run.digest, "it holds the source's bytes");
        await noErrorFinding(run.fork);
      } else {
        assert.equal(outcome?.outcome, "rolled_back");
        if (run.forkVmid !== undefined) {
          const vmid = run.forkVmid;
          const left = await inspect(m.h.sim.dir, (ctx) => ({
            vm: ctx.state.vms[String(vmid)] !== undefined,
            volume: findVolume(ctx.state, "pve", `${STORAGE[point.path]}:vm-${vmid}-disk-0`) !== undefined,
          }));
          assert.deepEqual(left, { vm: false, volume: false }, "nothing the fork made is left");
        }
      }
      // The source: ready, released, its bytes and snapshots as they were.
      assert.equal(src.state, "ready");
      assert.equal(src.lease_owner, null, "the source is released");
      assert.equal(await digest(src.volid), run.digest, "the source's bytes are unchanged");
      const inProxmox = await inspect(m.h.sim.dir, (ctx) =>
        Object.keys(ctx.state.vms[String(src.holder_vmid)]!.snapshots).sort(),
      );
      const recorded = (
        m.db((d) =>
          d.prepare("SELECT name FROM workspace_snapshots WHERE workspace_id = ? ORDER BY name").all(src.id),
        ) as Array<{ name: string }>
      ).map((s) => s.name);
      assert.deepEqual(recorded, inProxmox, "the source's recorded snapshots are its holder's");
      // Only a zfs clone depends on its origin snapshot; every other internal snapshot is gone.
      const bases = zfsBases();
      assert.deepEqual(
        inProxmox.filter((name) => !bases.includes(name)),
        [],
        "no internal fork snapshot is left on the source",
      );
      await noErrorFinding(run.source);
    });
  }

  test("afterwards the sources fork again (the CLI, lvmthin)", async () => {
    const run = runs.find((r) => r.point.path === "lvm")!;
    const forked = await m.h.json<{ volid: string; copy_mode: string }>([
      "workspace",
      "fork",
      run.source,
      "--name",
      "again",
    ]);
    assert.equal(forked.code, 0, forked.stderr);
    assert.equal(forked.body.copy_mode, "cow");
    assert.equal(await digest(forked.body.volid), run.digest);
    await assertNoOrphanOrLock();
  });
});
