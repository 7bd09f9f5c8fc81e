/**
 * The warm pool (docs/warm-pool.md), through the real daemon and CLI on the simulator (api backend):
 * a profile with `warm_pool: 2` is filled ahead, `sandbox new` claims a member (name, tags, lease set,
 * the VM renamed in Proxmox), the pool refills, concurrent claims get different members, an empty pool
 * falls back to a normal create, and kill -9 during a fill or a claim loses and duplicates nothing.
 * Dead members (VM stopped) are never handed out and are removed and replaced; lowering warm_pool and
 * reloading removes the surplus, and claims racing those removals keep their sandboxes;
 * `warm_pool_state: paused` keeps members paused and a claim resumes one.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { inspect, runTool, setControl } from "../pvesim/harness.js";
import { DEFAULT_KNOBS, MaintenanceHost, until } from "./maintenance-host.js";

interface Body {
  vmid: number;
  name: string;
  state: string;
  tags: string[];
  pool?: string;
  from_pool?: boolean;
  lease_expires_at?: string;
  created_at: string;
}
interface Pool {
  profile: string;
  wanted: number;
  ready: number;
  filling: number;
}

describe("warm pool (api backend)", () => {
  let m: MaintenanceHost;

  const pools = async (): Promise<Pool[]> => {
    const r = await m.h.json<{ pools?: Pool[] }>(["status"]);
    assert.equal(r.code, 0, r.stderr);
    return r.body.pools ?? [];
  };
  const members = async (): Promise<Body[]> => {
    const r = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list", "--all"]);
    assert.equal(r.code, 0, r.stderr);
    // A fill a kill -9 interrupted stays as a FAILED row (its VM removed), like any provisioning.
    return r.body.sandboxes.filter(
      (s) => s.pool === "pooled" && s.state !== "DESTROYED" && s.state !== "FAILED",
    );
  };
  const full = () =>
    until(
      "the pool to be full",
      async () => {
        const [pool] = await pools();
        return pool?.ready === 2 && pool.filling === 0 ? pool : undefined;
      },
      60_000,
    );
  /** Rewrite the profile's warm_pool and reload the daemon (SIGHUP). */
  const setWarmPool = (n: number) => {
    const path = join(m.h.host.profilesDir, "pooled.yaml");
    writeFileSync(path, readFileSync(path, "utf8").replace(/^warm_pool: \d+$/m, `warm_pool: ${n}`));
    m.daemon.proc.kill("SIGHUP");
  };
  const removedEvent = async (vmid: number) => {
    const logs = await m.h.cli(["logs", String(vmid)]);
    return logs.stdout.split("\n").find((line) => line.includes("removed from the warm pool of pooled"));
  };
  const vmName = (vmid: number) =>
    inspect(m.h.sim.dir, (ctx) => ({
      name: ctx.state.vms[vmid]?.config.name,
      tags: ctx.state.vms[vmid]?.config.tags,
    }));

  before(async () => {
    m = await MaintenanceHost.start("api");
    const base = readFileSync(join(m.h.host.profilesDir, "yolo-ephemeral.yaml"), "utf8");
    writeFileSync(
      join(m.h.host.profilesDir, "pooled.yaml"),
      `${base.replace(/^name: .*$/m, "name: pooled")}warm_pool: 2\n`,
    );
    writeFileSync(
      m.h.host.configPath,
      `${readFileSync(m.h.host.configPath, "utf8")}\nwarm_pool_concurrency: 2\n`,
    );
    await m.daemon.stop();
    await m.restart();
  });
  after(async () => {
    await m.stop();
  });

  test("fills to warm_pool; members are nobody's sandboxes; status shows the fill", async () => {
    const pool = await full();
    assert.deepEqual(pool, { profile: "pooled", wanted: 2, ready: 2, filling: 0 });
    const text = await m.h.cli(["status"]);
    assert.match(text.stdout, /pool pooled:\s+2\/2 ready, 0 filling/);
    const list = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    assert.deepEqual(list.body.sandboxes, [], "a plain list shows no pool member");
    const ready = await members();
    assert.equal(ready.length, 2);
    for (const member of ready) {
      assert.equal(member.state, "RUNNING");
      assert.equal(member.lease_expires_at, undefined, "a member counts against no lease");
    }
    const vms = await m.simVms();
    for (const member of ready) assert.deepEqual(vms[member.vmid]?.snapshots, ["clean"]);
  });

  test("sandbox new claims a member: name, tags and lease set, the VM renamed; the pool refills", async () => {
    await full();
    const before = new Set((await members()).map((s) => s.vmid));
    const r = await m.h.json<Body>(["new", "--profile", "pooled", "--name", "mine", "--tag", "team-a"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.body.from_pool, true);
    assert.ok(before.has(r.body.vmid), "the sandbox is one of the members");
    assert.equal(r.body.state, "RUNNING");
    assert.equal(r.body.name, "mine");
    assert.deepEqual(r.body.tags, ["team-a"]);
    assert.ok(r.body.lease_expires_at, "the claim starts the profile's lease");
    assert.equal(r.body.pool, undefined);
    const list = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    assert.deepEqual(
      list.body.sandboxes.map((s) => s.vmid),
      [r.body.vmid],
    );
    await until("the VM's name and tags in Proxmox", async () => {
      const vm = await vmName(r.body.vmid);
      return vm.name === "mine" && String(vm.tags).includes("team-a") ? true : undefined;
    });
    const logs = await m.h.cli(["logs", String(r.body.vmid)]);
    assert.match(logs.stdout, /claimed from the warm pool of profile pooled/);
    await full();
    const now = await members();
    assert.ok(!now.some((s) => s.vmid === r.body.vmid), "the claimed sandbox left the pool");
    const destroyed = await m.h.cli(["sandbox", "destroy", String(r.body.vmid)]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
  });

  test("concurrent claims get different members; an empty pool falls back to a normal create", async () => {
    await full();
    // Fills take long enough now that none ends while these three requests run.
    await setControl(m.h.sim.dir, { clone_ms: 3000 });
    try {
      const results = await Promise.all([1, 2, 3].map(() => m.h.json<Body>(["new", "--profile", "pooled"])));
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      const claimed = results.filter((r) => r.body.from_pool === true).map((r) => r.body.vmid);
      assert.equal(claimed.length, 2, "two requests got the two members");
      assert.notEqual(claimed[0], claimed[1]);
      const cold = results.find((r) => r.body.from_pool !== true)!;
      assert.equal(cold.body.state, "RUNNING", "the third was created the usual way");
      assert.ok(!claimed.includes(cold.body.vmid));
      // Not from the pool by request: an explicit VMID.
      const own = await m.h.cli(["new", "--profile", "pooled", "--vmid", "777"]);
      assert.equal(own.code, 0, own.stderr);
      assert.match(own.stderr, /not from the warm pool of pooled: an explicit VMID was asked for/);
      assert.match(own.stderr, /cloning template/);
    } finally {
      await setControl(m.h.sim.dir, DEFAULT_KNOBS);
    }
    await full();
    const mine = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    assert.equal(mine.body.sandboxes.length, 4);
    for (const s of mine.body.sandboxes)
      assert.equal((await m.h.cli(["sandbox", "destroy", String(s.vmid)])).code, 0);
    await m.assertNothingStuckOrOrphaned();
  });

  test("a claim is never handed a member whose VM stopped; dead members are removed and replaced", async () => {
    await full();
    const [first, second] = await members();
    // Stopped behind agentlab's back: the database still says RUNNING, only Proxmox knows.
    const qm = await runTool(m.h.sim, "qm", ["stop", String(first!.vmid)]);
    assert.equal(qm.code, 0, qm.stderr);
    // Text output: the progress lines say which member was passed over.
    const claim = await m.h.cli(["new", "--profile", "pooled", "--name", "checked"]);
    assert.equal(claim.code, 0, claim.stderr);
    assert.match(
      claim.stderr,
      new RegExp(
        `sandbox ${first!.vmid} of the warm pool of pooled is not running in Proxmox \\(stopped\\): trying the next`,
      ),
    );
    assert.match(claim.stderr, new RegExp(`claimed sandbox ${second!.vmid} from the warm pool of pooled`));
    const mine = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    const r = { body: mine.body.sandboxes.find((s) => s.name === "checked")! };
    assert.equal(r.body.vmid, second!.vmid, "the member whose VM runs");
    const vms = await m.simVms();
    assert.equal(vms[r.body.vmid]?.status, "running");
    // The stopped member is removed (its VM destroyed) and the pool is full again without it.
    const removed = await until("the stopped member's removal", () => removedEvent(first!.vmid));
    assert.match(removed, /it is FAILED \(its VM was found stopped by a claim\), so no claim can take it/);
    assert.equal((await m.simVms())[first!.vmid], undefined, "its VM is gone");
    await full();
    // A member an operator stops is dead weight too: removed and replaced at once.
    const [stopped] = await members();
    assert.equal((await m.h.cli(["sandbox", "stop", String(stopped!.vmid)])).code, 0);
    assert.match(
      await until("the stopped member's removal", () => removedEvent(stopped!.vmid)),
      /it is STOPPED, so no claim can take it/,
    );
    const pool = await full();
    assert.equal(pool.ready, 2);
    assert.ok(!(await members()).some((s) => s.vmid === first!.vmid || s.vmid === stopped!.vmid));
    assert.equal((await m.h.cli(["sandbox", "destroy", String(r.body.vmid)])).code, 0);
  });

  test("kill -9 after a claim committed, before the VM was renamed: the restart finishes the claim", async () => {
    await full();
    // The VM config write after the claim hangs (Proxmox stuck), so the daemon dies with it pending.
    await setControl(m.h.sim.dir, { hang_calls: "^(PUT|POST) /nodes/[^/]+/qemu/\\d+/config" } as never);
    const r = await m.h.json<Body>(["new", "--profile", "pooled", "--name", "survivor"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.body.from_pool, true);
    m.daemon.proc.kill("SIGKILL");
    assert.equal(await m.daemon.exited, "SIGKILL");
    await setControl(m.h.sim.dir, { hang_calls: "" } as never);
    await m.restart();
    await until("the claim's recovery", async () => {
      const vm = await vmName(r.body.vmid);
      return vm.name === "survivor" ? true : undefined;
    });
    const show = await m.show(r.body.vmid);
    assert.equal(show.state, "RUNNING");
    const logs = await m.h.cli(["logs", String(r.body.vmid)]);
    assert.match(logs.stdout, /warm pool claim a daemon restart interrupted was finished/);
    await full();
    const pool = await members();
    assert.ok(!pool.some((s) => s.vmid === r.body.vmid), "never handed out twice: it is not a member again");
    const list = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    assert.deepEqual(
      list.body.sandboxes.map((s) => s.vmid),
      [r.body.vmid],
    );
    assert.equal((await m.h.cli(["sandbox", "destroy", String(r.body.vmid)])).code, 0);
  });

  test("kill -9 during a fill: the restart rolls the member back and refills, nothing orphaned", async () => {
    await full();
    const [first] = await members();
    await setControl(m.h.sim.dir, { clone_ms: 3000 });
    // Destroying a member makes the pool fill one, whose clone takes 3 s.
    assert.equal((await m.h.cli(["sandbox", "destroy", String(first!.vmid)])).code, 0);
    await until("a fill to be cloning", async () =>
      inspect(m.h.sim.dir, (ctx) =>
        Object.values(ctx.state.vms).some((vm) => vm.config.lock === "clone") ? true : undefined,
      ),
    );
    m.daemon.proc.kill("SIGKILL");
    assert.equal(await m.daemon.exited, "SIGKILL");
    await setControl(m.h.sim.dir, DEFAULT_KNOBS);
    await m.restart();
    await full();
    await m.assertNothingStuckOrOrphaned();
    assert.equal((await members()).length, 2);
  });

  test("lowering warm_pool (SIGHUP) removes the surplus, oldest first, each with an event", async () => {
    await full();
    const before = (await members()).sort((a, b) => a.created_at.localeCompare(b.created_at));
    setWarmPool(1);
    const pool = await until("the surplus member's removal", async () => {
      const [p] = await pools();
      return p?.wanted === 1 && p.ready === 1 && (await members()).length === 1 ? p : undefined;
    });
    assert.deepEqual(pool, { profile: "pooled", wanted: 1, ready: 1, filling: 0 });
    assert.equal((await members())[0]?.vmid, before[1]!.vmid, "the newer member stays");
    assert.match(
      (await removedEvent(before[0]!.vmid)) ?? "",
      /surplus: warm_pool of pooled is 1 and 2 members are ready/,
    );
    assert.equal((await m.simVms())[before[0]!.vmid], undefined, "its VM is destroyed");
  });

  test("claims racing the removal of a whole pool never lose the user's sandbox", async () => {
    setWarmPool(3);
    await until(
      "three members",
      async () => {
        const [p] = await pools();
        return p?.ready === 3 && p.filling === 0 ? p : undefined;
      },
      90_000,
    );
    // Every Proxmox call slower, so the removals are still under way while the claims arrive.
    await setControl(m.h.sim.dir, { call_latency_ms: 150 } as never);
    let claims: Array<{ code: number | null; body: Body; stderr: string }>;
    try {
      setWarmPool(0);
      claims = await Promise.all([1, 2].map(() => m.h.json<Body>(["new", "--profile", "pooled"])));
      for (const r of claims) assert.equal(r.code, 0, r.stderr);
      await until("the pool to be gone", async () =>
        (await pools()).length === 0 && (await members()).length === 0 ? true : undefined,
      );
    } finally {
      await setControl(m.h.sim.dir, { call_latency_ms: 0 } as never);
    }
    const vms = await m.simVms();
    for (const r of claims) {
      const show = await m.show(r.body.vmid);
      assert.equal(show.state, "RUNNING", `sandbox ${r.body.vmid} is the user's and runs`);
      assert.equal(vms[r.body.vmid]?.status, "running");
      assert.equal(await removedEvent(r.body.vmid), undefined, "a claimed sandbox is never removed");
    }
    const list = await m.h.json<{ sandboxes: Body[] }>(["sandbox", "list"]);
    assert.deepEqual(list.body.sandboxes.map((s) => s.vmid).sort(), claims.map((r) => r.body.vmid).sort());
    for (const r of claims)
      assert.equal((await m.h.cli(["sandbox", "destroy", String(r.body.vmid)])).code, 0);
    await m.assertNothingStuckOrOrphaned();
  });

  test("warm_pool_state: paused keeps members paused in Proxmox; a claim resumes one", async () => {
    const path = join(m.h.host.profilesDir, "pooled.yaml");
    writeFileSync(path, `${readFileSync(path, "utf8")}warm_pool_state: paused\n`);
    setWarmPool(1);
    const member = await until(
      "a paused member",
      async () => {
        const [p] = await pools();
        const [row] = await members();
        return p?.ready === 1 && p.filling === 0 && row?.state === "SUSPENDED" ? row : undefined;
      },
      60_000,
    );
    const qmp = (vmid: number) => inspect(m.h.sim.dir, (ctx) => ctx.state.vms[vmid]?.runtime.qmpstatus);
    assert.equal(await qmp(member.vmid), "paused", "paused in RAM, not stopped");
    // A drift report (what the reconciler acts on) does not take a paused member for drift.
    const inventory = await m.h.json<{ findings: Array<{ vmid: number }> }>(["sandbox", "inventory"]);
    assert.equal(inventory.code, 0, inventory.stderr);
    assert.deepEqual(
      inventory.body.findings.filter((f) => f.vmid === member.vmid),
      [],
    );
    const claim = await m.h.cli(["new", "--profile", "pooled", "--name", "woken"]);
    assert.equal(claim.code, 0, claim.stderr);
    assert.match(claim.stderr, new RegExp(`resuming sandbox ${member.vmid} of the warm pool of pooled`));
    assert.equal((await m.show(member.vmid)).state, "RUNNING");
    assert.equal(await qmp(member.vmid), "running");
    // The pool refills with a paused member again.
    const next = await until(
      "the next paused member",
      async () => {
        const [row] = await members();
        return row && row.vmid !== member.vmid && row.state === "SUSPENDED" ? row : undefined;
      },
      60_000,
    );
    // A claim resumes without reading the status first; a member whose VM was stopped behind
    // agentlab's back is still never handed out: the refused resume makes the claim look, and pass it.
    const qm = await runTool(m.h.sim, "qm", ["stop", String(next.vmid)]);
    assert.equal(qm.code, 0, qm.stderr);
    const fallback = await m.h.json<Body>(["new", "--profile", "pooled"]);
    assert.equal(fallback.code, 0, fallback.stderr);
    assert.notEqual(fallback.body.vmid, next.vmid, "not the stopped member");
    assert.notEqual(fallback.body.from_pool, true, "a cold create: the pool's one member was dead");
    // Paused members are SUSPENDED, which may not become FAILED (spec 4.1): STOPPED, then removed.
    assert.match(
      await until("the stopped member's removal", () => removedEvent(next.vmid)),
      /it is STOPPED, so no claim can take it/,
    );
    for (const vmid of [member.vmid, fallback.body.vmid])
      assert.equal((await m.h.cli(["sandbox", "destroy", String(vmid)])).code, 0);
  });
});
