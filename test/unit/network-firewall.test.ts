import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { bridgePortCandidates, bridgePortFinder } from "../../src/daemon/network/ports.js";
import {
  bindScript,
  type CommandRunner,
  DEFAULT_EGRESS,
  egressPolicyForMode,
  emptyState,
  type FirewallState,
  normalizeDestination,
  normalizeMac,
  parseFirewallState,
  registerPortScript,
  releaseScript,
  SandboxFirewall,
  sandboxPortName,
  syncScript,
} from "../../src/daemon/network/sandbox-firewall.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const SB = { port: "tap100i0", mac: "bc:24:11:00:00:0a", ip: "10.77.0.10" };
const L2 = "bridge agentlab_l2";
const INET = "inet agentlab";

/** `nft -j list table` output as nft 1.0.6 prints it (rules left out), for the parser. */
const L2_JSON = JSON.stringify({
  nftables: [
    { metainfo: { version: "1.0.6", release_name: "Lester Gooch #5", json_schema_version: 1 } },
    {
      set: {
        family: "bridge",
        name: "sandbox_ports",
        table: "agentlab_l2",
        type: "ifname",
        handle: 1,
        elem: ["tap100i0", "tap101i0"],
      },
    },
    {
      set: {
        family: "bridge",
        name: "bound_ports",
        table: "agentlab_l2",
        type: "ifname",
        handle: 2,
        elem: ["tap100i0"],
      },
    },
    {
      set: {
        family: "bridge",
        name: "port_macs",
        table: "agentlab_l2",
        type: ["ifname", "ether_addr"],
        handle: 3,
        elem: [{ concat: ["tap100i0", "bc:24:11:00:00:0a"] }],
      },
    },
    {
      set: {
        family: "bridge",
        name: "tap_bindings",
        table: "agentlab_l2",
        type: ["ifname", "ether_addr", "ipv4_addr"],
        handle: 4,
        elem: [{ concat: ["tap100i0", "bc:24:11:00:00:0a", "10.77.0.10"] }],
      },
    },
    {
      set: {
        family: "bridge",
        name: "bound_ips",
        table: "agentlab_l2",
        type: "ipv4_addr",
        handle: 5,
        elem: ["10.77.0.10"],
      },
    },
    { chain: { family: "bridge", table: "agentlab_l2", name: "antispoof", handle: 9 } },
  ],
});
const INET_JSON = JSON.stringify({
  nftables: [
    { metainfo: { version: "1.0.6", release_name: "Lester Gooch #5", json_schema_version: 1 } },
    {
      set: {
        family: "inet",
        name: "allow_private",
        table: "agentlab",
        type: "ipv4_addr",
        handle: 1,
        elem: ["10.77.0.10"],
      },
    },
    { set: { family: "inet", name: "egress_blocked", table: "agentlab", type: "ipv4_addr", handle: 2 } },
    {
      set: {
        family: "inet",
        name: "egress_allowlist",
        table: "agentlab",
        type: "ipv4_addr",
        handle: 3,
        elem: ["10.77.0.10"],
      },
    },
    {
      set: {
        family: "inet",
        name: "allowlist_dest",
        table: "agentlab",
        type: ["ipv4_addr", "ipv4_addr"],
        handle: 4,
        flags: ["interval"],
        elem: [
          { concat: ["10.77.0.10", { prefix: { addr: "203.0.113.0", len: 24 } }] },
          { elem: { val: { concat: ["10.77.0.10", "198.51.100.7"] }, comment: "x" } },
        ],
      },
    },
    // Another table's set of the same name is not ours.
    {
      set: {
        family: "inet",
        name: "allow_private",
        table: "other",
        type: "ipv4_addr",
        handle: 1,
        elem: ["1.1.1.1"],
      },
    },
  ],
});

function lines(script: string): string[] {
  return script.split("\n").filter((line) => line !== "");
}

