/**
 * The workspace check's finding generator on fixture states: a real SQLite store in a temp directory and
 * a fake backend that answers from a small in-memory "cluster". Each fixture breaks one thing, and the
 * test asserts the finding's code, severity and fix (design §5.4). Also the sandbox inventory's rule that
 * holder VMs are never unmanaged (design §5.5).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { pino } from "pino";
import type { Config } from "../../src/config/config.js";
import type { DaemonContext } from "../../src/daemon/context.js";
import { KeyedMutex } from "../../src/daemon/locks.js";
import type {
  ClusterVm,
  ProxmoxBackend,
  SnapshotInfo,
  StorageContentEntry,
  StorageInfo,
  VmConfig,
  VmRef,
} from "../../src/daemon/proxmox/types.js";
import { assessDrift } from "../../src/daemon/services/drift.js";
import { checkWorkspace } from "../../src/daemon/services/workspaces/check.js";
import { WorkspaceCore } from "../../src/daemon/services/workspaces/core.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import type { Workspace } from "../../src/daemon/store/workspaces.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import type { WorkspaceFinding } from "../../src/protocol/workspace.js";

const T0 = Date.parse("2026-03-01T10:00:00.000Z");
const H = 1005;
const VOLID = "local-zfs:vm-1005-disk-0";
const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

interface FakeVm {
  name?: string;
  config: VmConfig;
  state?: "running" | "stopped";
  lock?: string;
  snapshots?: SnapshotInfo[];
  /** Active tasks on it. */
  tasks?: number;
}

/** The cluster the fake backend answers from; tests change it to break one thing at a time. */
interface World {
  vms: Map<number, FakeVm>;
  storages: StorageInfo[];
  volumes: Set<string>;
  content: StorageContentEntry[];
  /** VMIDs whose config read fails with something other than "not found". */
  unreadable: Set<number>;
  down: boolean;
}

function notFound(vmid: number): AgentlabError {
  return new AgentlabError(
    "PROXMOX_VM_NOT_FOUND",
    `Configuration file 'nodes/pve/qemu-server/${vmid}.conf' does not exist`,
  );
}

function fakeBackend(world: World): ProxmoxBackend {
  const vm = (ref: VmRef): FakeVm => {
    if (world.unreadable.has(ref.vmid))
      throw new AgentlabError(
        "PROXMOX_PERMISSION",
        "Permission check failed (/vms/" + ref.vmid + ", VM.Audit)",
      );
    const found = world.vms.get(ref.vmid);
    if (!found) throw notFound(ref.vmid);
    return found;
  };
  const backend: Partial<ProxmoxBackend> = {
    async listVms(): Promise<ClusterVm[]> {
      if (world.down)
        throw new AgentlabError("PROXMOX_UNREACHABLE", "cannot reach Proxmox at https://pve:8006");
      return [...world.vms.entries()].map(([vmid, v]) => ({
        vmid,
        node: "pve",
        ...(v.name ? { name: v.name } : {}),
        state: v.state ?? "stopped",
        template: false,
        tags: [],
      }));
    },
    async listStorages() {
      return world.storages;
    },
    async getConfig(ref) {
      return vm(ref).config;
    },
    async status(ref) {
      const v = vm(ref);
      return {
        vmid: ref.vmid,
        node: "pve",
        state: v.state ?? "stopped",
        ...(v.lock ? { lock: v.lock } : {}),
        template: false,
        uptimeSeconds: 0,
        cpu: 0,
        tags: [],
      };
    },
    async listTasks(_node, options) {
      const count = world.vms.get(options?.vmid ?? 0)?.tasks ?? 0;
      return Array.from({ length: count }, (_, i) => ({
        upid: `UPID:pve:${i}`,
        node: "pve",
        type: "qmsnapshot",
        id: String(options?.vmid),
        user: "root@pam",
        starttime: 0,
        running: true,
      }));
    },
    async snapshotList(ref) {
      return vm(ref).snapshots ?? [];
    },
    async volumeInfo(_node, volid) {
      if (!world.volumes.has(volid)) throw new AgentlabError("PROXMOX_ERROR", `no such volume '${volid}'`);
      return {
        volid,
        path: `/dev/zvol/rpool/data/${volid.split(":")[1]}`,
        sizeBytes: 1 << 30,
        format: "raw",
      };
    },
    async storageContent() {
      return world.content;
    },
  };
  return backend as ProxmoxBackend;
}

