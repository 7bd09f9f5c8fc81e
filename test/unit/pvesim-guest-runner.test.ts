/**
 * The simulator's guest runs agentlab's job runner the way a job sandbox's cloud-init does (JOBS-CONTRACT
 * §4): the snippet's write_files land under DIR/guests/<vmid>/root with their modes, and the runner runs
 * there with real `sh`, after the ready report, once per instance, in the VM's process group.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { guestRoot } from "../pvesim/guest-runner.js";
import { api, apiTask, createSim, type Sim, setControl } from "../pvesim/harness.js";
import { storageRoot } from "../pvesim/paths.js";

const FAST = { clone_ms: 40, start_ms: 30, stop_ms: 20, shutdown_ms: 20, task_ms: 20, agent_ready_ms: 250 };
const VM = "/nodes/pve/qemu";

/** Says what it got: the guest root it was given, an inherited variable, the job token it can read. */
const RUNNER = `#!/bin/sh
job=$(sed -n 's/.*"job_token":"\\([0-9a-f]*\\)".*/\\1/p' "$AGENTLAB_GUEST_ROOT/etc/agentlab/bootstrap.json")
echo "runner on $PVESIM_VMID for job $job in $(pwd)"
echo "$AGENTLAB_GUEST_ROOT" >> "$AGENTLAB_GUEST_ROOT/ran"
`;

/** Runs until the VM takes it down: a tick every 50 ms. */
const LONG_RUNNER = `#!/bin/sh
echo $$ > "$AGENTLAB_GUEST_ROOT/pid"
while :; do echo tick >> "$AGENTLAB_GUEST_ROOT/ticks"; sleep 0.05; done
`;

function indent(text: string): string {
  return text
    .split("\n")
    .map((line) => (line ? `      ${line}` : line))
    .join("\n");
}

/** A job sandbox's snippet as cloud-init reads it, written by hand. */
function snippetText(vmid: number, jobToken: string, controller: string, runner = RUNNER): string {
  const bootstrap = JSON.stringify({ token: "a".repeat(32), controller, vmid, job_token: jobToken });
  return `#cloud-config
hostname: sandbox-${vmid}
write_files:
  - path: /etc/agentlab/bootstrap.json
    content: '${bootstrap}'
    owner: agent:agent
    permissions: '0600'
    defer: true
  - path: /usr/local/lib/agentlab/agent-runner
    owner: root:root
    permissions: '0755'
    content: |
${indent(runner)}
  - path: /etc/agentlab/motd
    encoding: b64
    content: ${Buffer.from("hello from b64\n").toString("base64")}
runcmd:
  - [systemctl, enable, --now, qemu-guest-agent]
`;
}