describe("network: per-sandbox firewall scripts", () => {
  it("parses the set members from nft -j output", () => {
    assert.deepEqual(parseFirewallState(INET_JSON, L2_JSON), {
      sandboxPorts: ["tap100i0", "tap101i0"],
      boundPorts: ["tap100i0"],
      portMacs: [{ port: "tap100i0", mac: "bc:24:11:00:00:0a" }],
      bindings: [SB],
      boundIps: ["10.77.0.10"],
      allowPrivate: ["10.77.0.10"],
      egressBlocked: [],
      egressAllowlist: ["10.77.0.10"],
      allowlistDest: [
        { ip: "10.77.0.10", dest: "203.0.113.0/24" },
        { ip: "10.77.0.10", dest: "198.51.100.7/32" },
      ],
    } satisfies FirewallState);
    assert.throws(() => parseFirewallState("not json", L2_JSON), /not JSON/);
  });

  it("registers a port before the VM starts", () => {
    assert.equal(registerPortScript("tap100i0"), `add element ${L2} sandbox_ports { "tap100i0" }\n`);
  });

  it("binds a new sandbox: port, MAC and address in the L2 sets; default policy removes it from every policy set", () => {
    assert.deepEqual(lines(bindScript({ ...SB, mac: "BC-24-11-00-00-0A" }, DEFAULT_EGRESS)), [
      `add element ${L2} sandbox_ports { "tap100i0" }`,
      `add element ${L2} port_macs { "tap100i0" . bc:24:11:00:00:0a }`,
      `add element ${L2} tap_bindings { "tap100i0" . bc:24:11:00:00:0a . 10.77.0.10 }`,
      `add element ${L2} bound_ips { 10.77.0.10 }`,
      `add element ${L2} bound_ports { "tap100i0" }`,
      `add element ${INET} allow_private { 10.77.0.10 }`,
      `delete element ${INET} allow_private { 10.77.0.10 }`,
      `add element ${INET} egress_blocked { 10.77.0.10 }`,
      `delete element ${INET} egress_blocked { 10.77.0.10 }`,
      `add element ${INET} egress_allowlist { 10.77.0.10 }`,
      `delete element ${INET} egress_allowlist { 10.77.0.10 }`,
    ]);
  });

  it("binds with a policy: allow_private, no egress, an allowlist (normalised)", () => {
    const privateOk = lines(bindScript(SB, { egress: "internet", allowPrivate: true, allowlist: [] }));
    assert.ok(privateOk.includes(`add element ${INET} allow_private { 10.77.0.10 }`));
    assert.ok(!privateOk.includes(`delete element ${INET} allow_private { 10.77.0.10 }`));

    const none = lines(bindScript(SB, egressPolicyForMode("off")));
    assert.ok(none.includes(`add element ${INET} egress_blocked { 10.77.0.10 }`));
    assert.ok(!none.includes(`delete element ${INET} egress_blocked { 10.77.0.10 }`));

    const allowlist = lines(
      bindScript(
        SB,
        egressPolicyForMode("allowlist", {
          allowlist: ["203.0.113.9/24", "198.51.100.7", "198.51.100.7/32"],
        }),
      ),
    );
    assert.ok(allowlist.includes(`add element ${INET} egress_allowlist { 10.77.0.10 }`));
    assert.ok(
      allowlist.includes(
        `add element ${INET} allowlist_dest { 10.77.0.10 . 198.51.100.7/32, 10.77.0.10 . 203.0.113.0/24 }`,
      ),
    );
  });

  it("rebinding removes what differs: the port's old address (and its policy), an address's old port", () => {
    const current: FirewallState = {
      ...emptyState(),
      sandboxPorts: ["tap100i0", "tap200i0"],
      boundPorts: ["tap100i0", "tap200i0"],
      portMacs: [
        { port: "tap100i0", mac: "bc:24:11:00:00:0a" },
        { port: "tap200i0", mac: "bc:24:11:00:00:20" },
      ],
      bindings: [
        { port: "tap100i0", mac: "bc:24:11:00:00:0a", ip: "10.77.0.5" },
        { port: "tap200i0", mac: "bc:24:11:00:00:20", ip: "10.77.0.10" },
      ],
      boundIps: ["10.77.0.5", "10.77.0.10"],
      allowPrivate: ["10.77.0.5"],
      egressAllowlist: ["10.77.0.10"],
      allowlistDest: [
        { ip: "10.77.0.5", dest: "1.1.1.1/32" },
        { ip: "10.77.0.10", dest: "8.8.8.8/32" },
      ],
    };
    const script = lines(bindScript(SB, DEFAULT_EGRESS, current));
    const removed = (set: string, element: string, table = L2) =>
      script.includes(`delete element ${table} ${set} { ${element} }`);
    // tap100i0 had 10.77.0.5; 10.77.0.10 was bound to tap200i0 (a destroyed VM's stale binding).
    assert.ok(
      removed(
        "tap_bindings",
        '"tap100i0" . bc:24:11:00:00:0a . 10.77.0.5, "tap200i0" . bc:24:11:00:00:20 . 10.77.0.10',
      ),
    );
    assert.ok(removed("port_macs", '"tap200i0" . bc:24:11:00:00:20'));
    assert.ok(removed("bound_ports", '"tap200i0"'));
    assert.ok(removed("bound_ips", "10.77.0.5"));
    assert.ok(removed("allow_private", "10.77.0.5", INET));
    assert.ok(removed("allowlist_dest", "10.77.0.5 . 1.1.1.1/32, 10.77.0.10 . 8.8.8.8/32", INET));
    assert.ok(!removed("port_macs", '"tap100i0" . bc:24:11:00:00:0a'), "the unchanged MAC stays");
    assert.ok(
      script.includes(`add element ${L2} tap_bindings { "tap100i0" . bc:24:11:00:00:0a . 10.77.0.10 }`),
    );
    // Every delete is preceded by the same add, so removing what is already gone is not an error.
    script.forEach((line, index) => {
      if (line.startsWith("delete ")) assert.equal(script[index - 1], line.replace(/^delete /, "add "));
    });
  });

  it("release removes the port and the address everywhere, including what the kernel holds", () => {
    const current = parseFirewallState(INET_JSON, L2_JSON);
    const script = lines(releaseScript({ port: "tap100i0", ip: "10.77.0.10" }, current));
    const deletes = script.filter((line) => line.startsWith("delete "));
    assert.deepEqual(deletes, [
      `delete element ${L2} tap_bindings { "tap100i0" . bc:24:11:00:00:0a . 10.77.0.10 }`,
      `delete element ${L2} port_macs { "tap100i0" . bc:24:11:00:00:0a }`,
      `delete element ${L2} bound_ports { "tap100i0" }`,
      `delete element ${L2} sandbox_ports { "tap100i0" }`,
      `delete element ${L2} bound_ips { 10.77.0.10 }`,
      `delete element ${INET} allow_private { 10.77.0.10 }`,
      `delete element ${INET} egress_blocked { 10.77.0.10 }`,
      `delete element ${INET} egress_allowlist { 10.77.0.10 }`,
      `delete element ${INET} allowlist_dest { 10.77.0.10 . 203.0.113.0/24, 10.77.0.10 . 198.51.100.7/32 }`,
    ]);
    // Without the kernel's view, what the daemon knows is still removed (idempotently).
    const known = lines(releaseScript(SB));
    assert.ok(
      known.includes(`delete element ${L2} tap_bindings { "tap100i0" . bc:24:11:00:00:0a . 10.77.0.10 }`),
    );
    assert.throws(() => releaseScript({}), /needs a port or an address/);
  });

  it("sync flushes every set and adds exactly the given sandboxes", () => {
    const script = lines(
      syncScript([
        {
          port: "tap100i0",
          binding: SB,
          policy: egressPolicyForMode("allowlist", { allowlist: ["1.2.3.4"] }),
        },
        { port: "tap101i0" },
      ]),
    );
    assert.deepEqual(
      script.filter((line) => line.startsWith("flush ")),
      [
        `flush set ${L2} sandbox_ports`,
        `flush set ${L2} bound_ports`,
        `flush set ${L2} port_macs`,
        `flush set ${L2} tap_bindings`,
        `flush set ${L2} bound_ips`,
        `flush set ${INET} allow_private`,
        `flush set ${INET} egress_blocked`,
        `flush set ${INET} egress_allowlist`,
        `flush set ${INET} allowlist_dest`,
      ],
    );
    assert.ok(script.includes(`add element ${L2} sandbox_ports { "tap101i0" }`));
    assert.ok(script.includes(`add element ${INET} allowlist_dest { 10.77.0.10 . 1.2.3.4/32 }`));
    assert.ok(!script.some((line) => line.startsWith("delete ")));
    assert.throws(
      () =>
        syncScript([
          { port: "tap100i0", binding: SB },
          { port: "tap101i0", binding: { ...SB, port: "tap101i0", mac: "bc:24:11:00:00:0b" } },
        ]),
      /10\.77\.0\.10 is bound to both tap100i0 and tap101i0/,
    );
    // An empty list empties the sets.
    assert.equal(lines(syncScript([])).length, 9);
  });

  it("refuses values that are not what they claim (no nft syntax can be smuggled in)", () => {
    const bad: [() => unknown, RegExp][] = [
      [() => registerPortScript('tap1" }; flush ruleset; {"'), /is not an interface name/],
      [
        () => bindScript({ ...SB, ip: "10.77.0.10 }; flush ruleset" }, DEFAULT_EGRESS),
        /is not an IPv4 address/,
      ],
      [
        () => bindScript({ ...SB, ip: "10.78.0.10" }, DEFAULT_EGRESS, emptyState(), "10.77.0.0/16"),
        /outside/,
      ],
      [() => normalizeMac("bc:24:11:00:00"), /is not a MAC address/],
      [() => normalizeMac("01:00:5e:00:00:01"), /multicast/],
      [() => normalizeDestination("example.com"), /not an IPv4 address or network/],
      [() => bindScript(SB, { egress: "everything" as never, allowPrivate: false, allowlist: [] }), /egress/],
    ];
    for (const [run, message] of bad) {
      assert.throws(run, (error: unknown) => {
        assert.ok(error instanceof AgentlabError);
        assert.equal(error.code, "INVALID_PARAMS");
        assert.match(error.message, message);
        return true;
      });
    }
    assert.equal(normalizeDestination(" 203.0.113.77/24 "), "203.0.113.0/24");
  });

  it("maps profile modes and VM NICs", () => {
    assert.deepEqual(egressPolicyForMode("nat"), { egress: "internet", allowPrivate: false, allowlist: [] });
    assert.deepEqual(egressPolicyForMode("off"), { egress: "none", allowPrivate: false, allowlist: [] });
    assert.deepEqual(egressPolicyForMode("allowlist", { allowPrivate: true }), {
      egress: "allowlist",
      allowPrivate: true,
      allowlist: [],
    });
    assert.equal(sandboxPortName(1042), "tap1042i0");
    assert.equal(sandboxPortName(1042, 1, true), "fwpr1042p1");
  });
});

