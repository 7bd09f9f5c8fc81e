import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, inspect, setControl } from "../pvesim/harness.js";

interface SandboxBody {
  vmid: number;
  name: string;
  profile: string;
  state: string;
  ip?: string;
  lease_expires_at?: string;
  failure_reason?: string;
  tags: string[];
}
interface ErrorBody {
  error: string;
  code: string;
  message: string;
  details: Record<string, unknown>;
  hint: string;
}

/** What the simulator knows about a VM, or undefined when it does not exist. */
function simVm(h: SimHost, vmid: number) {
  return inspect(h.sim.dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    return vm ? { status: vm.runtime.status, config: { ...vm.config } } : undefined;
  });
}

/** Put a row in a state the lease reaper would (the reaper's own tests drive the real path). */
function forceState(h: SimHost, vmid: number, state: string): void {
  const db = new Database(h.host.dbPath);
  db.prepare("UPDATE sandboxes SET state = ? WHERE vmid = ?").run(state, vmid);
  db.close();
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`sandboxes through the CLI and daemon on the simulator (${kind} backend)`, () => {
    let h: SimHost;
    before(async () => {
      h = await startSimHost(kind);
    });
    after(async () => {
      await h.stop();
    });

    test("sandbox new provisions a RUNNING sandbox with an address, a lease, a snippet and the clean snapshot", async () => {
      const result = await h.cli(["sandbox", "new", "--profile", "yolo-ephemeral", "--tag", "CI"]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /^state: +RUNNING$/m);
      assert.match(result.stdout, /^ip: +10\.77\.\d+\.\d+$/m);
      for (const step of ["cloning template 9000", "starting the VM", "waiting for the guest", "clean"]) {
        assert.match(result.stderr, new RegExp(step), `progress shows "${step}"`);
      }
      const show = await h.json<SandboxBody & { proxmox: { found: boolean; status: string; cores: number } }>(
        ["show", "1000"],
      );
      assert.equal(show.body.state, "RUNNING");
      assert.deepEqual(show.body.tags, ["ci"]);
      assert.equal(show.body.proxmox.status, "running");
      assert.equal(show.body.proxmox.cores, 4);
      const lease = Date.parse(show.body.lease_expires_at ?? "") - Date.now();
      assert.ok(
        lease > 170 * 60_000 && lease <= 180 * 60_000,
        `lease from the profile's 180 min TTL, got ${lease}`,
      );

      const vm = await simVm(h, 1000);
      assert.equal(vm?.status, "running");
      assert.match(String(vm?.config.tags), /agentlab/);
      const cicustom = String(vm?.config.cicustom);
      const snippet = /user=local:snippets\/(agentlab-1000-[0-9a-f]{16}\.yaml)/.exec(cicustom)?.[1];
      assert.ok(snippet, cicustom);
      const snippetPath = `${h.sim.dir}/storage/local/snippets/${snippet}`;
      assert.equal(statSync(snippetPath).mode & 0o777, 0o600);
      const snapshots = await inspect(h.sim.dir, (ctx) =>
        Object.keys(ctx.state.vms["1000"]?.snapshots ?? {}),
      );
      assert.deepEqual(snapshots, ["clean"]);
    });

    test("+modifiers name a profile in any order; --json prints the final record only", async () => {
      const result = await h.json<SandboxBody>(["new", "+ephemeral", "+yolo", "--ttl", "90m"]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.body.profile, "yolo-ephemeral");
      assert.equal(result.body.vmid, 1001);
      assert.equal(result.stderr, "", "no progress lines with --json");
    });

    test("list filters by state; DESTROYED rows only with --all", async () => {
      const list = await h.json<{ sandboxes: SandboxBody[] }>(["ls", "--state", "RUNNING"]);
      assert.deepEqual(
        list.body.sandboxes.map((s) => s.vmid),
        [1000, 1001],
      );
    });

    test("bad requests change nothing and say what was wrong", async () => {
      const unknown = await h.json<ErrorBody>(["new", "--profile", "nope"]);
      assert.equal(unknown.code, 1);
      assert.equal(unknown.body.code, "PROFILE_NOT_FOUND");
      assert.match(unknown.body.hint, /yolo-ephemeral/);
      const taken = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral", "--vmid", "9000"]);
      assert.equal(taken.body.code, "CONFLICT");
      assert.equal(taken.body.message, "vmid already exists in proxmox inventory");
      const ttl = await h.cli(["new", "--profile", "yolo-ephemeral", "--ttl", "0"]);
      assert.equal(ttl.code, 2);
      assert.match(ttl.stderr, /ttl must be positive/);
      const list = await h.json<{ sandboxes: SandboxBody[] }>(["ls", "--all"]);
      assert.equal(list.body.sandboxes.length, 2, "no row was created by the refused requests");
    });

    test("lease renew works only while RUNNING, with the spec's message otherwise", async () => {
      const renewed = await h.cli(["sandbox", "lease", "renew", "1001", "--ttl", "2h"]);
      assert.equal(renewed.code, 0, renewed.stderr);
      // Flags may come before the positional too.
      assert.equal((await h.cli(["sandbox", "lease", "renew", "--ttl", "30", "1001"])).code, 0);
      assert.equal((await h.cli(["stop", "1001"])).code, 0);
      const refused = await h.cli(["sandbox", "lease", "renew", "1001", "--ttl", "2h"]);
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        /^error: sandbox lease not renewable: cannot renew lease in STOPPED state\. Valid states: RUNNING$/m,
      );
      const started = await h.json<SandboxBody>(["start", "1001"]);
      assert.equal(started.body.state, "RUNNING");
      assert.match(started.body.ip ?? "", /^10\.77\./, "start re-discovers the address");
    });

    test("destroy removes the VM and the snippet and marks the row DESTROYED", async () => {
      const vm = await simVm(h, 1001);
      const snippet = /snippets\/(\S+\.yaml)/.exec(String(vm?.config.cicustom))?.[1];
      const result = await h.json<SandboxBody>(["rm", "1001"]);
      assert.equal(result.body.state, "DESTROYED");
      // A sandbox that is gone needs no destroy: the renewal refusal points at a new one instead.
      const renew = await h.cli(["sandbox", "lease", "renew", "1001", "--ttl", "2h"]);
      assert.equal(renew.code, 1);
      assert.match(
        renew.stderr,
        /^hint: sandbox 1001 no longer exists; for a new one: agentlab sandbox new --profile yolo-ephemeral --ttl <ttl>$/m,
      );
      assert.equal(await simVm(h, 1001), undefined);
      assert.equal(existsSync(`${h.sim.dir}/storage/local/snippets/${snippet}`), false);
      const again = await h.json<SandboxBody>(["rm", "1001"]);
      assert.equal(again.body.state, "DESTROYED", "destroying twice is fine");
    });

    test("a failure after the clone leaves the sandbox FAILED with the reason, and removes its VM", async () => {
      await setControl(h.sim.dir, {}, ["fail_start=no bootable disk"]);
      try {
        const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
        assert.equal(result.code, 1);
        assert.equal(result.body.code, "PROVISIONING_FAILED");
        const vmid = Number(result.body.details.vmid);
        assert.match(result.body.message, /no bootable disk/);
        const show = await h.json<SandboxBody>(["show", String(vmid)]);
        assert.equal(show.body.state, "FAILED");
        assert.match(show.body.failure_reason ?? "", /no bootable disk/);
        assert.equal(await simVm(h, vmid), undefined, "the VM this sandbox created was rolled back");
      } finally {
        await clearFaults(h.sim.dir);
      }
    });

    for (const [step, fault] of [
      ["growing the root disk", "fail_task=type=resize,message=resize exploded"],
      ["taking the clean snapshot", "fail_task=type=qmsnapshot,message=snapshot exploded"],
    ] as const) {
      test(`a failure while ${step} leaves the sandbox FAILED and removes its VM`, async () => {
        await setControl(h.sim.dir, {}, [fault]);
        try {
          const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
          assert.equal(result.body.code, "PROVISIONING_FAILED", JSON.stringify(result.body));
          const vmid = Number(result.body.details.vmid);
          const show = await h.json<SandboxBody>(["show", String(vmid)]);
          assert.equal(show.body.state, "FAILED");
          assert.ok((show.body.failure_reason ?? "").length > 0);
          assert.equal(await simVm(h, vmid), undefined, "rolled back");
        } finally {
          await clearFaults(h.sim.dir);
        }
      });
    }

    test("a failed clone destroys nothing: the VMID's VM was never this sandbox's", async () => {
      await setControl(h.sim.dir, {}, ["fail_clone=no space left"]);
      try {
        const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
        assert.equal(result.body.code, "PROVISIONING_FAILED");
        const vmid = Number(result.body.details.vmid);
        const logs = await h.cli(["--json", "logs", String(vmid)]);
        assert.equal(logs.code, 0);
        const kinds = logs.stdout
          .trim()
          .split("\n")
          .map((line) => JSON.parse(line).kind as string);
        assert.ok(kinds.includes("sandbox.provision_failed"));
        assert.ok(!kinds.some((k) => k.startsWith("sandbox.rollback")), "no VM removal was attempted");
        const show = await h.json<SandboxBody & { proxmox: { found: boolean } }>(["show", String(vmid)]);
        assert.equal(show.body.state, "FAILED");
        assert.match(show.body.failure_reason ?? "", /no space left/);
      } finally {
        await clearFaults(h.sim.dir);
      }
    });

    test("TIMEOUT sandbox whose VM is gone: destroy fails with the hint, --force and prune clear it", async () => {
      const a = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      const b = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      for (const s of [a.body, b.body]) {
        forceState(h, s.vmid, "TIMEOUT");
        await setControl(h.sim.dir, {}, []);
        await inspect(h.sim.dir, (ctx) => {
          delete ctx.state.vms[String(s.vmid)];
        });
      }
      const refused = await h.cli(["sandbox", "destroy", String(a.body.vmid)]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^error: failed to destroy sandbox: /m);
      assert.match(
        refused.stderr,
        new RegExp(`^hint: use --force: agentlab sandbox destroy --force ${a.body.vmid}`, "m"),
      );
      const forced = await h.json<SandboxBody>(["sandbox", "destroy", "--force", String(a.body.vmid)]);
      assert.equal(forced.body.state, "DESTROYED");
      const pruned = await h.cli(["sandbox", "prune"]);
      assert.equal(pruned.code, 0, pruned.stdout + pruned.stderr);
      // The TIMEOUT one, and the FAILED one from the earlier test whose VM the rollback removed.
      const count = Number(/^pruned (\d+) sandbox/m.exec(pruned.stdout)?.[1]);
      assert.ok(count >= 1, pruned.stdout);
      assert.match(pruned.stdout, new RegExp(`\\b${b.body.vmid}\\b`));
      const live = await h.json<{ sandboxes: SandboxBody[] }>(["ls", "--state", "RUNNING"]);
      assert.ok(
        live.body.sandboxes.some((s) => s.vmid === 1000),
        "a sandbox whose VM exists is never pruned",
      );
    });

    test("a forced destroy that Proxmox refuses says how to find out why, not to use --force", async () => {
      const s = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      await setControl(h.sim.dir, {}, [`fail_task=qmdestroy,vmid=${s.body.vmid}`]);
      try {
        const failed = await h.cli(["sandbox", "destroy", "--force", String(s.body.vmid)]);
        assert.equal(failed.code, 1);
        assert.match(failed.stderr, /^error: failed to destroy sandbox: .*dataset is busy/m);
        assert.match(
          failed.stderr,
          new RegExp(
            `^hint: Proxmox refused to remove VM ${s.body.vmid}: see why with qm status ${s.body.vmid} --verbose`,
            "m",
          ),
        );
        assert.doesNotMatch(failed.stderr, /use --force/);
      } finally {
        await clearFaults(h.sim.dir);
      }
      const again = await h.json<SandboxBody>(["sandbox", "destroy", "--force", String(s.body.vmid)]);
      assert.equal(again.body.state, "DESTROYED", "the advice works once the cause is gone");
    });

    test("prune also clears a RUNNING sandbox whose VM was removed behind the daemon's back", async () => {
      const s = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      await inspect(h.sim.dir, (ctx) => {
        delete ctx.state.vms[String(s.body.vmid)];
      });
      const show = await h.json<{ proxmox: { found: boolean; error: string } }>([
        "show",
        String(s.body.vmid),
      ]);
      assert.equal(show.body.proxmox.found, false);
      assert.match(show.body.proxmox.error, /no longer exists/);
      const pruned = await h.json<{ count: number; vmids: number[] }>(["sandbox", "prune"]);
      assert.deepEqual(pruned.body.vmids, [s.body.vmid]);
    });

    test("prune exits 1 naming each sandbox it could not remove and why; never-created FAILED rows go", async () => {
      await setControl(h.sim.dir, {}, ["fail_clone=no space left"]);
      let failedVmid: number;
      try {
        const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
        failedVmid = Number(result.body.details.vmid);
      } finally {
        await clearFaults(h.sim.dir);
      }
      const stuck = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
      forceState(h, stuck.body.vmid, "TIMEOUT");
      await setControl(h.sim.dir, {}, [`fail_task=qmdestroy,vmid=${stuck.body.vmid}`]);
      try {
        const pruned = await h.cli(["sandbox", "prune"]);
        assert.equal(pruned.code, 1, "cron must see the failure");
        assert.match(pruned.stdout, new RegExp(`^pruned 1 sandbox \\(${failedVmid}\\)$`, "m"));
        assert.match(
          pruned.stdout,
          new RegExp(
            `^could not prune sandbox ${stuck.body.vmid} \\(TIMEOUT\\): failed to destroy sandbox: .*dataset is busy`,
            "m",
          ),
        );
        assert.match(
          pruned.stdout,
          new RegExp(`^  hint: Proxmox refused to remove VM ${stuck.body.vmid}`, "m"),
        );
      } finally {
        await clearFaults(h.sim.dir);
      }
      const again = await h.json<{ vmids: number[]; failed: unknown[] }>(["sandbox", "prune"]);
      assert.equal(again.code, 0);
      assert.deepEqual(again.body, { count: 1, vmids: [stuck.body.vmid], failed: [] });
      const gone = await h.json<SandboxBody>(["show", String(failedVmid)]);
      assert.equal(gone.body.state, "DESTROYED");
    });

    test("Ctrl-C during sandbox new cancels it and the daemon rolls back what it created", async () => {
      await setControl(h.sim.dir, { start_ms: 1500 });
      try {
        const child = spawn(
          process.execPath,
          [AGENTLAB_BIN, "--socket", h.host.socketPath, "new", "--profile", "yolo-ephemeral"],
          {
            stdio: ["ignore", "pipe", "pipe"],
          },
        );
        let stderr = "";
        child.stderr.on("data", (chunk) => {
          stderr += chunk;
          if (stderr.includes("starting the VM") && !stderr.includes("cancelling")) child.kill("SIGINT");
        });
        const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
        assert.equal(code, 1, stderr);
        assert.match(stderr, /cancelling/);
        assert.match(stderr, /^error: sandbox \d+ cancelled; what was created has been removed$/m);
        const vmid = Number(/sandbox (\d+) cancelled/.exec(stderr)?.[1]);
        const show = await h.json<SandboxBody>(["show", String(vmid)]);
        assert.equal(show.body.state, "FAILED");
        assert.match(show.body.failure_reason ?? "", /^cancelled/);
        assert.equal(await simVm(h, vmid), undefined);
      } finally {
        await setControl(h.sim.dir, { start_ms: 100 });
      }
    });
  });
}

describe("a guest that never answers", () => {
  let h: SimHost;
  before(async () => {
    h = await startSimHost("shell", "provisioning_timeout: 3s\n");
    await setControl(h.sim.dir, {}, ["agent_never_ready"]);
  });
  after(async () => {
    await h.stop();
  });

  test("fails the sandbox after provisioning_timeout, with the reason and the template hint, and removes its VM", async () => {
    const result = await h.json<ErrorBody>(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(result.body.code, "PROVISIONING_FAILED");
    assert.match(result.body.message, /did not report an address within provisioning_timeout \(3s\)/);
    const vmid = Number(result.body.details.vmid);
    const show = await h.json<SandboxBody>(["show", String(vmid)]);
    assert.equal(show.body.state, "FAILED");
    assert.equal(await simVm(h, vmid), undefined);
  });
});
