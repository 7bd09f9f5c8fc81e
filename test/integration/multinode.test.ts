/**
 * A two-node cluster (pve, pve2; template 8999 on pve, 9000 — the shipped profiles' template — on pve2).
 * Sandboxes and workspaces live on agentlabd's own node only: a template elsewhere is refused before
 * anything is reserved, workspaces go to the daemon's node, and a task that fails on another node is a
 * failure even when pvesh proxied it over SSH.
 */
import assert from "node:assert/strict";
import { hostname } from "node:os";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { call } from "../../src/cli/client.js";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import { ApiTransport } from "../../src/daemon/proxmox/transport-api.js";
import { ShellTransport } from "../../src/daemon/proxmox/transport-shell.js";
import type { ProxmoxBackend } from "../../src/daemon/proxmox/types.js";
import { nodeNameOfHost } from "../../src/daemon/services/placement.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import { daemonChecks } from "../../src/protocol/index.js";
import { freePort } from "../helpers/ports.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import {
  clearFaults,
  createSim,
  inspect,
  type Sim,
  type SimApi,
  setControl,
  startApi,
} from "../pvesim/harness.js";

const TWO_NODES = { nodes: ["pve", "pve2"], template: 8999 };
const FAST = { clone_ms: 20, start_ms: 20, stop_ms: 20, agent_ready_ms: 50, task_ms: 10 };

interface ErrorBody {
  code: string;
  message: string;
  hint?: string;
}
interface ValidateBody {
  ok: boolean;
  errors: Array<{ code: string; field?: string; message: string }>;
  plan: { vmid?: number; node?: string };
}

