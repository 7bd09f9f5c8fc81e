import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { agentlabRolePrivs, roleAddCommand } from "../../src/daemon/proxmox/privileges.js";
import { runbookRoleLines, runbookText, runbookToken, TOKEN_ID, TOKEN_USER } from "../helpers/api-token.js";
import { type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl } from "../pvesim/harness.js";
import { createWorkspace, type ErrorBody, type SandboxBody, simVm, volidOf } from "./workspace-volume.js";

/**
 * The api backend with the token docs/runbook.md's "API backend install" makes: the AgentLab role
 * exactly as the runbook lists it (read from the runbook, so the document is what is tested), a
 * privilege-separated token, the role on / for user and token. Every flow that needs one of the
 * privileges runs through the simulator, which refuses each one Proxmox refuses: clone and resize
 * (Datastore.AllocateSpace, SDN.Use), the agent (VM.GuestAgent.Audit), holder create, the workspace
 * reference (Datastore.Audit + VM.Config.Disk), GET /storage/{id} for lvmthin fsck and ZFS forks
 * (Datastore.Allocate), destroy. A role short of one privilege gets Proxmox's 403, and `agentlab init`
 * and `agentlab status` name it with the command that grants it.
 */

interface Check {
  name: string;
  status: "ok" | "warn" | "fail";
  detail: string;
  fix?: string;
}

const TIMINGS = { clone_ms: 50, start_ms: 30, stop_ms: 20, agent_ready_ms: 60, task_ms: 20 };
const PROFILE = "yolo-workspace";

test("the runbook's role lines are the privilege list agentlabd checks (PVE 9, then PVE 8)", () => {
  assert.deepEqual(runbookRoleLines(), [agentlabRolePrivs(9), agentlabRolePrivs(8)]);
  const text = runbookText();
  for (const line of [
    roleAddCommand(9),
    roleAddCommand(8),
    `pveum user add ${TOKEN_USER}`,
    "pveum user token add agentlab@pve agentlabd --privsep 1",
    `pveum acl modify / --users ${TOKEN_USER} --roles AgentLab`,
    `pveum acl modify / --tokens '${TOKEN_ID}' --roles AgentLab`,
  ]) {
    assert.ok(text.includes(line), `docs/runbook.md has: ${line}`);
  }
});

