import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { addAcl, addRole, addToken, ROLES } from "../pvesim/access.js";
import { PveError } from "../pvesim/errors.js";
import { api, apiTask, createSim, inspect, type Sim, setControl, waitTask } from "../pvesim/harness.js";

/**
 * The simulator's privilege model against pve-access-control and the call sites that check: the
 * built-in roles, GET /access/permissions, and each check agentlabd's calls meet (resize, references
 * to another VM's volume, volume info, storage config, the guest agent before and after PVE 9).
 */

const TOKEN = { user: "agentlab@pve", tokenid: "agentlabd" };
const TOKEN_ID = "agentlab@pve!agentlabd";

function denied(path: string, priv: string) {
  return (error: unknown) => {
    assert.ok(error instanceof PveError, String(error));
    assert.equal(error.status, 403);
    assert.equal(error.message, `Permission check failed (${path}, ${priv})`);
    return true;
  };
}

describe("built-in roles (AccessControl.pm create_roles)", () => {
  it("PVEVMAdmin holds only VM.*, VM.Monitor included (PVE 8's name); the user and audit roles per group", () => {
    assert.ok(ROLES["PVEVMAdmin"]!.every((p) => p.startsWith("VM.")));
    assert.ok(ROLES["PVEVMAdmin"]!.includes("VM.Monitor"));
    assert.deepEqual([...ROLES["PVEDatastoreUser"]!].sort(), ["Datastore.AllocateSpace", "Datastore.Audit"]);
    assert.deepEqual([...ROLES["PVESDNUser"]!].sort(), ["SDN.Audit", "SDN.Use"]);
    assert.deepEqual([...ROLES["PVETemplateUser"]!].sort(), ["VM.Audit", "VM.Clone"]);
    for (const p of ["Sys.Audit", "Datastore.Audit", "VM.Audit", "SDN.Audit", "Pool.Audit", "Mapping.Audit"])
      assert.ok(ROLES["PVEAuditor"]!.includes(p), p);
    for (const p of ["Sys.Modify", "Sys.PowerMgmt", "Permissions.Modify", "Mapping.Modify", "Realm.Allocate"])
      assert.ok(!ROLES["PVEAdmin"]!.includes(p), p);
    assert.ok(ROLES["PVEMappingAdmin"]!.includes("Mapping.Modify"));
  });
});

