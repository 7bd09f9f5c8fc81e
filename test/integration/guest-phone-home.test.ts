/**
 * The phone-home path end to end: the simulator's guest reads the bootstrap.json that the daemon's own
 * snippet renderer wrote, POSTs the ready report to a real guest listener when it "boots", and the race
 * against the guest agent (through the daemon's real Proxmox backend) resolves from whichever answers.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { renderUserData, writeSnippet } from "../../src/daemon/guest/cloud-init.js";
import { GuestListener } from "../../src/daemon/guest/listener.js";
import { firstGuestAddress, GuestReadiness } from "../../src/daemon/guest/ready-waiters.js";
import { BootstrapTokens, hashBootstrapToken } from "../../src/daemon/guest/tokens.js";
import { pickGuestIp } from "../../src/daemon/network/guest-ip.js";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import { abortableSleep } from "../../src/daemon/proxmox/tasks.js";
import { ApiTransport } from "../../src/daemon/proxmox/transport-api.js";
import { ShellTransport } from "../../src/daemon/proxmox/transport-shell.js";
import type { ProxmoxBackend } from "../../src/daemon/proxmox/types.js";
import {
  type BootstrapTokenRepo,
  createBootstrapTokenRepo,
} from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import { makeHostDir, startDaemon } from "../helpers/daemon.js";
import { updateControl } from "../pvesim/control.js";
import { guestIp, type PhoneHomeKnobs } from "../pvesim/guest.js";
import { createSim, type Sim, type SimApi, setControl, startApi } from "../pvesim/harness.js";
import { storageRoot } from "../pvesim/paths.js";

const log = pino({ level: "silent" });
const FAST = { clone_ms: 40, start_ms: 30, stop_ms: 20, shutdown_ms: 20, task_ms: 20, agent_ready_ms: 300 };
// Loopback (where the simulated guest's report comes from) and 10.77/16 (the address it reports).
const AGENT_SUBNET = "0.0.0.0/1";

function fastSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return abortableSleep(Math.min(ms, 50), signal);
}

/** Phone-home knobs: in control.json like every knob (set through updateControl, the CLI's own path). */
function setPhoneHome(sim: Sim, knobs: Partial<PhoneHomeKnobs>): Promise<unknown> {
  return updateControl(sim.dir, (control) => Object.assign(control, knobs));
}

interface Rig {
  sim: Sim;
  api?: SimApi;
  backend: ProxmoxBackend;
  store: Store;
  tokens: BootstrapTokenRepo;
  readiness: GuestReadiness;
  listener: GuestListener;
}

async function makeRig(kind: "shell" | "api"): Promise<Rig> {
  const sim = createSim({ knobs: FAST });
  let api: SimApi | undefined;
  let backend: ProxmoxBackend;
  if (kind === "shell") {
    const transport = new ShellTransport({ timeoutMs: 30_000, env: sim.env });
    backend = new PveBackend({ transport, log, timeoutMs: 30_000, sleep: fastSleep });
  } else {
    api = await startApi(sim);
    const transport = new ApiTransport({
      url: `https://127.0.0.1:${api.port}`,
      token: api.token,
      timeoutMs: 30_000,
      tlsCaPath: api.caPath,
    });
    backend = new PveBackend({ transport, log, timeoutMs: 30_000, tokenId: api.tokenId, sleep: fastSleep });
  }
  const store = openStore(path.join(sim.dir, "agentlab.db"));
  const now = () => new Date();
  const readiness = new GuestReadiness({
    tokens: new BootstrapTokens(createBootstrapTokenRepo(store), { now }),
    clock: { now },
    controllerUrl: "http://127.0.0.1:0",
    listenAddress: "127.0.0.1:0",
    log,
  });
  const listener = new GuestListener({ listen: "127.0.0.1:0", agentSubnet: AGENT_SUBNET, readiness, log });
  const state = await listener.start();
  assert.equal(state.listening, true);
  return { sim, api, backend, store, tokens: createBootstrapTokenRepo(store), readiness, listener };
}

/** What provisioning does up to the start: clone, token, snippet, cicustom, start. */
async function bootWithPhoneHome(rig: Rig, vmid: number): Promise<{ token: string; startedAt: number }> {
  const vm = { vmid, node: "pve" };
  await rig.backend.clone({ vmid: 9000, node: "pve" }, vmid, { name: `sandbox-${vmid}`, full: false });
  const issued = rig.readiness.issue(vmid);
  const snippet = writeSnippet(
    path.join(storageRoot(rig.sim.dir, "local"), "snippets"),
    vmid,
    renderUserData({ vmid, hostname: `sandbox-${vmid}`, bootstrap: issued }),
  );
  await rig.backend.setConfig(vm, { cicustom: `user=local:snippets/${snippet.file}` });
  const startedAt = Date.now();
  await rig.backend.start(vm);
  return { token: issued.token, startedAt };
}