describe("api backend with exactly the documented AgentLab role (host tools on)", () => {
  let h: SimHost;
  before(async () => {
    h = await startSimHost(
      "api",
      "host_tools: on\nworkspace_storage: local-lvm\n",
      {},
      { apiToken: runbookToken(runbookRoleLines()[0]!) },
    );
    await setControl(h.sim.dir, TIMINGS);
  });
  after(async () => {
    await h.stop();
  });

  test("init and status find nothing missing", async () => {
    const init = await h.json<{ checks: Check[] }>(["init"]);
    const check = init.body.checks.find((c) => c.name === "privileges");
    assert.equal(check?.status, "ok", JSON.stringify(check));
    assert.match(
      check.detail,
      /^token agentlab@pve!agentlabd has what agentlabd uses on \/vms, \/vms\/9000, /,
    );
    assert.match(check.detail, /\/storage\/local-lvm/);
    assert.match(check.detail, /\/sdn\/zones\/localnetwork\/vmbr1/);
    assert.match(check.detail, /\/nodes\/pve/);
    const status = await h.json<{ privileges: Check }>(["status"]);
    assert.equal(status.body.privileges.status, "ok", JSON.stringify(status.body.privileges));
  });

  test("sandbox new with a workspace, lvmthin fsck, a ZFS fork, destroy: all allowed", async () => {
    const ws = await createWorkspace(h, "w-lvm", "local-lvm");
    const created = await h.json<SandboxBody>([
      "sandbox",
      "new",
      "--profile",
      PROFILE,
      "--workspace",
      ws.name,
    ]);
    assert.equal(created.code, 0, `${created.stderr}${JSON.stringify(created.body)}`);
    assert.equal(created.body.state, "RUNNING");
    const vm = await simVm(h, created.body.vmid);
    assert.equal(volidOf(vm?.config.scsi1), ws.volid, "scsi1 references the holder's volume");

    const destroyed = await h.json(["sandbox", "destroy", String(created.body.vmid)]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    // lvmthin fsck reads the storage's vgname through GET /storage/local-lvm.
    const fsck = await h.cli(["workspace", "fsck", ws.name]);
    assert.equal(fsck.code, 0, `${fsck.stdout}${fsck.stderr}`);
    assert.match(fsck.stdout, /^Status: clean$/m);

    // A ZFS fork with host tools reads the storage's pool through GET /storage/local-zfs.
    const zfs = await createWorkspace(h, "w-zfs", "local-zfs");
    const fork = await h.cli(["workspace", "fork", zfs.name, "--name", "w-zfs-fork"]);
    assert.equal(fork.code, 0, `${fork.stdout}${fork.stderr}`);
    assert.match(fork.stdout, /\(copy-on-write\)$/m);

    for (const name of ["w-zfs-fork", "w-zfs", ws.name]) {
      const gone = await h.json(["workspace", "destroy", "--force", name]);
      assert.equal(gone.code, 0, `${name}: ${gone.stderr}${JSON.stringify(gone.body)}`);
    }
  });
});

describe("api backend with the AgentLab role minus Datastore.Allocate", () => {
  let h: SimHost;
  const privs = runbookRoleLines()[0]!.filter((p) => p !== "Datastore.Allocate");
  before(async () => {
    h = await startSimHost(
      "api",
      "host_tools: on\nworkspace_storage: local-lvm\n",
      {},
      { apiToken: runbookToken(privs) },
    );
    await setControl(h.sim.dir, TIMINGS);
  });
  after(async () => {
    await h.stop();
  });

  test("init and status name the missing privilege, its path and the pveum lines that grant it", async () => {
    const init = await h.json<{ checks: Check[] }>(["init"]);
    const check = init.body.checks.find((c) => c.name === "privileges");
    assert.equal(check?.status, "fail", JSON.stringify(check));
    assert.match(
      check.detail,
      /^token agentlab@pve!agentlabd: \/storage\/local-lvm lacks Datastore\.Allocate \(/,
    );
    assert.match(
      check.fix ?? "",
      /^pveum acl modify \/storage\/local-lvm --users agentlab@pve --roles AgentLab && pveum acl modify \/storage\/local-lvm --tokens 'agentlab@pve!agentlabd' --roles AgentLab /,
    );
    const status = await h.json<{ privileges: Check }>(["status"]);
    assert.deepEqual(status.body.privileges, check);
    const text = await h.cli(["status"]);
    assert.match(
      text.stdout,
      /^privileges: +fail: token agentlab@pve!agentlabd: \/storage\/local-lvm lacks Datastore\.Allocate/m,
    );
    assert.match(
      text.stdout,
      /fix: pveum acl modify \/storage\/local-lvm --users agentlab@pve --roles AgentLab/,
    );
  });

  test("workspace create on lvmthin (formatting reads GET /storage/local-lvm) gets Proxmox's 403 and the fix", async () => {
    const refused = await h.json<ErrorBody>([
      "workspace",
      "create",
      "--name",
      "w-lvm",
      "--size",
      "1G",
      "--storage",
      "local-lvm",
    ]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "PROXMOX_PERMISSION");
    assert.match(
      refused.body.message,
      /Permission check failed \(\/storage\/local-lvm, Datastore\.Allocate\)/,
    );
    assert.match(
      refused.body.hint,
      /pveum acl modify \/storage\/local-lvm --tokens 'agentlab@pve!agentlabd' --roles AgentLab/,
    );
  });
});

describe("api backend with the AgentLab role minus SDN.Use", () => {
  let h: SimHost;
  before(async () => {
    h = await startSimHost(
      "api",
      "host_tools: off\n",
      {},
      { apiToken: runbookToken(runbookRoleLines()[0]!.filter((p) => p !== "SDN.Use")) },
    );
    await setControl(h.sim.dir, TIMINGS);
  });
  after(async () => {
    await h.stop();
  });

  test("the clone is refused with Proxmox's SDN.Use 403; init names the bridge and the grant", async () => {
    const refused = await h.json<ErrorBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(refused.code, 1);
    assert.equal(refused.body.code, "PROVISIONING_FAILED");
    assert.equal(refused.body.details["cause_code"], "PROXMOX_PERMISSION");
    assert.match(
      refused.body.message,
      /clone 9000 -> \d+: Permission check failed \(\/sdn\/zones\/localnetwork\/vmbr1, SDN\.Use\)$/,
    );
    assert.equal(await simVm(h, refused.body.details["vmid"] as number), undefined, "no VM was made");
    // The error of sandbox new itself says how to grant what is missing, before what became of the sandbox.
    assert.match(
      refused.body.hint,
      /pveum acl modify \/sdn\/zones\/localnetwork\/vmbr1 .*--roles AgentLab[\s\S]*\nthe sandbox is FAILED with this reason/,
    );
    const init = await h.json<{ checks: Check[] }>(["init"]);
    const check = init.body.checks.find((c) => c.name === "privileges");
    assert.equal(check?.status, "fail", JSON.stringify(check));
    assert.match(check.detail, /\/sdn\/zones\/localnetwork\/vmbr1 lacks SDN\.Use \(/);
    assert.match(
      check.fix ?? "",
      /pveum acl modify \/sdn\/zones\/localnetwork\/vmbr1 --tokens 'agentlab@pve!agentlabd' --roles AgentLab/,
    );
  });
});

describe("PVE 8 with the runbook's PVE 8 role (VM.Monitor for the agent)", () => {
  let h: SimHost;
  before(async () => {
    h = await startSimHost(
      "api",
      "host_tools: off\n",
      { knobs: { ...TIMINGS, pve_version: "8.4.1" } },
      { apiToken: runbookToken(runbookRoleLines()[1]!) },
    );
  });
  after(async () => {
    await h.stop();
  });

  test("init finds nothing missing; sandbox new reaches the agent and destroy removes the VM", async () => {
    const init = await h.json<{ checks: Check[] }>(["init"]);
    const check = init.body.checks.find((c) => c.name === "privileges");
    assert.equal(check?.status, "ok", JSON.stringify(check));
    const created = await h.json<SandboxBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(created.code, 0, `${created.stderr}${JSON.stringify(created.body)}`);
    assert.equal(created.body.state, "RUNNING");
    const destroyed = await h.json(["sandbox", "destroy", String(created.body.vmid)]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    assert.equal(await simVm(h, created.body.vmid), undefined);
  });
});
