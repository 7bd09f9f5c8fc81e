import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import type { DaemonContext } from "../../src/daemon/context.js";
import type { PortFinder } from "../../src/daemon/network/ports.js";
import { type CommandRunner, SandboxFirewall } from "../../src/daemon/network/sandbox-firewall.js";
import { bindDiscoveredAddress, resyncNetwork } from "../../src/daemon/services/sandbox/network-binding.js";
import { BridgePortMissingError, SandboxNetworking } from "../../src/daemon/services/sandbox-network.js";
import type { Sandbox } from "../../src/daemon/store/sandboxes.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

const log = pino({ level: "silent" });
const EMPTY = JSON.stringify({ nftables: [] });

/** Port lookups answered from `ports` (vmid -> port on vmbr1); counts the lookups. */
function fakePorts(ports: Record<number, string>) {
  const lookups: number[] = [];
  const findPort: PortFinder = async (vmid) => {
    lookups.push(vmid);
    const port = ports[vmid];
    return port
      ? { found: { port, bridge: "vmbr1" } }
      : { reason: `fwpr${vmid}p0 does not exist, tap${vmid}i0 does not exist` };
  };
  return { lookups, options: { findPort, retryDelayMs: 0 } };
}

/** Firewall bridge ports for the VMIDs these tests use. */
const FWPR = fakePorts({ 1000: "fwpr1000p0", 1001: "fwpr1001p0", 1012: "fwpr1012p0" }).options;

/** An nft stand-in: records every call; `loaded` says whether the agentlab tables exist. */
function fakeNft(options: { loaded: boolean; applyFails?: boolean }) {
  const calls: Array<{ args: string[]; input?: string }> = [];
  const run: CommandRunner = async (_file, args, runOptions) => {
    calls.push({ args: [...args], ...(runOptions?.input !== undefined ? { input: runOptions.input } : {}) });
    if (args[1] === "list") {
      return options.loaded
        ? { exitCode: 0, stdout: EMPTY, stderr: "" }
        : {
            exitCode: 1,
            stdout: "",
            stderr: "Error: No such file or directory; did you mean table 'filter'?",
          };
    }
    return options.applyFails
      ? { exitCode: 1, stdout: "", stderr: "Error: Could not process rule" }
      : { exitCode: 0, stdout: "", stderr: "" };
  };
  return { calls, firewall: new SandboxFirewall({ run, subnet: "10.77.0.0/16" }) };
}