interface Fixture {
  store: Store;
  world: World;
  ws: Workspace;
  core: WorkspaceCore;
  /** Run the check; opRunning answers for the op row. */
  check(opRunning?: boolean): ReturnType<typeof checkWorkspace>;
}

function fixture(): Fixture {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-ws-check-"));
  tempDirs.push(dir);
  const dbPath = path.join(dir, "agentlab.db");
  const store = openStore(dbPath, { now: () => new Date(T0) });
  const ws = store.workspaces.insert({
    name: "ws1",
    node: "pve",
    storage: "local-zfs",
    storage_type: "zfspool",
    volid: VOLID,
    size_gb: 10,
    holder_vmid: H,
    state: "ready",
  });
  const world: World = {
    vms: new Map([
      [
        H,
        {
          name: "ws-ws1",
          config: { name: "ws-ws1", scsi0: `${VOLID},size=10G`, protection: 1, tags: "agentlab-ws" },
        },
      ],
    ]),
    storages: [
      {
        storage: "local-zfs",
        type: "zfspool",
        active: true,
        enabled: true,
        shared: false,
        content: ["images"],
      },
    ],
    volumes: new Set([VOLID]),
    content: [],
    unreadable: new Set(),
    down: false,
  };
  const ctx = {
    config: {
      proxmox_node: "pve",
      db_path: dbPath,
      workspace_lease_ttl_ms: 30 * 60_000,
    } as unknown as Config,
    store,
    backend: fakeBackend(world),
    log: pino({ level: "silent" }),
    clock: { now: () => new Date(T0) },
    startedAt: new Date(T0),
  } as unknown as DaemonContext;
  const core = new WorkspaceCore(ctx, new KeyedMutex());
  return {
    store,
    world,
    ws,
    core,
    check: (opRunning = false) => checkWorkspace(core, "ws1", { opRunning: () => opRunning }),
  };
}

function codes(findings: WorkspaceFinding[]): string[] {
  return findings.map((f) => `${f.severity} ${f.code}`);
}

function one(findings: WorkspaceFinding[], code: string): WorkspaceFinding {
  const found = findings.filter((f) => f.code === code);
  assert.equal(found.length, 1, `${code} in ${JSON.stringify(findings, null, 1)}`);
  return found[0]!;
}

function sandbox(
  f: Fixture,
  vmid: number,
  state: "RUNNING" | "STOPPED" | "DESTROYED" = "RUNNING",
  workspaceId: string | null = null,
) {
  f.store.sandboxes.insert({
    vmid,
    name: `sandbox-${vmid}`,
    profile: "yolo-ephemeral",
    state,
    node: "pve",
    vm_created: true,
    workspace_id: workspaceId,
  });
}

