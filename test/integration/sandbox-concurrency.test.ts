import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, setControl } from "../pvesim/harness.js";

const PARALLEL = 20;

for (const kind of ["api", "shell"] as BackendKind[]) {
  describe(`${PARALLEL} parallel sandbox new with lock contention (${kind} backend)`, () => {
    let h: SimHost;
    before(async () => {
      h = await startSimHost(kind);
      // Every VM operation may first meet a Proxmox lock; the daemon must wait it out and retry.
      await setControl(h.sim.dir, {}, ["lock=times=12", "lock=kind=flock,times=6"]);
    });
    after(async () => {
      await h.stop();
    });

    test("all succeed, with distinct VMIDs and distinct addresses, and no VM left over", async () => {
      const results = await Promise.all(
        Array.from({ length: PARALLEL }, () =>
          h.json<{ vmid: number; ip?: string; state: string }>(["new", "--profile", "yolo-ephemeral"]),
        ),
      );
      for (const r of results) assert.equal(r.code, 0, JSON.stringify(r.body));
      const vmids = results.map((r) => r.body.vmid);
      const ips = results.map((r) => r.body.ip);
      assert.equal(new Set(vmids).size, PARALLEL, `distinct VMIDs: ${vmids.join(",")}`);
      assert.equal(new Set(ips).size, PARALLEL, `distinct IPs: ${ips.join(",")}`);
      assert.ok(results.every((r) => r.body.state === "RUNNING"));
      const simVms = await inspect(h.sim.dir, (ctx) =>
        Object.keys(ctx.state.vms)
          .map(Number)
          .filter((v) => v !== 9000)
          .sort(),
      );
      assert.deepEqual(simVms, [...vmids].sort(), "exactly one VM per sandbox");
      // The contention really happened and was waited out, not avoided.
      const retries = h.daemon
        .output()
        .stdout.split("\n")
        .filter((line) => line.includes("retrying after lock"));
      assert.ok(retries.length >= 6, `expected lock retries in the daemon log, saw ${retries.length}`);
    });
  });
}