describe("network: SandboxFirewall with an injected runner", () => {
  function recorder(results: Record<string, { exitCode: number; stdout?: string; stderr?: string }> = {}) {
    const calls: { file: string; args: string[]; input?: string }[] = [];
    const run: CommandRunner = async (file, args, options) => {
      calls.push({
        file,
        args: [...args],
        ...(options?.input === undefined ? {} : { input: options.input }),
      });
      const key = args.join(" ");
      const result =
        results[key] ??
        (key === "-j list table inet agentlab"
          ? { exitCode: 0, stdout: INET_JSON }
          : key === "-j list table bridge agentlab_l2"
            ? { exitCode: 0, stdout: L2_JSON }
            : { exitCode: 0 });
      return { exitCode: result.exitCode, stdout: result.stdout ?? "", stderr: result.stderr ?? "" };
    };
    return { calls, run };
  }

  it("bind reads the sets, then applies one transaction on stdin", async () => {
    const { calls, run } = recorder();
    const fw = new SandboxFirewall({ run, nft: "/usr/sbin/nft", subnet: "10.77.0.0/16" });
    await fw.bind(
      { port: "tap101i0", mac: "bc:24:11:00:00:0b", ip: "10.77.0.11" },
      egressPolicyForMode("off"),
    );
    assert.deepEqual(
      calls.map((call) => [call.file, call.args.join(" ")]),
      [
        ["/usr/sbin/nft", "-j list table inet agentlab"],
        ["/usr/sbin/nft", "-j list table bridge agentlab_l2"],
        ["/usr/sbin/nft", "-f -"],
      ],
    );
    assert.equal(
      calls[2]!.input,
      bindScript(
        { port: "tap101i0", mac: "bc:24:11:00:00:0b", ip: "10.77.0.11" },
        egressPolicyForMode("off"),
        parseFirewallState(INET_JSON, L2_JSON),
      ),
    );
  });

  it("registerPort and sync need no read; release reads first", async () => {
    const { calls, run } = recorder();
    const fw = new SandboxFirewall({ run });
    await fw.registerPort("tap7i0");
    await fw.sync([]);
    await fw.release({ ip: "10.77.0.10" });
    assert.deepEqual(
      calls.map((call) => call.args.join(" ")),
      ["-f -", "-f -", "-j list table inet agentlab", "-j list table bridge agentlab_l2", "-f -"],
    );
    assert.equal(calls[0]!.file, "nft");
  });

  it("a missing ruleset or nft error becomes an AgentlabError with what to do next", async () => {
    const { run } = recorder({
      "-f -": {
        exitCode: 1,
        stderr:
          '/dev/stdin:1:20-30: Error: No such file or directory\nadd element bridge agentlab_l2 sandbox_ports { "tap7i0" }',
      },
    });
    const fw = new SandboxFirewall({ run });
    await assert.rejects(fw.registerPort("tap7i0"), (error: unknown) => {
      assert.ok(error instanceof AgentlabError);
      assert.equal(error.code, "INTERNAL");
      assert.match(error.message, /^nftables register port failed: the agentlab ruleset is not loaded/);
      assert.match(error.hint, /scripts\/net\/apply\.sh --apply/);
      assert.match(String(error.details["script"]), /sandbox_ports/);
      return true;
    });
    const denied = new SandboxFirewall({
      run: recorder({
        "-j list table inet agentlab": { exitCode: 1, stderr: "Error: Operation not permitted" },
      }).run,
    });
    await assert.rejects(denied.state(), (error: unknown) => {
      assert.ok(error instanceof AgentlabError);
      assert.match(error.hint, /root \(CAP_NET_ADMIN\)/);
      return true;
    });
  });

  it("runs one change at a time, in call order, even when a change fails", async () => {
    const order: string[] = [];
    let first = true;
    const run: CommandRunner = async (_file, args, options) => {
      const label = args[0] === "-f" ? (options?.input?.match(/"(tap\d+i0)"/)?.[1] ?? "?") : "read";
      order.push(`start ${label}`);
      if (first) {
        first = false;
        await sleep(30);
      }
      order.push(`end ${label}`);
      return label === "tap2i0"
        ? { exitCode: 1, stdout: "", stderr: "boom" }
        : { exitCode: 0, stdout: "", stderr: "" };
    };
    const fw = new SandboxFirewall({ run });
    const results = await Promise.allSettled([
      fw.registerPort("tap1i0"),
      fw.registerPort("tap2i0"),
      fw.registerPort("tap3i0"),
    ]);
    assert.deepEqual(
      results.map((result) => result.status),
      ["fulfilled", "rejected", "fulfilled"],
    );
    assert.deepEqual(order, [
      "start tap1i0",
      "end tap1i0",
      "start tap2i0",
      "end tap2i0",
      "start tap3i0",
      "end tap3i0",
    ]);
  });
});