/** The guest-agent path, as the provisioning poll asks it. */
function agentPoll(rig: Rig, vmid: number) {
  return async (signal: AbortSignal): Promise<string> => {
    for (;;) {
      signal.throwIfAborted();
      try {
        const ip = pickGuestIp(await rig.backend.guestInterfaces({ vmid, node: "pve" }), AGENT_SUBNET);
        if (ip) return ip;
      } catch (error) {
        if (!(error instanceof AgentlabError && error.code === "GUEST_AGENT_NOT_READY")) throw error;
      }
      await abortableSleep(100, signal);
    }
  };
}

function guestLog(sim: Sim, vmid: number): string {
  try {
    return fs.readFileSync(path.join(sim.dir, "guests", `${vmid}.log`), "utf8");
  } catch {
    return "";
  }
}

for (const kind of ["shell", "api"] as const) {
  describe(`guest phone-home against the simulator (${kind} backend)`, () => {
    let rig: Rig;
    before(async () => {
      rig = await makeRig(kind);
    });
    after(async () => {
      for (const vmid of [101, 102, 103, 104, 105]) {
        await rig.backend.stop({ vmid, node: "pve" }).catch(() => {});
      }
      await rig.listener.close();
      await rig.api?.stop();
      rig.store.close();
      rig.sim.cleanup();
    });

    it("the booted guest reports itself: ready without the guest agent ever answering", async () => {
      await setControl(rig.sim.dir, {}, ["agent_never_ready=101"]);
      const { token, startedAt } = await bootWithPhoneHome(rig, 101);
      const address = await firstGuestAddress(
        rig.readiness,
        101,
        AbortSignal.timeout(15_000),
        agentPoll(rig, 101),
      );
      assert.deepEqual(address, { ip: guestIp(101), via: "phone-home" });
      assert.ok(Date.now() - startedAt >= FAST.agent_ready_ms - 50, "reported before the guest booted");
      assert.notEqual(rig.tokens.get(hashBootstrapToken(token))?.consumed_at, null);
      // The guest writes its log line once it has read the answer, a moment after the daemon sent it.
      for (let i = 0; i < 100 && !guestLog(rig.sim, 101).includes("attempt 1"); i++) await sleep(20);
      assert.match(
        guestLog(rig.sim, 101),
        /phone-home: POST http:\/\/127\.0\.0\.1:\d+\/v1\/guest\/ready attempt 1: 200 \{"vmid":101,"ip":"10\.77\.0\.103"\}/,
      );
    });

    it("phone_home=0: the guest stays silent and the guest agent answers; the unused token is revoked", async () => {
      await setPhoneHome(rig.sim, { phone_home: 0 });
      try {
        const { token } = await bootWithPhoneHome(rig, 102);
        const address = await firstGuestAddress(
          rig.readiness,
          102,
          AbortSignal.timeout(15_000),
          agentPoll(rig, 102),
        );
        assert.deepEqual(address, { ip: guestIp(102), via: "guest-agent" });
        assert.equal(rig.tokens.get(hashBootstrapToken(token)), undefined);
        await sleep(300);
        assert.equal(guestLog(rig.sim, 102), "");
      } finally {
        await setPhoneHome(rig.sim, { phone_home: 1 });
      }
    });

    it("phone_home_delay_ms holds the report back: with the agent up the agent wins, without it the report comes late", async () => {
      // Long enough that a loaded machine's slow agent polls still answer before the report.
      await setPhoneHome(rig.sim, { phone_home_delay_ms: 6000 });
      try {
        await bootWithPhoneHome(rig, 103);
        const first = await firstGuestAddress(
          rig.readiness,
          103,
          AbortSignal.timeout(15_000),
          agentPoll(rig, 103),
        );
        assert.equal(first.via, "guest-agent");
      } finally {
        await setPhoneHome(rig.sim, { phone_home_delay_ms: 1500 });
      }
      try {
        // With a grace period the agent's early answer does not end the wait: the report does.
        const { startedAt: graceStart } = await bootWithPhoneHome(rig, 105);
        const reported = await firstGuestAddress(
          rig.readiness,
          105,
          AbortSignal.timeout(15_000),
          agentPoll(rig, 105),
          { graceMs: 10_000 },
        );
        assert.deepEqual(reported, { ip: guestIp(105), via: "phone-home" });
        assert.ok(
          Date.now() - graceStart >= FAST.agent_ready_ms + 1500 - 50,
          "after the report, not the agent",
        );

        await setControl(rig.sim.dir, {}, ["agent_never_ready=104"]);
        const { startedAt } = await bootWithPhoneHome(rig, 104);
        const late = await firstGuestAddress(
          rig.readiness,
          104,
          AbortSignal.timeout(15_000),
          agentPoll(rig, 104),
        );
        assert.deepEqual(late, { ip: guestIp(104), via: "phone-home" });
        const took = Date.now() - startedAt;
        assert.ok(took >= FAST.agent_ready_ms + 1500 - 50, `reported after ${took} ms`);
      } finally {
        await setPhoneHome(rig.sim, { phone_home_delay_ms: 0 });
      }
    });
  });
}