describe("pvesim: the guest runs agentlab's job runner", () => {
  let sim: Sim;
  let server: http.Server;
  let controller = "";
  const reports: unknown[] = [];

  before(async () => {
    sim = createSim({ knobs: FAST });
    server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        if (req.method === "POST" && req.url === "/agentlab/v1/guest/ready") {
          reports.push(JSON.parse(body));
          res.writeHead(200, { "Content-Type": "application/json" }).end('{"ok":true}');
        } else {
          res.writeHead(404).end();
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    controller = `http://127.0.0.1:${(server.address() as AddressInfo).port}/agentlab`;
  });

  after(async () => {
    for (const vmid of [101, 102, 103, 104, 105]) {
      await apiTask(sim, "POST", `${VM}/${vmid}/status/stop`).catch(() => {});
    }
    await new Promise<void>((resolve) => server.close(() => resolve()));
    sim.cleanup();
  });

  const root = (vmid: number) => guestRoot(sim.dir, vmid);
  const guestLog = (vmid: number): string => {
    try {
      return readFileSync(join(sim.dir, "guests", `${vmid}.log`), "utf8");
    } catch {
      return "";
    }
  };
  const count = (text: string, needle: string) => text.split(needle).length - 1;

  async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
      await sleep(25);
    }
  }

  async function cloneVm(vmid: number): Promise<void> {
    const task = await apiTask(sim, "POST", `${VM}/9000/clone`, { newid: String(vmid), name: `sbx-${vmid}` });
    assert.equal(task.exitstatus, "OK", task.log.join("\n"));
  }

  /** Writes a fresh snippet file and points the VM's cicustom at it, as provisioning does. */
  async function useSnippet(vmid: number, text: string): Promise<void> {
    const file = `agentlab-${vmid}-${Math.random().toString(16).slice(2, 10)}.yaml`;
    writeFileSync(join(storageRoot(sim.dir, "local"), "snippets", file), text);
    await api(sim, "PUT", `${VM}/${vmid}/config`, { cicustom: `user=local:snippets/${file}` });
  }

  async function power(vmid: number, action: "start" | "stop" | "suspend" | "resume"): Promise<void> {
    const task = await apiTask(sim, "POST", `${VM}/${vmid}/status/${action}`);
    assert.equal(task.exitstatus, "OK", task.log.join("\n"));
  }

  const JOB_A = "1".repeat(32);
  const JOB_B = "2".repeat(32);

  it("writes the files with their modes and runs the runner after the ready report, in the guest root", async () => {
    await cloneVm(101);
    await useSnippet(101, snippetText(101, JOB_A, controller));
    await power(101, "start");
    await waitFor("the runner", () => guestLog(101).includes("agent-runner: exit 0"));

    const r = root(101);
    const bootstrap = join(r, "etc/agentlab/bootstrap.json");
    const runner = join(r, "usr/local/lib/agentlab/agent-runner");
    assert.equal(JSON.parse(readFileSync(bootstrap, "utf8")).job_token, JOB_A);
    assert.equal(statSync(bootstrap).mode & 0o7777, 0o600);
    assert.equal(readFileSync(runner, "utf8"), RUNNER);
    assert.equal(statSync(runner).mode & 0o7777, 0o755);
    assert.equal(readFileSync(join(r, "etc/agentlab/motd"), "utf8"), "hello from b64\n");
    assert.equal(statSync(join(r, "etc/agentlab/motd")).mode & 0o7777, 0o644);

    assert.equal(readFileSync(join(r, "ran"), "utf8"), `${r}\n`);
    const log = guestLog(101);
    assert.ok(log.includes(`runner on 101 for job ${JOB_A} in ${r}\n`), log);
    const report = log.indexOf(`phone-home: POST ${controller}/v1/guest/ready attempt 1: 200`);
    const started = log.indexOf(`agent-runner: sh ${runner}\n`);
    assert.ok(report >= 0 && started > report, `the runner started before the ready report:\n${log}`);
    assert.deepEqual(reports, [{ vmid: 101, token: "a".repeat(32), ip: "10.77.0.103" }]);
  });

  it("a reboot does not run the same job again; a new job token on the VM does run", async () => {
    await power(101, "stop");
    await power(101, "start");
    await sleep(FAST.agent_ready_ms + 700);
    assert.equal(count(guestLog(101), "agent-runner: sh"), 1, guestLog(101));
    assert.equal(readFileSync(join(root(101), "ran"), "utf8"), `${root(101)}\n`);

    await useSnippet(101, snippetText(101, JOB_B, controller));
    await power(101, "stop");
    await power(101, "start");
    await waitFor("the second job's runner", () => guestLog(101).includes(`for job ${JOB_B}`));
    await waitFor("its exit", () => count(guestLog(101), "agent-runner: exit 0") === 2);
    // Same VM: its root (and what the first job left there) is kept, as on a real disk.
    assert.equal(readFileSync(join(root(101), "ran"), "utf8"), `${root(101)}\n${root(101)}\n`);
  });

  it("runner=0 writes the files but never starts the runner; back at 1, the next boot runs it", async () => {
    await cloneVm(102);
    await useSnippet(102, snippetText(102, JOB_A, controller));
    await setControl(sim.dir, { runner: 0 });
    try {
      await power(102, "start");
      await waitFor("the guest", () => guestLog(102).includes("agent-runner: not started (knob runner=0)"));
      assert.ok(existsSync(join(root(102), "usr/local/lib/agentlab/agent-runner")));
      await waitFor("the ready report, which still goes out", () =>
        guestLog(102).includes("phone-home: POST"),
      );
      await sleep(300);
      assert.equal(existsSync(join(root(102), "ran")), false);
      assert.equal(count(guestLog(102), "agent-runner: sh"), 0);
    } finally {
      await setControl(sim.dir, { runner: 1 });
    }
    await power(102, "stop");
    await power(102, "start");
    await waitFor("the runner", () => existsSync(join(root(102), "ran")));
  });

  it("without a phone-home the runner starts at boot time", async () => {
    await cloneVm(103);
    await useSnippet(103, snippetText(103, JOB_A, controller));
    await setControl(sim.dir, { phone_home: 0 });
    try {
      const startedAt = Date.now();
      await power(103, "start");
      await waitFor("the runner", () => guestLog(103).includes("agent-runner: exit 0"));
      const ran = statSync(join(root(103), "ran")).mtimeMs;
      assert.ok(ran >= startedAt + FAST.agent_ready_ms, `ran ${ran - startedAt} ms after the start`);
      assert.equal(count(guestLog(103), "phone-home"), 0);
    } finally {
      await setControl(sim.dir, { phone_home: 1 });
    }
  });

  it("a new VM under the same VMID starts from an empty root", async () => {
    writeFileSync(join(root(103), "left-by-the-old-vm"), "x");
    await power(103, "stop");
    assert.equal((await apiTask(sim, "DELETE", `${VM}/103`)).exitstatus, "OK");
    await cloneVm(103);
    await useSnippet(103, snippetText(103, JOB_B, controller));
    await power(103, "start");
    await waitFor("the runner", () => guestLog(103).includes(`for job ${JOB_B}`));
    assert.equal(existsSync(join(root(103), "left-by-the-old-vm")), false);
    assert.equal(readFileSync(join(root(103), "ran"), "utf8"), `${root(103)}\n`);
  });

  it("a VM stopped before it booted never runs the runner; pause and stop reach a running one", async () => {
    await cloneVm(104);
    await useSnippet(104, snippetText(104, JOB_A, controller));
    const bootMs = 3000;
    await setControl(sim.dir, { agent_ready_ms: bootMs });
    try {
      const startedAt = Date.now();
      await power(104, "start");
      await power(104, "stop");
      assert.ok(Date.now() - startedAt < bootMs, "the VM was stopped before its guest booted");
      await sleep(Math.max(0, startedAt + bootMs + 500 - Date.now()));
      assert.equal(existsSync(root(104)), false, "a stopped guest wrote its files");
      assert.equal(guestLog(104).includes("agent-runner"), false, guestLog(104));
    } finally {
      await setControl(sim.dir, { agent_ready_ms: FAST.agent_ready_ms });
    }

    await cloneVm(105);
    await useSnippet(105, snippetText(105, JOB_A, controller, LONG_RUNNER));
    await power(105, "start");
    const ticks = join(root(105), "ticks");
    const tickCount = () => (existsSync(ticks) ? count(readFileSync(ticks, "utf8"), "tick") : 0);
    await waitFor("ticks", () => tickCount() >= 2);
    const pid = Number(readFileSync(join(root(105), "pid"), "utf8"));

    await power(105, "suspend");
    await sleep(100);
    const paused = tickCount();
    await sleep(400);
    assert.equal(tickCount(), paused, "the runner kept running in a paused VM");
    await power(105, "resume");
    await waitFor("ticks after the resume", () => tickCount() > paused + 1);

    await power(105, "stop");
    // A zombie (nobody reaps in some containers) counts as ended.
    const alive = () => {
      try {
        return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
      } catch {
        return false;
      }
    };
    await waitFor("the runner to end with its VM", () => !alive(), 5_000);
    const stopped = tickCount();
    await sleep(300);
    assert.equal(tickCount(), stopped);
  });
});
