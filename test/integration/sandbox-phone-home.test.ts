import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { hostKeyFingerprint } from "../../src/protocol/host-keys.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { clearFaults, setControl } from "../pvesim/harness.js";

/**
 * `sandbox new` through the real daemon and CLI, with the guest listener up: the simulated guest phones
 * home when it has booted, and that alone makes the sandbox READY (the guest agent never answers); when
 * the agent answers first, READY still waits for the report (cloud-init's end), up to phone_home_grace;
 * with phone-home off, the guest agent's address is used after that grace. The event says which path
 * found the address.
 */

interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  ssh_host_keys?: string[];
}
interface EventLine {
  kind: string;
  payload?: { via?: string; ip?: string };
}

async function readyEvent(h: SimHost, vmid: number): Promise<EventLine | undefined> {
  const logs = await h.cli(["--json", "logs", String(vmid), "--tail", "100"]);
  assert.equal(logs.code, 0, logs.stderr);
  return logs.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as EventLine)
    .find((event) => event.kind === "sandbox.slo.ready");
}

for (const kind of ["shell", "api"] as BackendKind[]) {
  describe(`readiness by phone-home in sandbox new (${kind} backend)`, () => {
    let h: SimHost;

    before(async () => {
      // The simulator's guests report from this host: loopback must count as the agent subnet.
      h = await startSimHost(
        kind,
        "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\nphone_home_grace: 3s\n",
      );
      await setControl(h.sim.dir, {
        clone_ms: 30,
        start_ms: 20,
        stop_ms: 20,
        agent_ready_ms: 100,
        task_ms: 20,
      });
    });
    after(async () => {
      await h.stop();
    });

    test("status shows the guest listener serving", async () => {
      const status = await h.cli(["status"]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^guests: +phone-home on http:\/\/127\.0\.0\.1:\d+$/m);
    });

    test("a guest whose agent never answers is READY by its own report, at its own address", async () => {
      await setControl(h.sim.dir, {}, ["agent_never_ready"]);
      try {
        const created = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
        assert.equal(created.code, 0, created.stderr);
        assert.equal(created.body.state, "RUNNING");
        assert.match(created.body.ip ?? "", /^10\.77\.\d+\.\d+$/);
        const ready = await readyEvent(h, created.body.vmid);
        assert.equal(ready?.payload?.via, "phone-home");
        assert.equal(ready?.payload?.ip, created.body.ip);
      } finally {
        await clearFaults(h.sim.dir);
      }
    });

    test("the agent answers first, the report comes later: READY waits for the report", async () => {
      // A real guest's agent answers once DHCP is done, its cloud-init reports a while later.
      await setControl(h.sim.dir, { phone_home_delay_ms: 1500 });
      try {
        const started = Date.now();
        const created = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
        assert.equal(created.code, 0, created.stderr);
        assert.equal(created.body.state, "RUNNING");
        assert.ok(Date.now() - started >= 1500, "not READY before the report");
        const ready = await readyEvent(h, created.body.vmid);
        assert.equal(ready?.payload?.via, "phone-home");
      } finally {
        await setControl(h.sim.dir, { phone_home_delay_ms: 0 });
      }
    });

    if (kind === "shell") {
      test("the guest's SSH host keys come with its report: recorded, in show --json, fingerprints in show", async () => {
        // A real host key made by ssh-keygen, with the comment OpenSSH writes: it is not stored.
        const keyFile = join(h.sim.dir, "guest_host_key");
        execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "root@guest", "-f", keyFile]);
        const line = readFileSync(`${keyFile}.pub`, "utf8").trim();
        const [type, blob] = line.split(" ");
        await setControl(h.sim.dir, { guest_ssh_host_keys: `${keyFile}.pub` });
        try {
          const created = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
          assert.equal(created.code, 0, created.stderr);
          assert.deepEqual(created.body.ssh_host_keys, [`${type} ${blob}`]);
          const shown = await h.json<SandboxBody>(["sandbox", "show", String(created.body.vmid)]);
          assert.deepEqual(shown.body.ssh_host_keys, [`${type} ${blob}`]);
          const text = await h.cli(["sandbox", "show", String(created.body.vmid)]);
          const fingerprint = execFileSync("ssh-keygen", ["-l", "-f", `${keyFile}.pub`], {
            encoding: "utf8",
          });
          assert.ok(
            fingerprint.includes(hostKeyFingerprint(line)),
            `${fingerprint} vs ${hostKeyFingerprint(line)}`,
          );
          assert.match(
            text.stdout,
            new RegExp(`^host keys: +ssh-ed25519 ${hostKeyFingerprint(line).replace(/[+/]/g, "\\$&")}$`, "m"),
          );
        } finally {
          await setControl(h.sim.dir, { guest_ssh_host_keys: "" });
        }
      });
    }

    test("with the guest silent, the guest agent's address is used after phone_home_grace, and said so", async () => {
      await setControl(h.sim.dir, { phone_home: 0 });
      try {
        const started = Date.now();
        const created = await h.json<SandboxBody>(["new", "--profile", "yolo-ephemeral"]);
        assert.equal(created.code, 0, created.stderr);
        assert.equal(created.body.state, "RUNNING");
        assert.ok(Date.now() - started >= 3000, "the grace was waited for");
        const ready = await readyEvent(h, created.body.vmid);
        assert.equal(ready?.payload?.via, "guest-agent");
        const logs = await h.cli(["logs", String(created.body.vmid), "--tail", "100"]);
        assert.match(
          logs.stdout,
          /sandbox\.phone_home\.missed +the guest agent reported 10\.77\.\d+\.\d+ but the guest did not phone home within 3s: cloud-init may not have finished/,
        );
        // Only the report carries host keys: without one, exec and ssh have nothing to check the guest by.
        assert.equal(created.body.ssh_host_keys, undefined);
        const shown = await h.cli(["sandbox", "show", String(created.body.vmid)]);
        assert.match(shown.stdout, /^host keys: +none recorded/m);
      } finally {
        await setControl(h.sim.dir, { phone_home: 1 });
      }
    });
  });
}
