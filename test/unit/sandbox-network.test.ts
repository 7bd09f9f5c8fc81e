import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import type { DaemonContext } from "../../src/daemon/context.js";
import { type CommandRunner, SandboxFirewall } from "../../src/daemon/network/sandbox-firewall.js";
import { bindDiscoveredAddress } from "../../src/daemon/services/sandbox/network-binding.js";
import { SandboxNetworking } from "../../src/daemon/services/sandbox-network.js";
import type { Sandbox } from "../../src/daemon/store/sandboxes.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

const log = pino({ level: "silent" });
const EMPTY = JSON.stringify({ nftables: [] });

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
    const net = new SandboxNetworking("auto", nft.firewall, log);
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
    const net = new SandboxNetworking("auto", nft.firewall, log);
    assert.equal((await net.init()).enabled, true);
    await net.beforeStart(1000);
    await net.bind(1000, "BC:24:11:00:00:01", "10.77.4.2", "nat");
    await net.release(1000, "10.77.4.2");
    const scripts = nft.calls.filter((c) => c.input !== undefined).map((c) => c.input ?? "");
    assert.equal(scripts.length, 3);
    assert.match(scripts[0] ?? "", /fwpr1000p0/);
    assert.match(scripts[1] ?? "", /10\.77\.4\.2/);
    assert.match(scripts[1] ?? "", /bc:24:11:00:00:01/);
    assert.match(scripts[2] ?? "", /delete element/);
  });

  test("auto: a failing nft change is logged, not the sandbox's failure", async () => {
    const net = new SandboxNetworking("auto", fakeNft({ loaded: true, applyFails: true }).firewall, log);
    await net.init();
    await net.beforeStart(1000);
  });

  test("on: the daemon refuses to start without the ruleset, and a failing bind fails the sandbox", async () => {
    await assert.rejects(
      new SandboxNetworking("on", fakeNft({ loaded: false }).firewall, log).init(),
      (e: AgentlabError) => {
        assert.equal(e.code, "CONFIG_INVALID");
        assert.match(e.hint, /scripts\/net\/apply\.sh --apply/);
        return true;
      },
    );
    const net = new SandboxNetworking("on", fakeNft({ loaded: true, applyFails: true }).firewall, log);
    await net.init();
    await assert.rejects(net.beforeStart(1000), /nftables register port failed/);
  });

  test("off: never touches nftables", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("off", nft.firewall, log);
    assert.equal((await net.init()).enabled, false);
    await net.beforeStart(1000);
    assert.equal(nft.calls.length, 0);
  });
});

test("resync makes the sets exactly the live sandboxes: bound ones with MAC and address, others registered", async () => {
  const nft = fakeNft({ loaded: true });
  const net = new SandboxNetworking("auto", nft.firewall, log);
  await net.init();
  await net.resync([
    { vmid: 1000, ip: "10.77.4.2", mac: "bc:24:11:00:00:01", mode: "nat" },
    { vmid: 1001, ip: null, mac: undefined, mode: "nat" },
  ]);
  const script = nft.calls.find((c) => c.input !== undefined)?.input ?? "";
  assert.match(script, /flush set/);
  assert.match(script, /fwpr1000p0/);
  assert.match(script, /10\.77\.4\.2/);
  assert.match(script, /fwpr1001p0/);
});

describe("an address the reconciler finds after provisioning", () => {
  test("is bound into the anti-spoofing sets with the VM's MAC and the profile's egress mode", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log);
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
    const bound = nft.calls.filter((c) => c.input !== undefined).at(-1)?.input ?? "";
    assert.match(bound, /10\.77\.4\.14/);
    assert.match(bound, /bc:24:11:aa:bb:cc/);
  });

  test("a VM whose config cannot be read is logged, not thrown: the next start resyncs", async () => {
    const nft = fakeNft({ loaded: true });
    const net = new SandboxNetworking("auto", nft.firewall, log);
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
});