describe("per-sandbox network isolation in the lifecycle", () => {
  test("auto without the ruleset loaded: disabled, and the lifecycle makes no nft change", async () => {
    const nft = fakeNft({ loaded: false });
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    assert.equal((await net.init()).enabled, false);
    await net.beforeStart(1000);
    await net.bind(1000, "bc:24:11:00:00:01", "10.77.4.2", "nat");
    await net.release(1000, "10.77.4.2");
    assert.ok(
      nft.calls.every((c) => c.args[1] === "list"),
      "only the start-up probe ran",
    );
  });

  test("auto with the ruleset: register before boot, bind at READY, release on destroy", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    assert.equal((await net.init()).enabled, true);
    await net.beforeStart(1000);
    await net.bind(1000, "BC:24:11:00:00:01", "10.77.4.2", "nat");
    await net.release(1000, "10.77.4.2");
    const scripts = nft.calls.filter((c) => c.input !== undefined).map((c) => c.input ?? "");
    // Both names Proxmox may give the port are policed from the first frame...
    assert.equal(scripts[0], 'add element bridge agentlab_l2 sandbox_ports { "fwpr1000p0" }\n');
    assert.equal(scripts[1], 'add element bridge agentlab_l2 sandbox_ports { "tap1000i0" }\n');
    // ...the one found on the bridge is bound, the other forgotten...
    assert.match(scripts[2] ?? "", /tap_bindings \{ "fwpr1000p0" \. bc:24:11:00:00:01 \. 10\.77\.4\.2 \}/);
    assert.doesNotMatch(scripts[2] ?? "", /tap1000i0/);
    assert.match(scripts[3] ?? "", /delete element bridge agentlab_l2 sandbox_ports \{ "tap1000i0" \}/);
    // ...and destroy releases every name and the address.
    assert.match(scripts[4] ?? "", /delete element bridge agentlab_l2 sandbox_ports \{ "fwpr1000p0" \}/);
    assert.match(scripts[4] ?? "", /delete element bridge agentlab_l2 bound_ips \{ 10\.77\.4\.2 \}/);
    assert.match(scripts[5] ?? "", /delete element bridge agentlab_l2 sandbox_ports \{ "tap1000i0" \}/);
    assert.equal(scripts.length, 6);
  });

  test("auto: a port lookup that cannot run fails the bind too (the binding cannot be made)", async () => {
    const nft = fakeNft({ loaded: true });
    const findPort: PortFinder = async () => {
      throw new Error("ip not found");
    };
    const net = new SandboxNetworking("auto", nft.firewall, log, { findPort, retryDelayMs: 0 });
    await net.init();
    await assert.rejects(net.bind(1007, "bc:24:11:00:00:07", "10.77.4.7", "nat"), (e: AgentlabError) => {
      assert.ok(e instanceof BridgePortMissingError);
      assert.match(e.message, /sandbox 1007: .*\(cannot look it up: ip not found\)$/);
      return true;
    });
  });

  test("a NIC without a firewall bridge is bound on its tap, not on a fwpr that does not exist", async () => {
    const nft = fakeNft({ loaded: true });
    const ports = fakePorts({ 1003: "tap1003i0" });
    const net = new SandboxNetworking("auto", nft.firewall, log, ports.options);
    await net.init();
    await net.bind(1003, "bc:24:11:00:00:03", "10.77.4.3", "nat");
    const scripts = nft.calls.filter((c) => c.input !== undefined).map((c) => c.input ?? "");
    assert.match(scripts[0] ?? "", /tap_bindings \{ "tap1003i0" \. bc:24:11:00:00:03 \. 10\.77\.4\.3 \}/);
    assert.doesNotMatch(scripts[0] ?? "", /fwpr1003p0/);
    assert.match(scripts[1] ?? "", /delete element bridge agentlab_l2 sandbox_ports \{ "fwpr1003p0" \}/);
  });

  for (const mode of ["auto", "on"] as const) {
    test(`${mode}: a NIC with no port on a bridge fails the bind after bounded retries, binding nothing`, async () => {
      const nft = fakeNft({ loaded: true });
      const ports = fakePorts({});
      const net = new SandboxNetworking(mode, nft.firewall, log, { ...ports.options, attempts: 3 });
      await net.init();
      await assert.rejects(net.bind(1004, "bc:24:11:00:00:04", "10.77.4.4", "nat"), (e: AgentlabError) => {
        assert.ok(e instanceof BridgePortMissingError);
        assert.equal(
          e.message,
          "anti-spoofing not in place for sandbox 1004: its NIC net0 has no port on a bridge " +
            "(fwpr1004p0 does not exist, tap1004i0 does not exist)",
        );
        assert.match(e.hint, /ip -br link show \| grep 1004/);
        return true;
      });
      assert.deepEqual(ports.lookups, [1004, 1004, 1004]);
      assert.ok(
        nft.calls.every((c) => c.input === undefined),
        "no nft change",
      );
    });
  }

  test("auto: a failing nft change is logged, not the sandbox's failure", async () => {
    const net = new SandboxNetworking(
      "auto",
      fakeNft({ loaded: true, applyFails: true }).firewall,
      log,
      FWPR,
    );
    await net.init();
    await net.beforeStart(1000);
  });

  test("on: the daemon refuses to start without the ruleset, and a failing bind fails the sandbox", async () => {
    await assert.rejects(
      new SandboxNetworking("on", fakeNft({ loaded: false }).firewall, log, FWPR).init(),
      (e: AgentlabError) => {
        assert.equal(e.code, "CONFIG_INVALID");
        assert.match(e.hint, /scripts\/net\/apply\.sh --apply/);
        return true;
      },
    );
    const net = new SandboxNetworking("on", fakeNft({ loaded: true, applyFails: true }).firewall, log, FWPR);
    await net.init();
    await assert.rejects(net.beforeStart(1000), /nftables register port failed/);
  });

  test("off: never touches nftables", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("off", nft.firewall, log, FWPR);
    assert.equal((await net.init()).enabled, false);
    await net.beforeStart(1000);
    assert.equal(nft.calls.length, 0);
  });
});

