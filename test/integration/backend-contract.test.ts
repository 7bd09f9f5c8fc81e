import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import { apiPath } from "../../src/daemon/proxmox/transport.js";
import { ApiTransport } from "../../src/daemon/proxmox/transport-api.js";
import { ShellTransport } from "../../src/daemon/proxmox/transport-shell.js";
import type { ProxmoxBackend } from "../../src/daemon/proxmox/types.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import {
  clearFaults,
  createSim,
  inspect,
  runTool,
  type Sim,
  type SimApi,
  setControl,
  startApi,
} from "../pvesim/harness.js";

const log = pino({ level: "silent" });

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof AgentlabError, `expected AgentlabError, got ${String(error)}`);
    return error.code;
  }
  assert.fail("expected a failure");
}

interface Harness {
  sim: Sim;
  api?: SimApi;
  backend: ProxmoxBackend;
}

const makers: Record<"shell" | "api", () => Promise<Harness>> = {
  shell: async () => {
    const sim = createSim();
    const transport = new ShellTransport({ timeoutMs: 30_000, env: sim.env });
    return { sim, backend: new PveBackend({ transport, log, timeoutMs: 30_000, sleep: fastSleep }) };
  },
  api: async () => {
    const sim = createSim();
    const api = await startApi(sim);
    const transport = new ApiTransport({
      url: `https://127.0.0.1:${api.port}`,
      token: api.token,
      timeoutMs: 30_000,
      tlsCaPath: api.caPath,
    });
    return {
      sim,
      api,
      backend: new PveBackend({ transport, log, timeoutMs: 30_000, tokenId: api.tokenId, sleep: fastSleep }),
    };
  },
};

/** Task polling and lock backoff at test speed: the simulator's tasks take tens of milliseconds. */
function fastSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, Math.min(ms, 50));
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}

