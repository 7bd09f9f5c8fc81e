/**
 * A just-booted node: pvestatd has reported nothing yet, so /cluster/resources lists every VM as
 * `status: "unknown"` without `name` or `template` (API2Tools.pm:84-116), and the list lags the real
 * state after that. The daemon must still plan a linked clone from the template's config and bring
 * a sandbox up, on both backends.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect } from "../pvesim/harness.js";

interface Issue {
  code: string;
  message: string;
}

const AN_HOUR = 3_600_000;

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`cluster list before pvestatd reported the VMs: ${kind} backend`, () => {
    let h: SimHost;
    before(async () => {
      h = await startSimHost(kind, "", { knobs: { resources_lag_ms: AN_HOUR } });
    });
    after(async () => {
      await h?.stop();
    });

    test("validate plans a linked clone of the template without a not-a-template warning", async () => {
      const result = await h.json<{ ok: boolean; warnings: Issue[]; plan: Record<string, unknown> }>([
        "sandbox",
        "validate",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.body.ok, true);
      assert.equal(result.body.plan.clone, "linked");
      assert.deepEqual(
        result.body.warnings.map((w) => w.code),
        [],
      );
    });

    test("sandbox new makes a linked clone and runs while the list still says unknown", async () => {
      const created = await h.json<{ vmid: number; state: string }>([
        "sandbox",
        "new",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(created.body.state, "RUNNING");
      const vm = await inspect(h.sim.dir, (ctx) => {
        const rec = ctx.state.vms[String(created.body.vmid)];
        return rec ? { scsi0: String(rec.config.scsi0), status: rec.runtime.status } : undefined;
      });
      assert.ok(vm, "the VM exists");
      assert.equal(vm.status, "running");
      // A linked clone's disk sits on the template's base volume.
      assert.match(vm.scsi0, /base-9000-disk-0\/vm-\d+-disk-0/);
      const listed = await h.json<{ sandboxes: Array<{ vmid: number; state: string }> }>(["ls"]);
      assert.deepEqual(
        listed.body.sandboxes.map((s) => [s.vmid, s.state]),
        [[created.body.vmid, "RUNNING"]],
      );
    });
  });
}