test("resync makes the sets exactly the live sandboxes: bound ones with MAC and address, others registered", async () => {
  const nft = fakeNft({ loaded: true });
  const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
  await net.init();
  const result = await net.resync([
    { vmid: 1000, ip: "10.77.4.2", mac: "bc:24:11:00:00:01", mode: "nat" },
    { vmid: 1001, ip: null, mac: undefined, mode: "nat" },
  ]);
  assert.deepEqual(result, { unbound: [] });
  const script = nft.calls.find((c) => c.input !== undefined)?.input ?? "";
  assert.match(script, /flush set/);
  assert.match(script, /tap_bindings \{ "fwpr1000p0" \. bc:24:11:00:00:01 \. 10\.77\.4\.2 \}/);
  // The bound sandbox's other name is not policed: behind a firewall bridge that would drop its traffic.
  assert.doesNotMatch(script, /tap1000i0/);
  // Not booted yet: both names registered, as before a start.
  assert.match(script, /sandbox_ports \{ "fwpr1001p0" \}/);
  assert.match(script, /sandbox_ports \{ "tap1001i0" \}/);
});

test("resync looks each port up again and reports a sandbox whose port is gone, registering it unbound", async () => {
  const nft = fakeNft({ loaded: true });
  const net = new SandboxNetworking("on", nft.firewall, log, fakePorts({ 1005: "tap1005i0" }).options);
  await net.init();
  const result = await net.resync([
    { vmid: 1005, ip: "10.77.4.5", mac: "bc:24:11:00:00:05", mode: "nat" },
    { vmid: 1006, ip: "10.77.4.6", mac: "bc:24:11:00:00:06", mode: "nat" },
  ]);
  assert.deepEqual(
    result.unbound.map((u) => u.vmid),
    [1006],
  );
  assert.match(result.unbound[0]?.reason ?? "", /anti-spoofing not in place for sandbox 1006/);
  const script = nft.calls.find((c) => c.input !== undefined)?.input ?? "";
  assert.match(script, /tap_bindings \{ "tap1005i0" \. bc:24:11:00:00:05 \. 10\.77\.4\.5 \}/);
  assert.doesNotMatch(script, /10\.77\.4\.6/);
  assert.match(script, /sandbox_ports \{ "fwpr1006p0" \}/);
  assert.match(script, /sandbox_ports \{ "tap1006i0" \}/);
});

describe("an address the reconciler finds after provisioning", () => {
  test("is bound into the anti-spoofing sets with the VM's MAC and the profile's egress mode", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    await net.init();
    await net.beforeStart(1012);
    const ctx = {
      network: net,
      config: { proxmox_node: "pve" },
      profiles: [{ name: "open", network: { mode: "allowlist" } }],
      backend: {
        getConfig: async (vm: { vmid: number; node: string }) => {
          assert.deepEqual(vm, { vmid: 1012, node: "pve" });
          return { net0: "virtio=BC:24:11:AA:BB:CC,bridge=vmbr1,firewall=1" };
        },
      },
      log,
    } as unknown as DaemonContext;
    await bindDiscoveredAddress(
      ctx,
      { vmid: 1012, node: null, profile: "open" } as unknown as Sandbox,
      "10.77.4.14",
    );
    const bound = nft.calls.find((c) => c.input?.includes("tap_bindings"))?.input ?? "";
    assert.match(bound, /fwpr1012p0/);
    assert.match(bound, /10\.77\.4\.14/);
    assert.match(bound, /bc:24:11:aa:bb:cc/);
  });

  test("a VM whose config cannot be read is logged, not thrown: the next start resyncs", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    await net.init();
    const ctx = {
      network: net,
      config: { proxmox_node: "pve" },
      profiles: [],
      backend: {
        getConfig: async () => {
          throw new Error("VM 1012 does not exist");
        },
      },
      log,
    } as unknown as DaemonContext;
    await bindDiscoveredAddress(
      ctx,
      { vmid: 1012, node: "pve", profile: "gone" } as unknown as Sandbox,
      "10.77.4.14",
    );
    assert.ok(nft.calls.every((c) => c.input === undefined || !c.input.includes("10.77.4.14")));
  });

  test("a NIC with no port is recorded on the sandbox as not policed, not only logged", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log, fakePorts({}).options);
    await net.init();
    const events: Array<{ kind: string; sandbox_vmid: number; msg: string }> = [];
    const ctx = {
      network: net,
      config: { proxmox_node: "pve" },
      profiles: [],
      backend: { getConfig: async () => ({ net0: "virtio=BC:24:11:AA:BB:CD,bridge=vmbr1,firewall=1" }) },
      store: { events: { append: (e: (typeof events)[number]) => events.push(e) } },
      log,
    } as unknown as DaemonContext;
    await bindDiscoveredAddress(
      ctx,
      { vmid: 1013, node: "pve", profile: "gone" } as unknown as Sandbox,
      "10.77.4.15",
    );
    assert.deepEqual(
      events.map((e) => [e.kind, e.sandbox_vmid]),
      [["sandbox.network.unbound", 1013]],
    );
    assert.match(events[0]?.msg ?? "", /anti-spoofing not in place for sandbox 1013/);
    assert.ok(
      nft.calls.every((c) => c.input === undefined),
      "nothing bound",
    );
  });
});