/** VMIDs and their nodes, as the simulator holds them. */
function simVms(h: SimHost): Promise<Array<[number, string]>> {
  return inspect(h.sim.dir, (ctx) =>
    Object.values(ctx.state.vms)
      .map((vm): [number, string] => [vm.vmid, vm.node])
      .sort((a, b) => a[0] - b[0]),
  );
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`multi-node: agentlabd on pve, the profiles' template on pve2 (${kind} backend)`, () => {
    let h: SimHost;
    before(async () => {
      const port = await freePort();
      h = await startSimHost(
        kind,
        `proxmox_node: pve\nbootstrap_listen: 127.0.0.1:${port}\nagent_subnet: 0.0.0.0/1\n`,
        { ...TWO_NODES, knobs: FAST },
        { daemonEnv: { PVESIM_NODE: "pve" } },
      );
    });
    after(async () => {
      await h?.stop();
    });

    test("sandbox new is refused up front, naming both nodes and the fix; nothing is created or reserved", async () => {
      const vmsBefore = await simVms(h);
      const refused = await h.json<ErrorBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.equal(refused.body.code, "PROVISIONING_FAILED");
      assert.equal(
        refused.body.message,
        `template 9000 of profile "yolo-ephemeral" is on node pve2, but agentlabd runs on node pve: a sandbox must run on pve, where its cloud-init snippet (${h.sim.dir}/storage/local/snippets), its firewall bindings and the guest listener are`,
      );
      assert.equal(
        refused.body.hint,
        `build a template on node pve and set template_vmid of profile "yolo-ephemeral" to it (agentlab runs its sandboxes on its own node only); if agentlabd really runs on pve2, set proxmox_node: pve2 in ${h.host.configPath} and restart it`,
      );
      const listed = await h.json<{ sandboxes: unknown[] }>(["ls", "--all"]);
      assert.deepEqual(listed.body.sandboxes, [], "no sandbox row, in any state");
      assert.deepEqual(await simVms(h), vmsBefore, "no VM was cloned");
      assert.deepEqual(vmsBefore, [
        [8999, "pve"],
        [9000, "pve2"],
      ]);
    });

    test("sandbox validate reports it as an error, and the planned VMID is still the first one", async () => {
      const result = await h.json<ValidateBody>(["sandbox", "validate", "--profile", "yolo-ephemeral"]);
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.body.ok, false);
      const issue = result.body.errors.find((e) => e.code === "template_on_other_node");
      assert.ok(issue, JSON.stringify(result.body.errors));
      assert.equal(issue.field, "profile");
      assert.match(
        issue.message,
        /^template 9000 of profile "yolo-ephemeral" is on node pve2, but agentlabd runs on node pve:/,
      );
      assert.equal(result.body.plan.node, "pve2");
      assert.equal(result.body.plan.vmid, 1000, "the refused sandbox new consumed no VMID");
    });

    test("init/status's template check names the template on the other node", async () => {
      const report = await call({ socketPath: h.host.socketPath, timeoutMs: 60_000 }, daemonChecks, {});
      const backend = report.checks.find((c) => c.name === "backend");
      assert.match(backend?.detail ?? "", /, node pve$/);
      const templates = report.checks.find((c) => c.name === "templates");
      assert.equal(templates?.status, "fail");
      assert.equal(
        templates?.detail,
        "template VM 9000 (profiles interactive-dev, yolo-ephemeral, yolo-workspace) is on node pve2, not on agentlabd's node pve",
      );
      assert.equal(
        templates?.fix,
        "build a template on node pve and set template_vmid of profiles interactive-dev, yolo-ephemeral, yolo-workspace to it",
      );
    });

    test("job run is refused at once: no job is queued", async () => {
      const refused = await h.json<ErrorBody>([
        "job",
        "run",
        "--repo",
        "https://example.invalid/repo.git",
        "--task",
        "x",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.equal(refused.body.code, "PROVISIONING_FAILED");
      assert.match(
        refused.body.message,
        /^template 9000 of profile "yolo-ephemeral" is on node pve2, but agentlabd runs on node pve:/,
      );
      const jobs = await h.json<{ jobs: unknown[] }>(["job", "list"]);
      assert.deepEqual(jobs.body.jobs, []);
      assert.deepEqual(
        await h.json<{ sandboxes: unknown[] }>(["ls", "--all"]).then((r) => r.body.sandboxes),
        [],
      );
    });
  });

  // No proxmox_node: the daemon's node is this host's node name, as Proxmox derives it. The other node
  // sorts before it, so "the alphabetically first node" would be the wrong one.
  describe(`multi-node: agentlabd on this host's node, which is not the alphabetically first (${kind} backend)`, () => {
    const here = nodeNameOfHost(hostname());
    let h: SimHost;
    before(async () => {
      h = await startSimHost(
        kind,
        "",
        { nodes: ["0", here], template: 8999, knobs: FAST },
        { daemonEnv: { PVESIM_NODE: here } },
      );
    });
    after(async () => {
      await h?.stop();
    });

    test("workspace create puts the workspace on the daemon's node, not on the first node", async () => {
      const created = await h.json<{ node: string; holder_vmid: number }>([
        "workspace",
        "create",
        "--name",
        "w1",
        "--size",
        "1G",
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(created.body.node, here);
      const holder = (await simVms(h)).find(([vmid]) => vmid === created.body.holder_vmid);
      assert.deepEqual(holder, [created.body.holder_vmid, here]);
    });

    test("a sandbox from the template on the daemon's own node is made there", async () => {
      const made = await h.json<{ vmid: number; state: string }>([
        "sandbox",
        "new",
        "--profile",
        "yolo-ephemeral",
      ]);
      assert.equal(made.code, 0, made.stderr);
      assert.equal(made.body.state, "RUNNING");
      assert.deepEqual(
        (await simVms(h)).find(([vmid]) => vmid === made.body.vmid),
        [made.body.vmid, here],
      );
    });
  });
}

describe("multi-node: a worker on another node, through each backend", () => {
  const log = pino({ level: "silent" });
  const fastSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.min(ms, 50)));
  const makers: Record<BackendKind, (sim: Sim) => Promise<{ backend: ProxmoxBackend; api?: SimApi }>> = {
    // pvesh runs on pve, so every call for pve2 goes through pvesh's SSH proxy.
    shell: async (sim) => ({
      backend: new PveBackend({
        transport: new ShellTransport({ timeoutMs: 30_000, env: { ...sim.env, PVESIM_NODE: "pve" } }),
        log,
        timeoutMs: 30_000,
        sleep: fastSleep,
      }),
    }),
    api: async (sim) => {
      const api = await startApi(sim);
      const transport = new ApiTransport({
        url: `https://127.0.0.1:${api.port}`,
        token: api.token,
        timeoutMs: 30_000,
        tlsCaPath: api.caPath,
      });
      return {
        api,
        backend: new PveBackend({
          transport,
          log,
          timeoutMs: 30_000,
          tokenId: api.tokenId,
          sleep: fastSleep,
        }),
      };
    },
  };

  for (const kind of ["shell", "api"] as BackendKind[]) {
    describe(`${kind} backend`, () => {
      let sim: Sim;
      let api: SimApi | undefined;
      let backend: ProxmoxBackend;
      const tpl = { vmid: 9000, node: "pve2" };
      before(async () => {
        sim = createSim({ ...TWO_NODES, knobs: FAST });
        ({ backend, api } = await makers[kind](sim));
      });
      after(async () => {
        await api?.stop();
        sim?.cleanup();
      });

      test("a clone on pve2 whose task fails is a failure, not a success", async () => {
        await setControl(sim.dir, {}, ["fail_clone=clone failed: zfs error: out of space"]);
        try {
          await assert.rejects(backend.clone(tpl, 102, { name: "x", full: false }), (error: unknown) => {
            assert.ok(error instanceof AgentlabError, String(error));
            assert.equal(error.code, "PROXMOX_TASK_FAILED");
            assert.match(error.message, /clone failed: zfs error: out of space/);
            return true;
          });
        } finally {
          await clearFaults(sim.dir);
        }
      });

      test("a clone, a config change and a start on pve2 succeed and are waited for", async () => {
        await backend.clone(tpl, 101, { name: "ok", full: false });
        const vm = { vmid: 101, node: "pve2" };
        await backend.setConfig(vm, { cores: 2 });
        assert.equal((await backend.getConfig(vm)).cores, 2);
        await backend.start(vm);
        assert.equal(
          await inspect(sim.dir, (ctx) => ctx.state.vms["101"]?.runtime.status),
          "running",
          "start returned after its task ended",
        );
      });
    });
  }
});