describe("guest phone-home: what a guest does across stops and reboots (shell backend)", () => {
  let rig: Rig;
  before(async () => {
    rig = await makeRig("shell");
  });
  after(async () => {
    await rig.backend.stop({ vmid: 110, node: "pve" }).catch(() => {});
    await rig.listener.close();
    rig.store.close();
    rig.sim.cleanup();
  });

  it("a VM stopped before it booted never reports; the next boot does, and a reboot does not again", async () => {
    const vm = { vmid: 110, node: "pve" };
    // The boot takes 15 s, so the stop lands before it even on a loaded machine, where one `qm stop`
    // through the shell backend has taken more than 4 s (the stopped guest must then stay silent
    // past the moment it would have booted, so the wait costs what the boot takes).
    const bootMs = 15_000;
    await setControl(rig.sim.dir, { agent_ready_ms: bootMs });
    const { startedAt } = await bootWithPhoneHome(rig, 110);
    const waiting = rig.readiness.wait(110, AbortSignal.timeout(60_000));
    await rig.backend.stop(vm);
    assert.ok(Date.now() - startedAt < bootMs, "the VM was stopped before its guest booted");
    await sleep(Math.max(0, startedAt + bootMs + 500 - Date.now()));
    assert.equal(guestLog(rig.sim, 110), "", "a stopped guest reported");

    await setControl(rig.sim.dir, { agent_ready_ms: 300 });
    await rig.backend.start(vm);
    assert.equal((await waiting).ip, guestIp(110));

    // cloud-init runs runcmd once per instance: a second boot sends nothing.
    await rig.backend.stop(vm);
    await rig.backend.start(vm);
    await sleep(900);
    assert.equal(guestLog(rig.sim, 110).match(/phone-home: POST/g)?.length, 1);
  });
});

describe("agentlabd and its guest listener", () => {
  it("starts when bootstrap_listen's address is not on this host, and says how to fix it", async () => {
    const local = new Set(
      Object.values(os.networkInterfaces())
        .flat()
        .map((i) => i?.address),
    );
    const absent = ["10.77.0.1", "198.51.100.77", "203.0.113.77"].find((a) => !local.has(a))!;
    const host = makeHostDir(`bootstrap_listen: ${absent}:8844\n`);
    const daemon = await startDaemon(host);
    try {
      const warning = daemon
        .output()
        .stdout.split("\n")
        .filter((line) => line.includes("guest listener not started"))
        .map((line) => JSON.parse(line) as { level: string; msg: string; address: string });
      assert.equal(warning.length, 1, daemon.output().stdout);
      assert.equal(warning[0]!.level, "warn");
      assert.equal(warning[0]!.address, `${absent}:8844`);
      assert.match(
        warning[0]!.msg,
        new RegExp(
          `cannot listen on ${absent.replaceAll(".", "\\.")}:8844: no interface of this host has that address; guests are found through the guest agent only\\. Fix: create the sandbox bridge`,
        ),
      );
      const ready = daemon
        .output()
        .stdout.split("\n")
        .find((line) => line.includes("agentlabd ready"));
      assert.equal((JSON.parse(ready!) as { guest_listener: unknown }).guest_listener, null);
    } finally {
      await daemon.stop();
      host.cleanup();
    }
  });

  it("serves /healthz on bootstrap_listen once up and stops serving when the daemon stops", async () => {
    const host = makeHostDir("bootstrap_listen: 127.0.0.1:0\nagent_subnet: 127.0.0.0/8\n");
    const daemon = await startDaemon(host);
    let url = "";
    try {
      const ready = daemon
        .output()
        .stdout.split("\n")
        .find((line) => line.includes("agentlabd ready"));
      url = (JSON.parse(ready!) as { guest_listener: string }).guest_listener;
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
      const res = await fetch(`${url}/healthz`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "ok");
      const refused = await fetch(`${url}/v1/guest/ready`, {
        method: "POST",
        body: JSON.stringify({ vmid: 101, token: "0".repeat(32) }),
      });
      assert.equal(refused.status, 403);
      assert.deepEqual(await refused.json(), { error: "invalid or expired bootstrap token" });
    } finally {
      await daemon.stop();
      host.cleanup();
    }
    await assert.rejects(fetch(`${url}/healthz`));
  });
});