for (const kind of ["shell", "api"] as const) {
  describe(`Proxmox backend contract: ${kind}`, () => {
    let h: Harness;
    const node = "pve";
    const tpl = { vmid: 9000, node };
    before(async () => {
      h = await makers[kind]();
    });
    after(async () => {
      await h.api?.stop();
      h.sim.cleanup();
    });

    test("reports the version, the nodes and the cluster's VMs", async () => {
      assert.match((await h.backend.version()).version, /^\d+\.\d+/);
      assert.deepEqual(
        (await h.backend.listNodes()).map((n) => [n.node, n.online]),
        [["pve", true]],
      );
      const vms = await h.backend.listVms();
      const template = vms.find((vm) => vm.vmid === 9000);
      assert.equal(template?.template, true);
      assert.equal(template?.node, "pve");
    });

    test("VMID checks are cluster-wide", async () => {
      assert.equal(await h.backend.isVmidFree(9000), false);
      assert.equal(await h.backend.isVmidFree(4242), true);
    });

    test("linked clone, configure, start, guest address, snapshot, stop, destroy", async () => {
      const vm = { vmid: 1101, node };
      await h.backend.clone(tpl, vm.vmid, { name: "contract", full: false });
      assert.equal((await h.backend.status(vm)).state, "stopped");
      await h.backend.setConfig(vm, { cores: 2, memory: 1024, tags: "agentlab;contract" });
      const config = await h.backend.getConfig(vm);
      assert.equal(config.cores, 2);
      assert.equal(String(config.memory), "1024");
      await h.backend.start(vm);
      assert.equal((await h.backend.status(vm)).state, "running");
      let ipv4: string[] = [];
      for (let i = 0; i < 100 && ipv4.length === 0; i++) {
        try {
          ipv4 = (await h.backend.guestInterfaces(vm))
            .filter((iface) => iface.name !== "lo")
            .flatMap((iface) => iface.ipv4);
        } catch (error) {
          assert.equal((error as AgentlabError).code, "GUEST_AGENT_NOT_READY");
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
      }
      assert.match(ipv4[0] ?? "", /^10\.77\.\d+\.\d+$/);
      await h.backend.snapshotCreate(vm, "clean", "contract");
      assert.deepEqual(
        (await h.backend.snapshotList(vm)).map((s) => s.name),
        ["clean"],
      );
      await h.backend.stop(vm);
      await h.backend.snapshotRollback(vm, "clean");
      await h.backend.snapshotCreate(vm, "half");
      // force=1 reaches Proxmox (recovery removes half-made workspace snapshots this way).
      await h.backend.snapshotDelete(vm, "half", undefined, { force: true });
      await h.backend.snapshotDelete(vm, "clean");
      const deletes = await inspect(h.sim.dir, (ctx) =>
        ctx.state.tasks
          .filter((t) => t.type === "qmdelsnapshot" && t.id === String(vm.vmid))
          .map((t) => `${String(t.op.params["snapname"])}:${String(t.op.params["force"])}`),
      );
      assert.deepEqual(deletes, ["half:true", "clean:false"]);
      assert.deepEqual(await h.backend.snapshotList(vm), []);
      await h.backend.destroy(vm, { purge: true });
      assert.equal(await codeOf(h.backend.status(vm)), "PROXMOX_VM_NOT_FOUND");
    });

    test("a missing VM is PROXMOX_VM_NOT_FOUND for reads and writes", async () => {
      const ghost = { vmid: 4343, node };
      assert.equal(await codeOf(h.backend.status(ghost)), "PROXMOX_VM_NOT_FOUND");
      assert.equal(await codeOf(h.backend.getConfig(ghost)), "PROXMOX_VM_NOT_FOUND");
      assert.equal(await codeOf(h.backend.start(ghost)), "PROXMOX_VM_NOT_FOUND");
    });

    test("Proxmox's own rules come back as typed errors", async () => {
      // Templates cannot be started; a running VM cannot be destroyed.
      assert.equal(await codeOf(h.backend.start(tpl)), "PROXMOX_TASK_FAILED");
      const vm = { vmid: 1102, node };
      await h.backend.clone(tpl, vm.vmid, { name: "rules", full: false });
      await h.backend.start(vm);
      assert.match(await codeOf(h.backend.start(vm)), /PROXMOX_(TASK_FAILED|ERROR)/);
      assert.match(await codeOf(h.backend.destroy(vm, { purge: true })), /PROXMOX_(TASK_FAILED|ERROR)/);
      assert.equal((await h.backend.status(vm)).state, "running", "a refused destroy leaves the VM alone");
      // A linked clone needs a template source.
      assert.equal(
        await codeOf(h.backend.clone(vm, 1103, { name: "no", full: false })),
        "PROXMOX_TASK_FAILED",
      );
      await h.backend.stop(vm);
      await h.backend.destroy(vm, { purge: true });
    });

    test("a failed task surfaces its exit status", async () => {
      await setControl(h.sim.dir, {}, ["fail_clone=storage exploded"]);
      try {
        const failure = await h.backend.clone(tpl, 1104, { name: "fails", full: false }).then(
          () => assert.fail("clone should fail"),
          (error: AgentlabError) => error,
        );
        assert.equal(failure.code, "PROXMOX_TASK_FAILED");
        assert.match(failure.message, /storage exploded/);
        assert.match(String(failure.details.upid), /^UPID:pve:/);
      } finally {
        await clearFaults(h.sim.dir);
      }
    });

    test("lock contention is retried until the lock clears; other errors are not", async () => {
      const vm = { vmid: 1105, node };
      await h.backend.clone(tpl, vm.vmid, { name: "locked", full: false });
      await setControl(h.sim.dir, {}, ["lock=vmid=1105,times=2"]);
      try {
        const before = h.backend.calls.count;
        await h.backend.start(vm);
        assert.equal((await h.backend.status(vm)).state, "running");
        assert.ok(h.backend.calls.count - before >= 3, "the start was retried after the lock errors");
      } finally {
        await clearFaults(h.sim.dir);
      }
      await h.backend.stop(vm);
      await h.backend.destroy(vm, { purge: true });
    });

    test("createVm makes a protected holder with a new disk; a taken VMID is refused", async () => {
      const holder = { vmid: 1301, node };
      await h.backend.createVm(node, holder.vmid, {
        name: "ws-contract",
        scsihw: "virtio-scsi-pci",
        scsi0: "local-lvm:1",
        onboot: 0,
        protection: true,
        tags: "agentlab-ws",
        description: "agentlab workspace holder - do not destroy",
      });
      const config = await h.backend.getConfig(holder);
      assert.equal(config.scsi0, "local-lvm:vm-1301-disk-0,size=1G");
      assert.equal(config.protection, 1);
      assert.equal(config.tags, "agentlab-ws");
      const taken = await h.backend.createVm(node, holder.vmid, { scsi0: "local-lvm:1" }).then(
        () => assert.fail("a taken VMID must be refused"),
        (error: AgentlabError) => error,
      );
      assert.equal(taken.code, "PROXMOX_ERROR");
      assert.match(taken.message, /unable to create VM 1301 - VM 1301 already exists on node 'pve'/);
      const removeDisk = await h.backend.setConfig(holder, {}, ["scsi0"]).then(
        () => assert.fail("a protected VM keeps its disk"),
        (error: AgentlabError) => error,
      );
      assert.match(removeDisk.message, /can't remove drive 'scsi0' - protection mode enabled/);
      await h.backend.setConfigAsync(holder, { description: "changed through POST" });
      assert.equal((await h.backend.getConfig(holder)).description, "changed through POST");
    });

    test("storageConfig and storageContent give what the host tools need", async () => {
      const thin = await h.backend.storageConfig("local-lvm");
      assert.deepEqual([thin.type, thin.vgname, thin.thinpool], ["lvmthin", "pve", "data"]);
      const zfs = await h.backend.storageConfig("local-zfs");
      assert.deepEqual([zfs.type, zfs.pool], ["zfspool", "rpool/data"]);
      const dir = await h.backend.storageConfig("local");
      assert.equal(dir.path, `${h.sim.dir}/storage/local`);
      assert.ok(dir.content.includes("images"));
      assert.equal(await codeOf(h.backend.storageConfig("nope")), "PROXMOX_ERROR");
      const content = await h.backend.storageContent(node, "local-lvm", { vmid: 1301 });
      assert.deepEqual(
        content.map((c) => [c.volid, c.vmid, c.format, c.sizeBytes]),
        [["local-lvm:vm-1301-disk-0", 1301, "raw", 1024 ** 3]],
      );
    });

    test("snapshot config, clone from a snapshot, and the zfs copy-on-write fork's parent", async () => {
      const holder = { vmid: 1301, node };
      await h.backend.snapshotCreate(holder, "s1");
      const snap = await h.backend.getConfig(holder, { snapshot: "s1" });
      assert.equal(snap.scsi0, "local-lvm:vm-1301-disk-0,size=1G");
      await h.backend.clone(holder, 1302, { name: "ws-fork", full: false, snapname: "s1" });
      assert.equal(
        (await h.backend.getConfig({ vmid: 1302, node })).scsi0,
        "local-lvm:vm-1302-disk-0,size=1G",
      );

      const zfsHolder = { vmid: 1303, node };
      await h.backend.createVm(node, zfsHolder.vmid, { name: "ws-zfs", scsi0: "local-zfs:1", protection: 1 });
      await h.backend.snapshotCreate(zfsHolder, "s1");
      const refused = await h.backend
        .clone(zfsHolder, 1304, { name: "ws-no", full: true, snapname: "s1" })
        .then(
          () => assert.fail("zfs has no full copy of a snapshot"),
          (error: AgentlabError) => error,
        );
      assert.equal(refused.code, "PROXMOX_TASK_FAILED");
      assert.match(
        refused.message,
        /Full clone feature is not supported for a snapshot of 'local-zfs:vm-1303-disk-0' \(scsi0\)/,
      );
      // The host-tool path: a holder without a disk, `zfs clone` on the node, then the disk attached.
      await h.backend.createVm(node, 1304, { name: "ws-zfs-fork", onboot: 0, tags: "agentlab-ws" });
      const cloned = await runTool(h.sim, "zfs", [
        "clone",
        "rpool/data/vm-1303-disk-0@s1",
        "rpool/data/vm-1304-disk-0",
      ]);
      assert.equal(cloned.code, 0, cloned.stderr);
      await h.backend.setConfig({ vmid: 1304, node }, { scsi0: "local-zfs:vm-1304-disk-0", protection: 1 });
      const fork = await h.backend.storageContent(node, "local-zfs", { vmid: 1304 });
      assert.deepEqual(
        fork.map((c) => [c.volid, c.parent]),
        [["local-zfs:vm-1304-disk-0", "vm-1303-disk-0@s1"]],
      );
      // Destroying the source holder only warns (the task ends WARNINGS: 1): its volume stays.
      await h.backend.setConfig(zfsHolder, {}, ["protection"]);
      await h.backend.destroy(zfsHolder, { purge: true });
      assert.equal(await codeOf(h.backend.status(zfsHolder)), "PROXMOX_VM_NOT_FOUND");
      const left = await h.backend.storageContent(node, "local-zfs", { vmid: 1303 });
      assert.deepEqual(
        left.map((c) => c.volid),
        ["local-zfs:vm-1303-disk-0"],
      );
    });

    test("pending changes of a running VM and the node's task list", async () => {
      const vm = { vmid: 1305, node };
      await h.backend.clone(tpl, vm.vmid, { name: "pending", full: false });
      await h.backend.start(vm);
      await h.backend.setConfigAsync(vm, { cores: 4 }, ["agent"]);
      const pending = await h.backend.getPending(vm);
      const byKey = Object.fromEntries(pending.map((p) => [p.key, p]));
      assert.equal(byKey.cores?.value, 2);
      assert.equal(byKey.cores?.pending, 4);
      assert.equal(byKey.agent?.delete, 1);
      assert.equal((await h.backend.getConfig(vm, { current: true })).cores, 2);

      // Finished tasks stay in the active list until archived, with their status (Tasks.pm:228-236);
      // a running one has status "RUNNING" there (Tasks.pm:233).
      await setControl(h.sim.dir, { task_ms: 6000, task_archive_ms: 3_600_000 });
      try {
        const snapshot = h.backend.snapshotCreate(vm, "busy");
        let active: Awaited<ReturnType<typeof h.backend.listTasks>> = [];
        const deadline = Date.now() + 60_000;
        while (!active.some((t) => t.type === "qmsnapshot") && Date.now() < deadline) {
          active = await h.backend.listTasks(node, { vmid: vm.vmid, source: "active" });
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
        assert.deepEqual(
          active.filter((t) => t.running).map((t) => [t.type, t.id, t.running, t.status]),
          [["qmsnapshot", "1305", true, undefined]],
        );
        const start = active.find((t) => t.type === "qmstart");
        assert.deepEqual([start?.running, start?.status, typeof start?.endtime], [false, "OK", "number"]);
        await snapshot;
      } finally {
        await setControl(h.sim.dir, { task_ms: 50, task_archive_ms: 0 });
      }
      const done = await h.backend.listTasks(node, { vmid: vm.vmid, typefilter: "qmsnapshot" });
      assert.equal(done[0]?.status, "OK");
      assert.equal(done[0]?.running, false);
      assert.match(done[0]?.upid ?? "", /^UPID:pve:.*:qmsnapshot:1305:/);
      assert.equal(typeof done[0]?.endtime, "number");
      await h.backend.stop(vm);
      await h.backend.destroy(vm, { purge: true });
    });

    test("the cluster list is pvestatd's lagging view; status() is live", async () => {
      const vm = { vmid: 1308, node };
      const listed = async () => (await h.backend.listVms()).find((v) => v.vmid === vm.vmid);
      // API2Tools.pm:84-116: until pvestatd reports a VM it is "unknown", without name or template.
      await setControl(h.sim.dir, { resources_lag_ms: 3_600_000 });
      try {
        await h.backend.clone(tpl, vm.vmid, { name: "lagging", full: false });
        const fresh = await listed();
        assert.deepEqual([fresh?.state, fresh?.name, fresh?.template], ["unknown", undefined, false]);
        assert.equal((await h.backend.status(vm)).state, "stopped");
        await setControl(h.sim.dir, { resources_lag_ms: 0 });
        const reported = await listed();
        assert.deepEqual([reported?.state, reported?.name], ["stopped", "lagging"]);

        await setControl(h.sim.dir, { resources_lag_ms: 3_600_000 });
        await h.backend.start(vm);
        assert.equal((await h.backend.status(vm)).state, "running");
        assert.equal((await listed())?.state, "stopped", "the list still shows pvestatd's last report");
        await setControl(h.sim.dir, { resources_lag_ms: 0 });
        assert.equal((await listed())?.state, "running");

        // pvestatd.pm:341: `status` is qmpstatus || status, so a suspended VM is "paused" there.
        await h.backend.suspend(vm);
        assert.equal((await listed())?.state, "paused");
        assert.equal((await h.backend.status(vm)).state, "paused");
        await h.backend.resume(vm);
        await h.backend.stop(vm);
        await h.backend.destroy(vm, { purge: true });
      } finally {
        await setControl(h.sim.dir, { resources_lag_ms: 0 });
      }
    });

    test("storage: list, allocate a legal volume, find its real file, free it", async () => {
      const storages = await h.backend.listStorages(node);
      assert.deepEqual(storages.map((s) => s.type).sort(), ["dir", "lvmthin", "zfspool"]);
      const volid = await h.backend.volumeAlloc(node, "local-lvm", 1106, "vm-1106-disk-0", "1G");
      assert.equal(volid, "local-lvm:vm-1106-disk-0");
      const info = await h.backend.volumeInfo(node, volid);
      assert.equal(info.sizeBytes, 1024 ** 3);
      assert.equal(statSync(info.path).size, 1024 ** 3);
      const illegal = await h.backend.volumeAlloc(node, "local-lvm", 1106, "workspace-1", "1G").then(
        () => assert.fail("an illegal volume name must be refused"),
        (error: AgentlabError) => error,
      );
      assert.match(illegal.message, /illegal name 'workspace-1' - should be 'vm-1106-\*'/);
      await h.backend.volumeFree(node, volid);
      assert.match(await codeOf(h.backend.volumeInfo(node, volid)), /PROXMOX_(ERROR|INVALID)/);
    });

    test("volids with ':' and '/' reach Proxmox whole: look up and free a dir-storage volume", async () => {
      // pvesh must get them raw (it never unescapes), HTTPS escaped; a `%3A` on pvesh is refused.
      const volid = await h.backend.volumeAlloc(node, "local", 1107, "vm-1107-disk-0.qcow2", "1G", "qcow2");
      assert.equal(volid, "local:1107/vm-1107-disk-0.qcow2");
      const info = await h.backend.volumeInfo(node, volid);
      assert.equal(info.format, "qcow2");
      assert.equal(info.sizeBytes, 1024 ** 3);
      await h.backend.volumeFree(node, volid);
      assert.match(await codeOf(h.backend.volumeInfo(node, volid)), /PROXMOX_(ERROR|INVALID)/);
    });
  });
}

/** A port that was just free: nothing listens there. */
async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

describe("API backend failures explained", () => {
  let sim: Sim;
  let api: SimApi;
  before(async () => {
    sim = createSim();
    api = await startApi(sim);
  });
  after(async () => {
    await api.stop();
    sim.cleanup();
  });
  const backendWith = (options: Partial<ConstructorParameters<typeof ApiTransport>[0]>) => {
    const transport = new ApiTransport({
      url: `https://127.0.0.1:${api.port}`,
      token: api.token,
      timeoutMs: 5000,
      tlsCaPath: api.caPath,
      ...options,
    });
    return new PveBackend({ transport, log, timeoutMs: 5000, tokenId: transport.tokenId, sleep: fastSleep });
  };

  test("TLS is verified by default: without the CA the self-signed chain is refused, with the fix", async () => {
    const error = await backendWith({ tlsCaPath: undefined })
      .version()
      .then(
        () => assert.fail("expected TLS failure"),
        (e: AgentlabError) => e,
      );
    assert.equal(error.code, "PROXMOX_TLS");
    assert.match(error.hint, /proxmox_tls_ca_path/);
    assert.ok((error.details.chain as string[]).length >= 2, "the whole chain is kept");
  });

  test("tls insecure skips verification", async () => {
    const version = await backendWith({ tlsCaPath: undefined, tlsInsecure: true }).version();
    assert.match(version.version, /^\d/);
  });

  test("a wrong token is PROXMOX_AUTH", async () => {
    const error = await backendWith({ token: "root@pam!agentlab=00000000-0000-4000-8000-000000000000" })
      .version()
      .then(
        () => assert.fail("expected auth failure"),
        (e: AgentlabError) => e,
      );
    assert.equal(error.code, "PROXMOX_AUTH");
  });

  test("a privilege-separated token without its own ACL gets the two pveum commands", async () => {
    const { execFileSync } = await import("node:child_process");
    const { PVESIM_CLI } = await import("../pvesim/harness.js");
    const out = execFileSync(
      process.execPath,
      [PVESIM_CLI, "control", sim.dir, "--add-token", "sandbox@pve!orch", "--privsep", "1"],
      {
        encoding: "utf8",
      },
    );
    const token = /sandbox@pve!orch=[0-9a-f-]{36}/.exec(out)?.[0];
    assert.ok(token, out);
    const backend = backendWith({ token });
    const error = await backend.clone({ vmid: 9000, node: "pve" }, 1201, { name: "x", full: false }).then(
      () => assert.fail("expected permission failure"),
      (e: AgentlabError) => e,
    );
    assert.equal(error.code, "PROXMOX_PERMISSION");
    assert.match(error.message, /Permission check failed/);
    assert.match(error.hint, /--users sandbox@pve/);
    assert.match(error.hint, /--tokens 'sandbox@pve!orch'/);
  });

  test("an API that refuses connections is PROXMOX_UNREACHABLE with the fix", async () => {
    const port = await freePort();
    const error = await backendWith({ url: `https://127.0.0.1:${port}` })
      .version()
      .then(
        () => assert.fail("expected connection failure"),
        (e: AgentlabError) => e,
      );
    assert.equal(error.code, "PROXMOX_UNREACHABLE");
    assert.match(error.hint, /pveproxy/);
  });

  test("proxmox-api's blind re-send after a network failure is kept for reads, refused for changes", async () => {
    // proxmox-api sends any request a second time after a network error or its own timeout
    // (ProxmoxEngine doRequest); a clone or destroy that may have reached Proxmox must not run twice.
    const port = await freePort();
    const transport = new ApiTransport({
      url: `https://127.0.0.1:${port}`,
      token: api.token,
      timeoutMs: 5000,
    });
    try {
      await assert.rejects(transport.request("GET", apiPath`/version`));
      assert.equal(transport.calls.count, 2, "a GET is tried twice");
      await assert.rejects(
        transport.request("POST", apiPath`/nodes/${"pve"}/qemu/${9000}/clone`, { newid: 1200 }),
      );
      assert.equal(transport.calls.count, 3, "a POST is sent once");
    } finally {
      await transport.close();
    }
  });
});
