import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, setControl } from "../pvesim/harness.js";

/**
 * A sandbox row records the node its VM was made on. After a migration (by hand, or by HA) that
 * record is stale, and Proxmox asked on the old node answers "Configuration file … does not exist".
 * destroy --force and the lease reaper treat "does not exist" as "already gone", so they must look
 * the VM up by VMID cluster-wide first: a living VM is never marked DESTROYED.
 */
interface SandboxBody {
  vmid: number;
  state: string;
}

function recordNode(h: SimHost, vmid: number, node: string): void {
  const db = new Database(h.host.dbPath);
  db.prepare("UPDATE sandboxes SET node = ? WHERE vmid = ?").run(node, vmid);
  db.close();
}

const simVmNode = (h: SimHost, vmid: number) =>
  inspect(h.sim.dir, (ctx) => ctx.state.vms[String(vmid)]?.node);

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`a stale recorded node never hides a living VM (${kind} backend)`, () => {
    let h: SimHost;
    before(async () => {
      h = await startSimHost(kind, "proxmox_node: pve\n", { nodes: ["pve", "pve2"] });
      await setControl(h.sim.dir, FAST_KNOBS);
    });
    after(async () => {
      await h.stop();
    });

    test("destroy --force finds the VM on the node the cluster names and destroys it there", async () => {
      const made = await h.json<SandboxBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(made.code, 0, made.stderr);
      const vmid = made.body.vmid;
      assert.equal(await simVmNode(h, vmid), "pve");
      // The row now names pve2 (as after a migration pve -> pve2 -> pve the daemon did not see).
      recordNode(h, vmid, "pve2");

      const destroyed = await h.json<SandboxBody>(["sandbox", "destroy", "--force", String(vmid)]);
      assert.equal(destroyed.code, 0, JSON.stringify(destroyed.body));
      assert.equal(destroyed.body.state, "DESTROYED");
      assert.equal(await simVmNode(h, vmid), undefined, "the VM itself is gone, not only the row");
    });

    test("a plain destroy finds the VM on its real node too", async () => {
      const made = await h.json<SandboxBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(made.code, 0, made.stderr);
      const vmid = made.body.vmid;
      recordNode(h, vmid, "pve2");
      const destroyed = await h.json<SandboxBody>(["sandbox", "destroy", String(vmid)]);
      assert.equal(destroyed.code, 0, JSON.stringify(destroyed.body));
      assert.equal(await simVmNode(h, vmid), undefined);
    });
  });
}