describe("network: a VM NIC's port on the bridge", () => {
  it("predicts fwpr<vmid>p<n> with the Proxmox firewall on, tap<vmid>i<n> without", () => {
    assert.deepEqual(bridgePortCandidates(1042), ["fwpr1042p0", "tap1042i0"]);
    assert.deepEqual(bridgePortCandidates(1042, 1, false), ["tap1042i1"]);
  });

  /** `ip -j link show dev <name>` answered from a table of links and their masters. */
  function fakeIp(links: Record<string, string | null>): { run: CommandRunner; asked: string[] } {
    const asked: string[] = [];
    const run: CommandRunner = async (file, args) => {
      assert.equal(file, "ip");
      assert.deepEqual(args.slice(0, 4), ["-j", "link", "show", "dev"]);
      const name = args[4]!;
      asked.push(name);
      if (!(name in links)) return { exitCode: 1, stdout: "", stderr: `Device "${name}" does not exist.\n` };
      const master = links[name];
      return {
        exitCode: 0,
        stdout: JSON.stringify([{ ifname: name, ...(master ? { master } : {}) }]),
        stderr: "",
      };
    };
    return { run, asked };
  }

  it("finds fwpr<vmid>p0 behind a firewall bridge (iptables pve-firewall, firewall=1)", async () => {
    const ip = fakeIp({ tap1043i0: "fwbr1043i0", fwln1043i0: "fwbr1043i0", fwpr1043p0: "vmbr1" });
    assert.deepEqual(await bridgePortFinder(ip.run)(1043), {
      found: { port: "fwpr1043p0", bridge: "vmbr1" },
    });
  });

  it("finds tap<vmid>i0 when there is no firewall bridge (nftables proxmox-firewall, or firewall=0)", async () => {
    const ip = fakeIp({ tap1042i0: "vmbr1" });
    assert.deepEqual(await bridgePortFinder(ip.run)(1042), { found: { port: "tap1042i0", bridge: "vmbr1" } });
    assert.deepEqual(ip.asked, ["fwpr1042p0", "tap1042i0"]);
    // The VLAN bridge Proxmox puts a tagged NIC on when the bridge is not VLAN aware is a bridge too.
    const tagged = fakeIp({ tap1044i0: "vmbr1v5" });
    assert.deepEqual(await bridgePortFinder(tagged.run)(1044), {
      found: { port: "tap1044i0", bridge: "vmbr1v5" },
    });
  });

  it("says why there is no port: VM not running, tap stuck in its firewall bridge, tap in no bridge", async () => {
    assert.deepEqual(await bridgePortFinder(fakeIp({}).run)(1045), {
      reason: "fwpr1045p0 does not exist, tap1045i0 does not exist",
    });
    assert.deepEqual(await bridgePortFinder(fakeIp({ tap1046i0: "fwbr1046i0" }).run)(1046), {
      reason: "fwpr1046p0 does not exist, tap1046i0 is in its firewall bridge fwbr1046i0",
    });
    assert.deepEqual(await bridgePortFinder(fakeIp({ tap1047i0: null, fwpr1047p0: null }).run)(1047), {
      reason: "fwpr1047p0 exists but is in no bridge, tap1047i0 exists but is in no bridge",
    });
  });

  it("an ip failure other than a missing device is an error, not 'no port'", async () => {
    const run: CommandRunner = async () => ({
      exitCode: 255,
      stdout: "",
      stderr: "Cannot open netlink socket",
    });
    await assert.rejects(bridgePortFinder(run)(1048), (e: AgentlabError) => {
      assert.match(e.message, /ip link show dev fwpr1048p0 failed \(exit 255\): Cannot open netlink socket/);
      return true;
    });
  });
});