test("daemon start: a live sandbox whose port is gone gets a sandbox.network.unbound event", async () => {
  const nft = fakeNft({ loaded: true });
  const net = new SandboxNetworking("auto", nft.firewall, log, fakePorts({ 1020: "fwpr1020p0" }).options);
  await net.init();
  const events: Array<{ kind: string; sandbox_vmid: number; msg: string }> = [];
  const row = (vmid: number, ip: string) => ({
    vmid,
    ip,
    node: "pve",
    profile: "p",
    state: "RUNNING",
    vm_created: true,
  });
  const ctx = {
    network: net,
    config: { proxmox_node: "pve" },
    profiles: [],
    backend: { getConfig: async () => ({ net0: "virtio=BC:24:11:AA:BB:CE,bridge=vmbr1,firewall=1" }) },
    store: {
      sandboxes: { list: () => [row(1020, "10.77.4.20"), row(1021, "10.77.4.21")] },
      events: { append: (e: (typeof events)[number]) => events.push(e) },
    },
    log,
  } as unknown as DaemonContext;
  await resyncNetwork(ctx);
  assert.deepEqual(
    events.map((e) => [e.kind, e.sandbox_vmid]),
    [["sandbox.network.unbound", 1021]],
  );
});

describe("isolation as agentlab status reports it", () => {
  /** An nft stand-in whose tables can be loaded or flushed between calls. */
  function switchableNft(loaded: boolean) {
    const state = { loaded };
    const run: CommandRunner = async (_file, args) =>
      args[1] !== "list" || state.loaded
        ? { exitCode: 0, stdout: EMPTY, stderr: "" }
        : { exitCode: 1, stdout: "", stderr: "Error: No such file or directory" };
    return { state, firewall: new SandboxFirewall({ run, subnet: "10.77.0.0/16" }) };
  }
  const live = [{ vmid: 1000, ip: "10.77.4.2" }];

  test("off: not in force, nothing read", async () => {
    const net = new SandboxNetworking("off", switchableNft(true).firewall, log, FWPR);
    await net.init();
    const report = await net.report(live);
    assert.equal(report.in_force, false);
    assert.match(report.reason, /^network_isolation: off/);
  });

  test("auto without the ruleset: not in force, with the start-up reason and how to load it", async () => {
    const net = new SandboxNetworking("auto", switchableNft(false).firewall, log, FWPR);
    await net.init();
    const report = await net.report(live);
    assert.equal(report.in_force, false);
    assert.equal(report.ruleset.loaded, false);
    assert.match(report.reason, /agentlab nftables ruleset not loaded/);
    assert.match(report.hint ?? "", /scripts\/net\/apply\.sh --apply/);
  });

  test("a ruleset loaded after start is found, and the fix is a restart (nothing is bound yet)", async () => {
    const nft = switchableNft(false);
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    await net.init();
    nft.state.loaded = true;
    const report = await net.report(live);
    assert.equal(report.in_force, false);
    assert.equal(report.ruleset.loaded, true);
    assert.match(report.reason, /started without it/);
    assert.equal(report.hint, "sudo systemctl restart agentlabd");
  });

  test("a ruleset flushed after start is no longer in force, though agentlabd started with it", async () => {
    const nft = switchableNft(true);
    const net = new SandboxNetworking("auto", nft.firewall, log, FWPR);
    await net.init();
    assert.equal((await net.report(live)).in_force, true);
    nft.state.loaded = false;
    const report = await net.report(live);
    assert.equal(report.in_force, false);
    assert.match(report.reason, /was loaded when agentlabd started but cannot be read now/);
  });
});