describe("pvesim privileges", () => {
  let sim: Sim;
  let holderVolid: string;
  before(async () => {
    sim = createSim({ knobs: { clone_ms: 20, full_clone_ms: 20, task_ms: 10, start_ms: 10, stop_ms: 10 } });
    // As root: a sandbox-like clone (200) and a holder (300) whose disk the token will reference.
    await apiTask(sim, "POST", "/nodes/pve/qemu/9000/clone", { newid: "200", name: "sb" });
    await apiTask(sim, "POST", "/nodes/pve/qemu", { vmid: "300", name: "holder", scsi0: "local-zfs:1" });
    holderVolid = await inspect(
      sim.dir,
      (ctx) => String(ctx.state.vms["300"]!.config["scsi0"]).split(",")[0]!,
    );
    await inspect(sim.dir, (ctx) => {
      addRole(
        ctx.state,
        "VmOnly",
        [...ROLES["PVEVMAdmin"]!.filter((p) => !p.startsWith("VM.GuestAgent."))],
        "8.4.1",
      );
      addRole(ctx.state, "StorageAudit", ["Datastore.Audit"], ctx.control.pve_version);
      addRole(ctx.state, "StorageSpace", ["Datastore.AllocateSpace"], ctx.control.pve_version);
      addToken(ctx.state, TOKEN_ID, true);
      // The user may do everything the token is given below; the token is what narrows it.
      addAcl(ctx.state, "/", "PVEAdmin", "agentlab@pve");
      addAcl(ctx.state, "/vms", "PVEVMAdmin", TOKEN_ID);
    });
  });
  after(() => sim.cleanup());

  it("GET /access/permissions: one path with propagate flags, the privsep intersection, the whole map", async () => {
    await inspect(sim.dir, (ctx) =>
      addAcl(ctx.state, "/storage/local-zfs", "PVEDatastoreUser", TOKEN_ID, false),
    );
    const vms = (await api(sim, "GET", "/access/permissions", { path: "/vms/200" }, TOKEN)).data as Record<
      string,
      Record<string, number>
    >;
    assert.deepEqual(Object.keys(vms), ["/vms/200"]);
    assert.equal(vms["/vms/200"]!["VM.Allocate"], 1);
    assert.equal(vms["/vms/200"]!["VM.GuestAgent.Audit"], 1, "PVE 9 names it VM.GuestAgent.Audit");
    assert.equal(vms["/vms/200"]!["VM.Monitor"], undefined, "VM.Monitor is gone in PVE 9");
    assert.equal(
      vms["/vms/200"]!["Datastore.AllocateSpace"],
      undefined,
      "the user's PVEAdmin is cut to the token's",
    );
    const zfs = (await api(sim, "GET", "/access/permissions", { path: "/storage/local-zfs" }, TOKEN)).data;
    assert.deepEqual(zfs, { "/storage/local-zfs": { "Datastore.AllocateSpace": 0, "Datastore.Audit": 0 } });
    const lvm = (await api(sim, "GET", "/access/permissions", { path: "/storage/local-lvm" }, TOKEN)).data;
    assert.deepEqual(lvm, { "/storage/local-lvm": {} }, "an unpropagated ACL does not reach a sibling");
    const all = (await api(sim, "GET", "/access/permissions", {}, TOKEN)).data as Record<string, unknown>;
    assert.deepEqual(Object.keys(all).sort(), ["/storage/local-zfs", "/vms"]);
    // Its own user's permissions are another subject: Sys.Audit on /access is needed for that.
    await assert.rejects(
      api(sim, "GET", "/access/permissions", { userid: "agentlab@pve" }, TOKEN),
      denied("/access", "Sys.Audit"),
    );
    const owned = (
      await api(
        sim,
        "GET",
        "/access/permissions",
        { userid: TOKEN_ID, path: "/storage/local-zfs" },
        { user: "agentlab@pve" },
      )
    ).data;
    assert.deepEqual(owned, zfs, "a user may ask about its own token");
    await inspect(sim.dir, (ctx) => {
      ctx.state.acl = ctx.state.acl.filter((e) => e.path !== "/storage/local-zfs");
    });
  });

  it("resize checks Datastore.AllocateSpace on the disk's storage inside the worker", async () => {
    const upid = (await api(sim, "PUT", "/nodes/pve/qemu/200/resize", { disk: "scsi0", size: "+1G" }, TOKEN))
      .data as string;
    const task = await waitTask(sim, upid);
    assert.equal(task.exitstatus, "Permission check failed (/storage/local-zfs, Datastore.AllocateSpace)");
    await inspect(sim.dir, (ctx) => addAcl(ctx.state, "/storage/local-zfs", "StorageSpace", TOKEN_ID));
    const ok = (await api(sim, "PUT", "/nodes/pve/qemu/200/resize", { disk: "scsi0", size: "+1G" }, TOKEN))
      .data as string;
    assert.equal((await waitTask(sim, ok)).exitstatus, "OK");
    await inspect(sim.dir, (ctx) => {
      ctx.state.acl = ctx.state.acl.filter((e) => e.path !== "/storage/local-zfs");
    });
  });

  it("a reference to another VM's volume needs Datastore.Audit there and VM.Config.Disk on the owner", async () => {
    const attach = () =>
      api(sim, "PUT", "/nodes/pve/qemu/200/config", { scsi1: `${holderVolid},backup=0` }, TOKEN);
    await assert.rejects(attach(), denied("/storage/local-zfs", "Datastore.Audit"));
    await assert.rejects(
      api(sim, "GET", `/nodes/pve/storage/local-zfs/content/${holderVolid}`, {}, TOKEN),
      denied("/storage/local-zfs", "Datastore.Audit"),
    );
    await inspect(sim.dir, (ctx) => {
      addAcl(ctx.state, "/storage/local-zfs", "StorageAudit", TOKEN_ID);
      addAcl(ctx.state, "/vms/300", "PVEAuditor", TOKEN_ID);
    });
    await assert.rejects(attach(), denied("/vms/300", "VM.Config.Disk"));
    await inspect(sim.dir, (ctx) => {
      ctx.state.acl = ctx.state.acl.filter((e) => e.path !== "/vms/300");
    });
    await attach();
    assert.equal(
      await inspect(sim.dir, (ctx) => String(ctx.state.vms["200"]!.config["scsi1"]).split(",")[0]),
      holderVolid,
    );
    const info = (await api(sim, "GET", `/nodes/pve/storage/local-zfs/content/${holderVolid}`, {}, TOKEN))
      .data as Record<string, unknown>;
    assert.equal(typeof info["path"], "string");
    // Reading the storage's own config is Datastore.Allocate, which neither role has.
    await assert.rejects(
      api(sim, "GET", "/storage/local-zfs", {}, TOKEN),
      denied("/storage/local-zfs", "Datastore.Allocate"),
    );
  });

  it("the guest agent: VM.GuestAgent.Audit on PVE 9, VM.Monitor before; pveum refuses the other version's name", async () => {
    await inspect(sim.dir, (ctx) => addAcl(ctx.state, "/vms/200", "PVEVMUser", TOKEN_ID));
    const agent = () => api(sim, "GET", "/nodes/pve/qemu/200/agent/network-get-interfaces", {}, TOKEN);
    // PVEVMUser has VM.GuestAgent.Audit: past the privilege check, to the stopped VM's own error.
    await assert.rejects(agent(), (e: unknown) => e instanceof PveError && e.status !== 403);
    await setControl(sim.dir, { pve_version: "8.4.1" });
    await assert.rejects(agent(), denied("/vms/200", "VM.Monitor"));
    await inspect(sim.dir, (ctx) => addAcl(ctx.state, "/vms/200", "VmOnly", TOKEN_ID));
    await assert.rejects(agent(), (e: unknown) => e instanceof PveError && e.status !== 403);
    await inspect(sim.dir, (ctx) => {
      assert.throws(
        () => addRole(ctx.state, "Agent9", ["VM.GuestAgent.Audit"], "8.4.1"),
        /invalid privilege 'VM\.GuestAgent\.Audit'/,
      );
      assert.throws(
        () => addRole(ctx.state, "Agent8", ["VM.Monitor"], "9.1.7"),
        /invalid privilege 'VM\.Monitor'/,
      );
    });
    const perms = (await api(sim, "GET", "/access/permissions", { path: "/vms/200" }, TOKEN)).data as Record<
      string,
      Record<string, number>
    >;
    assert.equal(perms["/vms/200"]!["VM.Monitor"], 1);
    assert.equal(perms["/vms/200"]!["VM.GuestAgent.Audit"], undefined, "PVE 8 has no VM.GuestAgent.*");
    await setControl(sim.dir, { pve_version: "9.1.7" });
  });
});