describe("workspace check findings", () => {
  test("a consistent workspace has none and is ok", async () => {
    const result = await fixture().check();
    assert.deepEqual(result.findings, []);
    assert.equal(result.ok, true);
    assert.equal(result.workspace.name, "ws1");
  });

  test("holder_missing (error) prints the qm create that re-adopts the volume", async () => {
    const f = fixture();
    f.world.vms.delete(H);
    const result = await f.check();
    assert.equal(result.ok, false);
    assert.deepEqual(codes(result.findings), ["error holder_missing"]);
    assert.equal(
      result.findings[0]!.fix,
      `qm create ${H} --name ws-ws1 --scsi0 ${VOLID} --protection 1 --tags agentlab-ws`,
    );
  });

  test("holder_running (error), holder_disk_mismatch (error), holder_not_protected (warning)", async () => {
    const f = fixture();
    f.world.vms.set(H, {
      name: "ws-ws1",
      state: "running",
      config: { name: "ws-ws1", scsi0: "local-zfs:vm-1005-disk-1" },
    });
    f.world.volumes.add("local-zfs:vm-1005-disk-1");
    const { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), [
      "error holder_running",
      "error holder_disk_mismatch",
      "warning holder_not_protected",
    ]);
    assert.equal(
      one(findings, "holder_running").fix,
      `qm stop ${H} (first make sure no sandbox uses the disk)`,
    );
    assert.equal(
      one(findings, "holder_disk_mismatch").fix,
      `qm set ${H} --scsi0 ${VOLID}, only after checking pvesm list local-zfs --vmid ${H}`,
    );
    assert.match(one(findings, "holder_disk_mismatch").message, /has scsi0 local-zfs:vm-1005-disk-1, but/);
    assert.equal(one(findings, "holder_not_protected").fix, `qm set ${H} --protection 1`);
  });

  test("holder_locked only when no task is running on the holder", async () => {
    const f = fixture();
    const holder = f.world.vms.get(H)!;
    holder.lock = "snapshot";
    holder.tasks = 1;
    assert.deepEqual((await f.check()).findings, [], "a task in flight holds the lock");
    holder.tasks = 0;
    const { findings, ok } = await f.check();
    assert.equal(ok, true, "a warning");
    assert.deepEqual(codes(findings), ["warning holder_locked"]);
    assert.equal(findings[0]!.fix, `qm unlock ${H}`);
  });

  test("volume_missing (error) when the content lookup fails", async () => {
    const f = fixture();
    f.world.volumes.clear();
    const { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), ["error volume_missing"]);
    assert.match(findings[0]!.message, /no such volume 'local-zfs:vm-1005-disk-0'/);
    assert.equal(findings[0]!.fix, `none automatic: pvesm list local-zfs --vmid ${H}; restore from backup`);
  });

  test("attached_vmid_stale (warning): the VM is gone (DB-only detach) or no longer references the volume", async () => {
    const f = fixture();
    sandbox(f, 1012);
    f.store.workspaces.attach(f.ws.id, 1012);
    let { findings } = await f.check();
    assert.deepEqual(codes(findings), ["warning attached_vmid_stale"]);
    assert.match(findings[0]!.message, /attached to sandbox 1012, but that VM no longer exists/);
    assert.equal(findings[0]!.fix, "agentlab workspace detach ws1 (DB-only: the VM is gone)");

    f.world.vms.set(1012, { name: "sandbox-1012", config: { scsi0: "local-zfs:vm-1012-disk-0" } });
    ({ findings } = await f.check());
    assert.deepEqual(codes(findings), ["warning attached_vmid_stale"]);
    assert.match(findings[0]!.message, /but VM 1012 does not reference local-zfs:vm-1005-disk-0/);
    assert.equal(findings[0]!.fix, "agentlab workspace detach ws1");

    f.world.vms.get(1012)!.config.scsi1 = `${VOLID},backup=0,discard=on`;
    assert.deepEqual((await f.check()).findings, [], "attached as recorded");
  });

  test("attached_not_recorded (error) for a reference the database does not know; the fix shuts a running VM down first", async () => {
    const f = fixture();
    sandbox(f, 1012);
    f.world.vms.set(1012, { name: "sandbox-1012", state: "running", config: { scsi1: VOLID } });
    let { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), ["error attached_not_recorded"]);
    assert.equal(
      findings[0]!.fix,
      "qm shutdown 1012 && qm set 1012 --delete scsi1, then to keep using it there: agentlab workspace attach ws1 1012",
    );
    // Not an agentlab sandbox, and stopped: just drop it.
    f.world.vms.set(1100, { name: "other", config: { virtio3: VOLID } });
    f.world.vms.delete(1012);
    ({ findings } = await f.check());
    assert.equal(one(findings, "attached_not_recorded").fix, "qm set 1100 --delete virtio3");
    assert.match(
      one(findings, "volume_wrong_slot").message,
      /VM 1100 \(other\) references workspace ws1's volume as virtio3, not scsi1/,
    );
  });

  test("workspace_multi_attach (error) keeps the recorded VM and drops the others", async () => {
    const f = fixture();
    sandbox(f, 1012);
    sandbox(f, 1013);
    f.store.workspaces.attach(f.ws.id, 1012);
    f.world.vms.set(1012, { name: "sandbox-1012", state: "running", config: { scsi1: VOLID } });
    f.world.vms.set(1013, {
      name: "sandbox-1013",
      state: "running",
      config: { scsi1: VOLID, unused0: VOLID },
    });
    const { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), [
      "error attached_not_recorded",
      "error workspace_multi_attach",
      "warning volume_unused_entry",
    ]);
    const multi = one(findings, "workspace_multi_attach");
    assert.match(multi.message, /referenced by 2 VMs \(1012, 1013\).*keep 1012/);
    assert.equal(multi.fix, "qm shutdown 1013 && qm set 1013 --delete scsi1");
  });

  test("volume_wrong_slot and volume_unused_entry (warnings); never an unused fix for the holder", async () => {
    const f = fixture();
    sandbox(f, 1012);
    f.store.workspaces.attach(f.ws.id, 1012);
    f.world.vms.set(1012, { name: "sandbox-1012", config: { scsi2: VOLID } });
    f.world.vms.set(1020, { name: "x", config: { unused1: `${VOLID}` } });
    f.world.vms.get(H)!.config.unused0 = VOLID;
    const { findings, ok } = await f.check();
    assert.equal(ok, true);
    assert.deepEqual(codes(findings), ["warning volume_wrong_slot", "warning volume_unused_entry"]);
    assert.equal(
      one(findings, "volume_wrong_slot").fix,
      "agentlab workspace detach ws1, then agentlab workspace attach ws1 1012",
    );
    const unused = one(findings, "volume_unused_entry");
    assert.equal(unused.fix, "qm set 1020 --delete unused1");
    assert.match(unused.message, /safe only because VM 1020 does not own the volume/);
    assert.ok(
      !findings.some((x) => x.fix?.includes(`qm set ${H} --delete`)),
      "never a delete for the holder (I3)",
    );
  });

  test("sandbox_record_drift (warning) both ways", async () => {
    const f = fixture();
    sandbox(f, 1012);
    f.store.workspaces.attach(f.ws.id, 1012);
    f.world.vms.set(1012, { name: "sandbox-1012", config: { scsi1: VOLID } });
    f.store.db.prepare("UPDATE sandboxes SET workspace_id = NULL WHERE vmid = 1012").run();
    let { findings } = await f.check();
    assert.deepEqual(codes(findings), ["warning sandbox_record_drift"]);
    assert.match(findings[0]!.message, /records sandbox 1012, but sandbox 1012's record names no workspace/);
    assert.equal(findings[0]!.fix, "agentlab workspace detach ws1");

    sandbox(f, 1013, "STOPPED", f.ws.id);
    ({ findings } = await f.check());
    const drift = findings.filter((x) => x.code === "sandbox_record_drift");
    assert.equal(drift.length, 2);
    assert.match(
      drift[1]!.message,
      /sandbox 1013's record names workspace ws1, but the workspace records sandbox 1012/,
    );
    assert.match(
      drift[1]!.fix ?? "",
      /^no agentlab command repairs this record; clear it by hand: sqlite3 .*agentlab\.db "UPDATE sandboxes SET workspace_id = NULL WHERE vmid = 1013"$/,
    );
  });

  test("snapshot_record_orphan (warning) and snapshot_untracked (info); rows of an op in flight are not orphans", async () => {
    const f = fixture();
    f.store.workspaceSnapshots.insert({ workspace_id: f.ws.id, name: "s1", state: "ready", kind: "user" });
    f.store.workspaceSnapshots.insert({ workspace_id: f.ws.id, name: "s2", state: "ready", kind: "user" });
    f.world.vms.get(H)!.snapshots = [
      { name: "s2", vmstate: false },
      { name: "manual", vmstate: false },
    ];
    let { findings, ok } = await f.check();
    assert.equal(ok, true);
    assert.deepEqual(codes(findings), ["warning snapshot_record_orphan", "info snapshot_untracked"]);
    assert.match(
      one(findings, "snapshot_record_orphan").message,
      /snapshot "s1" \(user\), but holder VM 1005 has no such snapshot/,
    );
    assert.equal(
      one(findings, "snapshot_record_orphan").fix,
      "none needed: the next reconciler pass drops the row (event workspace.snapshot.dropped)",
    );
    assert.match(
      one(findings, "snapshot_untracked").message,
      /snapshot "manual", which agentlab did not take/,
    );

    f.store.workspaceSnapshots.delete(f.ws.id, "s1");
    f.store.workspaceSnapshots.insert({ workspace_id: f.ws.id, name: "s3", state: "creating", kind: "user" });
    f.store.workspaceOps.begin({
      workspace_id: f.ws.id,
      kind: "snapshot",
      step: "begin",
      params: { name: "s3" },
    });
    ({ findings } = await f.check(true));
    assert.deepEqual(codes(findings), ["info snapshot_untracked"], "s3 belongs to the snapshot being taken");
  });

  test("fork_dependency (info) names the fork whose ZFS clone depends on a snapshot", async () => {
    const f = fixture();
    f.store.workspaces.insert({
      name: "fork1",
      node: "pve",
      storage: "local-zfs",
      storage_type: "zfspool",
      volid: "local-zfs:vm-1010-disk-0",
      size_gb: 10,
      holder_vmid: 1010,
      state: "ready",
      forked_from: f.ws.id,
      copy_mode: "cow",
    });
    f.world.content = [
      { volid: VOLID, vmid: H, format: "raw", content: "images", sizeBytes: 1 },
      {
        volid: "local-zfs:vm-1010-disk-0",
        vmid: 1010,
        format: "raw",
        content: "images",
        sizeBytes: 1,
        parent: "vm-1005-disk-0@s1",
      },
      {
        volid: "local-zfs:vm-1011-disk-0",
        vmid: 1011,
        format: "raw",
        content: "images",
        sizeBytes: 1,
        parent: "vm-1005-disk-0@s2",
      },
      {
        volid: "local-zfs:vm-1012-disk-0",
        vmid: 1012,
        format: "raw",
        content: "images",
        sizeBytes: 1,
        parent: "base-9000-disk-0@__base__",
      },
    ];
    const { findings, ok } = await f.check();
    assert.equal(ok, true);
    assert.deepEqual(codes(findings), ["info fork_dependency", "info fork_dependency"]);
    assert.equal(findings[0]!.fix, "destroy that fork first: agentlab workspace destroy fork1");
    assert.match(
      findings[0]!.message,
      /volume local-zfs:vm-1010-disk-0 \(workspace fork1\) is a ZFS clone of vm-1005-disk-0@s1/,
    );
    assert.equal(findings[1]!.fix, "destroy that clone first (check it with qm config 1011)");
  });

  test("lease_owner_gone (warning) only for an unexpired lease of a gone owner", async () => {
    const f = fixture();
    sandbox(f, 1012, "DESTROYED");
    const got = f.store.workspaceLeases.acquire(f.ws.id, "sandbox:1012", 60_000, new Date(T0));
    assert.ok(got.ok);
    let { findings } = await f.check();
    assert.deepEqual(codes(findings), ["warning lease_owner_gone"]);
    assert.match(
      findings[0]!.message,
      /held by sandbox:1012 until 2026-03-01T10:01:00.000Z, but sandbox 1012 is DESTROYED/,
    );
    assert.equal(findings[0]!.fix, "agentlab workspace lease clear ws1");
    f.store.workspaceLeases.clear(f.ws.id);
    assert.ok(f.store.workspaceLeases.acquire(f.ws.id, "sandbox:1012", 60_000, new Date(T0 - 120_000)).ok);
    ({ findings } = await f.check());
    assert.deepEqual(findings, [], "an expired lease is nobody's: no finding");
  });

  test("op_unfinished (warning) only when this daemon does not run the op", async () => {
    const f = fixture();
    f.store.workspaceOps.begin({ workspace_id: f.ws.id, kind: "fsck", step: "check", params: {} });
    assert.deepEqual((await f.check(true)).findings, []);
    const { findings } = await f.check(false);
    assert.deepEqual(codes(findings), ["warning op_unfinished"]);
    assert.match(
      findings[0]!.message,
      /a fsck operation \(step check, since 2026-03-01T10:00:00.000Z\) was left unfinished/,
    );
    assert.equal(findings[0]!.fix, "systemctl restart agentlabd (recovery finishes it)");
  });

  test("storage_inactive (error): not active, disabled, or not there", async () => {
    const f = fixture();
    f.world.storages[0]!.active = false;
    let { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), ["error storage_inactive"]);
    assert.equal(findings[0]!.message, "storage local-zfs is not active on node pve");
    assert.equal(findings[0]!.fix, "pvesm status --storage local-zfs");
    f.world.storages[0]!.enabled = false;
    ({ findings } = await f.check());
    assert.equal(findings[0]!.message, "storage local-zfs is disabled on node pve");
    f.world.storages = [];
    ({ findings } = await f.check());
    assert.equal(findings[0]!.message, "storage local-zfs is not configured on node pve");
  });

  test("a broken workspace is an error finding carrying the recorded fix", async () => {
    const f = fixture();
    f.store.workspaces.update(f.ws.id, {
      state: "broken",
      broken_reason: "restore to s1 was interrupted",
      meta: { broken_fix: "qm unlock 1005" },
    });
    const { findings, ok } = await f.check();
    assert.equal(ok, false);
    assert.deepEqual(codes(findings), ["error workspace_broken"]);
    assert.equal(findings[0]!.fix, "qm unlock 1005");
  });

  test("a VM config the scan cannot read is reported; Proxmox down fails the check instead of guessing", async () => {
    const f = fixture();
    f.world.vms.set(1030, { config: {} });
    f.world.unreadable.add(1030);
    const { findings } = await f.check();
    assert.deepEqual(codes(findings), ["warning reference_scan_incomplete"]);
    assert.match(findings[0]!.message, /VM 1030 \(Permission check failed/);

    f.world.down = true;
    await assert.rejects(
      f.check(),
      (error: unknown) => error instanceof AgentlabError && error.code === "PROXMOX_UNREACHABLE",
    );
  });

  test("an unknown workspace is WORKSPACE_NOT_FOUND", async () => {
    const f = fixture();
    await assert.rejects(
      checkWorkspace(f.core, "nope", { opRunning: () => false }),
      (error: unknown) => error instanceof AgentlabError && error.code === "WORKSPACE_NOT_FOUND",
    );
  });
});

describe("sandbox inventory and holders (design §5.5)", () => {
  const base = {
    rows: [],
    busy: () => false,
    interrupted: new Set<number>(),
    now: new Date(T0),
    orphanGraceMs: 60_000,
  };
  const vm = (vmid: number, tags: string[]): ClusterVm => ({
    vmid,
    node: "pve",
    state: "stopped",
    template: false,
    tags,
  });

  test("a VM tagged agentlab that no sandbox owns is unmanaged, unless it is a holder", () => {
    const plain = assessDrift({ ...base, vms: [vm(2000, ["agentlab"])], holders: new Set() });
    assert.deepEqual(
      plain.assessments.map((a) => a.finding.code),
      ["unmanaged_proxmox_vm"],
      "the control case is reported",
    );
    const byVmid = assessDrift({ ...base, vms: [vm(2000, ["agentlab"])], holders: new Set([2000]) });
    assert.deepEqual(byVmid.assessments, [], "a holder VMID from the database");
    const byTag = assessDrift({ ...base, vms: [vm(2001, ["agentlab", "agentlab-ws"])], holders: new Set() });
    assert.deepEqual(byTag.assessments, [], "a VM tagged agentlab-ws");
  });
});
