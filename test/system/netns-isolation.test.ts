/**
 * The real ruleset, loaded with real nft into a network namespace that plays the Proxmox host, proves
 * sandbox isolation end to end:
 *
 *   sb1 (10.77.0.10) --tap100i0--+
 *                                 vmbr1 10.77.0.1/16 [host ns: agentlab ruleset] wan0 192.168.50.1
 *   sb2 (10.77.0.11) --tap101i0--+                                                   |
 *   sb3 (10.77.0.12) --tap102i0-[fwbr102i0]-fwln102i0=fwpr102p0--+                   |
 *   sb4 (10.77.0.13) --tap103i0--+                                                   |
 *                                           lan ns: 192.168.50.2 (LAN host and router)
 *                                                   203.0.113.1
 *                                                        |
 *                  inet ns: 203.0.113.2, 198.51.100.2, 100.100.1.2 (a tailnet/CGNAT address)
 *
 * sb3 and sb4 are the two ways Proxmox plugs a NIC into the bridge (src/daemon/network/ports.ts cites
 * the sources): behind a firewall bridge, whose veth fwpr<vmid>p0 is the port (iptables pve-firewall
 * with firewall=1), and directly by its tap (nftables proxmox-firewall, or firewall=0). The daemon's
 * SandboxNetworking binds them, looking the port up in the host namespace as it does on a real host.
 *
 * All addresses exist only inside these namespaces, which the test creates and deletes. Listeners are
 * netprobe.js processes; blocked connections are recognised by their timeout (the ruleset drops).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pino } from "pino";
import { DEFAULT_NFT_PARAMS, renderRuleset } from "../../src/daemon/network/nft.js";
import { bridgePortFinder } from "../../src/daemon/network/ports.js";
import { DEFAULT_EGRESS, execaRunner, SandboxFirewall } from "../../src/daemon/network/sandbox-firewall.js";
import { BridgePortMissingError, SandboxNetworking } from "../../src/daemon/services/sandbox-network.js";
import type { AgentlabError } from "../../src/protocol/errors.js";
import { REPO_ROOT } from "../helpers/paths.js";
import { NetnsLab, netnsSkipReason, removeStaleNamespaces } from "./netns.js";

const skip = netnsSkipReason();

const BRIDGE_ADDR = "10.77.0.1";
const BRIDGE_MAC = "02:00:00:77:00:01";
const SB1 = { port: "tap100i0", mac: "bc:24:11:00:00:0a", ip: "10.77.0.10" };
const SB2 = { port: "tap101i0", mac: "bc:24:11:00:00:0b", ip: "10.77.0.11" };
/** Behind a Proxmox firewall bridge: the port on vmbr1 is the veth fwpr102p0, not the tap. */
const SB3 = { vmid: 102, port: "fwpr102p0", tap: "tap102i0", mac: "bc:24:11:00:00:0c", ip: "10.77.0.12" };
/** Plugged in by its tap, as with the nftables proxmox-firewall or firewall=0. */
const SB4 = { vmid: 103, port: "tap103i0", tap: "tap103i0", mac: "bc:24:11:00:00:0d", ip: "10.77.0.13" };
/** A subnet address no sandbox has: an unbound port may use it, a bound one may not. */
const UNUSED_IP = "10.77.0.99";
const HOST_WAN = "192.168.50.1";
const LAN_HOST = "192.168.50.2";
const INET_HOST = "203.0.113.2";
const INET_OTHER = "198.51.100.2";
const TAILNET_HOST = "100.100.1.2";
const WEB = 8080;
const UDP_SINK = 9999;
const APPLY = join(REPO_ROOT, "scripts/net/apply.sh");
const SMOKE = join(REPO_ROOT, "scripts/net/smoke_test.sh");
const AGENT_NAT = join(REPO_ROOT, "scripts/net/agent_nat.nft");

describe("netns isolation: the rendered ruleset in real namespaces", { skip, timeout: 240_000 }, () => {
  const lab = new NetnsLab();
  const ns = { host: "", sb1: "", sb2: "", sb3: "", sb4: "", lan: "", inet: "" };
  let fw: SandboxFirewall;
  let root = "";
  let hostSink: { lines: string[] };
  let inetSink: { lines: string[] };
  let sb2Sink: { lines: string[] };
  let token = 0;

  before(async () => {
    await removeStaleNamespaces();
    root = mkdtempSync(join(tmpdir(), "agentlab-netns-"));
    for (const role of ["host", "sb1", "sb2", "sb3", "sb4", "lan", "inet"] as const)
      ns[role] = await lab.addNamespace(role);
    const { host, sb1, sb2, sb3, sb4, lan, inet } = ns;

    // Host: the bridge, two sandbox ports, a WAN link to the LAN router.
    await lab.must(host, "ip", [
      "link",
      "add",
      "vmbr1",
      "address",
      BRIDGE_MAC,
      "type",
      "bridge",
      "stp_state",
      "0",
    ]);
    await lab.must(host, "ip", ["addr", "add", `${BRIDGE_ADDR}/16`, "dev", "vmbr1"]);
    await lab.must(host, "ip", ["link", "set", "vmbr1", "up"]);
    for (const [sb, spec] of [
      [sb1, SB1],
      [sb2, SB2],
    ] as const) {
      await lab.must(host, "ip", [
        "link",
        "add",
        spec.port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        sb,
      ]);
      await lab.must(host, "ip", ["link", "set", spec.port, "master", "vmbr1", "up"]);
      await lab.must(sb, "ip", ["link", "set", "eth0", "address", spec.mac]);
      await lab.must(sb, "ip", ["addr", "add", `${spec.ip}/16`, "dev", "eth0"]);
      await lab.must(sb, "ip", ["link", "set", "eth0", "up"]);
      await lab.must(sb, "ip", ["route", "add", "default", "via", BRIDGE_ADDR]);
    }
    // sb3 as Proxmox plugs a NIC with a firewall bridge (pve-common src/PVE/Network.pm:443-463): the tap
    // in fwbr102i0, linked to vmbr1 by the veth pair fwln102i0 / fwpr102p0. sb4 by its tap alone.
    await lab.must(host, "ip", ["link", "add", "fwbr102i0", "type", "bridge", "stp_state", "0"]);
    await lab.must(host, "ip", ["link", "set", "fwbr102i0", "up"]);
    // Linux answers ARP for any of the host's addresses on any interface (arp_ignore=0): the firewall
    // bridge, which has no address, would answer for 10.77.0.1 and blur the ARP oracles below.
    await lab.sysctl(host, "net.ipv4.conf.fwbr102i0.arp_ignore", "1");
    await lab.must(host, "ip", ["link", "add", "fwln102i0", "type", "veth", "peer", "name", SB3.port]);
    await lab.must(host, "ip", ["link", "set", "fwln102i0", "master", "fwbr102i0", "up"]);
    await lab.must(host, "ip", ["link", "set", SB3.port, "master", "vmbr1", "up"]);
    for (const [sb, spec, bridge] of [
      [sb3, SB3, "fwbr102i0"],
      [sb4, SB4, "vmbr1"],
    ] as const) {
      await lab.must(host, "ip", [
        "link",
        "add",
        spec.tap,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        sb,
      ]);
      await lab.must(host, "ip", ["link", "set", spec.tap, "master", bridge, "up"]);
      await lab.must(sb, "ip", ["link", "set", "eth0", "address", spec.mac]);
      await lab.must(sb, "ip", ["addr", "add", `${spec.ip}/16`, "dev", "eth0"]);
      await lab.must(sb, "ip", ["link", "set", "eth0", "up"]);
      await lab.must(sb, "ip", ["route", "add", "default", "via", BRIDGE_ADDR]);
    }
    // VM 105 has a tap stuck in its firewall bridge and no fwpr: a broken plug, with no port on vmbr1.
    await lab.must(host, "ip", ["link", "add", "fwbr105i0", "type", "bridge"]);
    await lab.must(host, "ip", ["tuntap", "add", "dev", "tap105i0", "mode", "tap"]);
    await lab.must(host, "ip", ["link", "set", "tap105i0", "master", "fwbr105i0"]);
    await lab.must(host, "ip", ["link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", lan]);
    await lab.must(host, "ip", ["addr", "add", `${HOST_WAN}/24`, "dev", "wan0"]);
    await lab.must(host, "ip", ["link", "set", "wan0", "up"]);
    await lab.must(host, "ip", ["route", "add", "default", "via", LAN_HOST]);
    await lab.sysctl(host, "net.ipv4.ip_forward", "1");

    // LAN: a private host that is also the router to the "Internet"; it routes the agent subnet back to
    // the host, so without the ruleset everything is reachable (the control checks prove it).
    await lab.must(lan, "ip", ["addr", "add", `${LAN_HOST}/24`, "dev", "eth0"]);
    await lab.must(lan, "ip", ["link", "set", "eth0", "up"]);
    await lab.must(lan, "ip", ["link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", inet]);
    await lab.must(lan, "ip", ["addr", "add", "203.0.113.1/24", "dev", "up0"]);
    await lab.must(lan, "ip", ["link", "set", "up0", "up"]);
    await lab.must(lan, "ip", ["route", "add", "10.77.0.0/16", "via", HOST_WAN]);
    await lab.must(lan, "ip", ["route", "add", "198.51.100.0/24", "via", INET_HOST]);
    await lab.must(lan, "ip", ["route", "add", "100.64.0.0/10", "via", INET_HOST]);
    await lab.sysctl(lan, "net.ipv4.ip_forward", "1");

    // Internet: public (documentation) addresses and one in the tailnet/CGNAT range.
    await lab.must(inet, "ip", ["addr", "add", `${INET_HOST}/24`, "dev", "eth0"]);
    await lab.must(inet, "ip", ["link", "set", "eth0", "up"]);
    await lab.must(inet, "ip", ["addr", "add", `${INET_OTHER}/32`, "dev", "lo"]);
    await lab.must(inet, "ip", ["addr", "add", `${TAILNET_HOST}/32`, "dev", "lo"]);
    await lab.must(inet, "ip", ["route", "add", "default", "via", "203.0.113.1"]);

    // Listeners: the host's guest ports and management ports, a web port everywhere else.
    hostSink = await lab.listen(host, { tcp: [8844, 8846, 8006, 22, 53], udp: [53] });
    await lab.listen(lan, { tcp: [WEB] });
    inetSink = await lab.listen(inet, { tcp: [WEB], udp: [UDP_SINK] });
    await lab.listen(sb1, { tcp: [WEB] });
    sb2Sink = await lab.listen(sb2, { tcp: [WEB], udp: [UDP_SINK] });

    fw = new SandboxFirewall({
      run: execaRunner({ prefix: ["ip", "netns", "exec", host] }),
      subnet: "10.77.0.0/16",
    });
  });

  after(async () => {
    const problems = await lab.destroy();
    if (root) rmSync(root, { recursive: true, force: true });
    assert.deepEqual(problems, [], "teardown left namespaces behind");
  });

  /** The sandbox a spoofing probe is sent from. */
  type Sender = { ns: "sb1" | "sb3" | "sb4"; ip: string };
  const FROM_SB1: Sender = { ns: "sb1", ip: SB1.ip };

  /** Sends one datagram from a sandbox (sb1 unless told), from `from`, and reports whether the sink saw it. */
  async function datagramArrives(
    sink: { lines: string[] },
    to: string,
    port: number,
    from: string,
    waitMs: number,
    sender: Sender = FROM_SB1,
  ): Promise<boolean> {
    const payload = `tok${process.pid}x${++token}`;
    assert.equal(await lab.udpSend(ns[sender.ns], to, port, payload, from), "sent");
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      if (sink.lines.some((line) => line.endsWith(` ${payload}`))) return true;
      await sleep(50);
    }
    return false;
  }

  /**
   * sb1 (or `sender`) really sends from an address that is not its own: it is added to its interface for
   * a moment, and the next hops are static neighbours, so no ARP is involved and only the IPv4 rules
   * decide. Without the ruleset these datagrams arrive (the hosts on the way do not filter them).
   */
  async function spoofArrives(
    sink: { lines: string[] },
    to: string,
    port: number,
    spoofed: string,
    sender: Sender = FROM_SB1,
  ) {
    const sb = ns[sender.ns];
    const statics: [string, string][] = [
      [BRIDGE_ADDR, BRIDGE_MAC],
      [SB2.ip, SB2.mac],
    ];
    const neighbours = statics.filter(([address]) => address !== spoofed);
    await lab.must(sb, "ip", ["addr", "add", `${spoofed}/32`, "dev", "eth0", "noprefixroute"]);
    try {
      for (const [address, mac] of neighbours) {
        await lab.must(sb, "ip", [
          "neigh",
          "replace",
          address,
          "lladdr",
          mac,
          "dev",
          "eth0",
          "nud",
          "permanent",
        ]);
      }
      assert.equal(
        await datagramArrives(sink, to, port, sender.ip, 3000, sender),
        true,
        `control datagram to ${to}`,
      );
      return await datagramArrives(sink, to, port, spoofed, 700, sender);
    } finally {
      await lab.must(sb, "ip", ["addr", "del", `${spoofed}/32`, "dev", "eth0"]);
      await lab.must(sb, "ip", ["neigh", "flush", "dev", "eth0", "nud", "permanent"]);
      await lab.must(sb, "ip", ["route", "replace", "default", "via", BRIDGE_ADDR]);
    }
  }

  async function assertSpoofDropped(
    sink: { lines: string[] },
    to: string,
    port: number,
    spoofed: string,
    sender: Sender = FROM_SB1,
  ) {
    assert.equal(
      await spoofArrives(sink, to, port, spoofed, sender),
      false,
      `a datagram from ${spoofed} (sent by ${sender.ns}) reached ${to}`,
    );
  }

  /** The sandbox, with its own address but another MAC: can it still reach the host's bootstrap port? */
  async function foreignMacConnects(sb: "sb1" | "sb3" | "sb4", ownMac: string): Promise<string> {
    await lab.must(ns[sb], "ip", ["link", "set", "eth0", "address", "bc:24:11:00:00:99"]);
    try {
      await lab.must(ns.host, "ip", ["neigh", "flush", "dev", "vmbr1"]);
      return await lab.connect(ns[sb], BRIDGE_ADDR, 8844);
    } finally {
      await lab.must(ns[sb], "ip", ["link", "set", "eth0", "address", ownMac]);
      await lab.must(ns.host, "ip", ["neigh", "flush", "dev", "vmbr1"]);
      await lab.must(ns[sb], "ip", ["neigh", "flush", "dev", "eth0"]);
      await lab.must(ns[sb], "ip", ["route", "replace", "default", "via", BRIDGE_ADDR]);
    }
  }

  /** The daemon's side, as agentlabd builds it: nft and `ip link` both run in the host namespace. */
  function daemonNetworking(): SandboxNetworking {
    const run = execaRunner({ prefix: ["ip", "netns", "exec", ns.host] });
    return new SandboxNetworking(
      "auto",
      new SandboxFirewall({ run, subnet: "10.77.0.0/16" }),
      pino({ level: "silent" }),
      {
        findPort: bridgePortFinder(run),
        attempts: 2,
        retryDelayMs: 200,
      },
    );
  }

  async function neighbourMac(where: string, dev: string, address: string): Promise<string | undefined> {
    const out = await lab.must(where, "ip", ["-j", "neigh", "show", "dev", dev, "to", address]);
    const entries = JSON.parse(out || "[]") as { lladdr?: string }[];
    return entries[0]?.lladdr;
  }

  /** sb1 answers ARP for an address that is not its own, the real owner being silent: does `asker` believe it? */
  async function arpClaim(
    claimed: string,
    asker: "host" | "sb2",
  ): Promise<{ replied: boolean; mac?: string }> {
    const askerNs = ns[asker];
    const askerDev = asker === "host" ? "vmbr1" : "eth0";
    const silence = asker === "host" ? [ns.sb2, "eth0"] : [ns.host, "vmbr1"];
    await lab.must(silence[0]!, "ip", ["link", "set", silence[1]!, "arp", "off"]);
    await lab.must(ns.sb1, "ip", ["addr", "add", `${claimed}/32`, "dev", "eth0", "noprefixroute"]);
    try {
      await lab.must(askerNs, "ip", ["neigh", "flush", "dev", askerDev]);
      const replied = await lab.ping(askerNs, claimed);
      const mac = await neighbourMac(askerNs, askerDev, claimed);
      return mac === undefined ? { replied } : { replied, mac };
    } finally {
      await lab.must(ns.sb1, "ip", ["addr", "del", `${claimed}/32`, "dev", "eth0"]);
      await lab.must(silence[0]!, "ip", ["link", "set", silence[1]!, "arp", "on"]);
      await lab.must(askerNs, "ip", ["neigh", "flush", "dev", askerDev]);
      await lab.must(ns.sb1, "ip", ["neigh", "flush", "dev", "eth0"]);
      await lab.must(ns.sb1, "ip", ["route", "replace", "default", "via", BRIDGE_ADDR]);
    }
  }

  async function assertArpClaimDropped(claimed: string, asker: "host" | "sb2") {
    const { replied, mac } = await arpClaim(claimed, asker);
    assert.equal(replied, false, `${asker} got a reply from the impostor claiming ${claimed}`);
    assert.notEqual(mac, SB1.mac, `${asker} learned sb1's MAC for ${claimed}`);
  }

  it("control: without the ruleset the topology routes everything, and the smoke test says FAIL", async () => {
    const [inet, lan, api, ssh, tailnet] = await Promise.all([
      lab.connect(ns.sb1, INET_HOST, WEB),
      lab.connect(ns.sb1, LAN_HOST, WEB),
      lab.connect(ns.sb1, BRIDGE_ADDR, 8006),
      lab.connect(ns.sb1, BRIDGE_ADDR, 22),
      lab.connect(ns.sb1, TAILNET_HOST, WEB),
    ]);
    assert.deepEqual(
      { inet, lan, api, ssh, tailnet },
      {
        inet: "open",
        lan: "open",
        api: "open",
        ssh: "open",
        tailnet: "open",
      },
    );
    // The spoofing oracles work: without the ruleset, spoofed datagrams and ARP claims succeed.
    assert.equal(await spoofArrives(inetSink, INET_HOST, UDP_SINK, SB2.ip), true, "spoofed sb2 address");
    assert.equal(await spoofArrives(sb2Sink, SB2.ip, UDP_SINK, BRIDGE_ADDR), true, "spoofed bridge address");
    assert.equal(await spoofArrives(inetSink, INET_HOST, UDP_SINK, "10.99.0.5"), true, "foreign source");
    assert.deepEqual(await arpClaim(SB2.ip, "host"), { replied: true, mac: SB1.mac });
    assert.deepEqual(await arpClaim(BRIDGE_ADDR, "sb2"), { replied: true, mac: SB1.mac });

    const smoke = await lab.exec(
      ns.host,
      "sh",
      [
        SMOKE,
        "--ip",
        SB1.ip,
        "--exec",
        `ip netns exec ${ns.sb1}`,
        "--egress",
        `${INET_HOST}:${WEB}`,
        "--no-dns",
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(smoke.exitCode, 1, smoke.stdout + smoke.stderr);
    assert.match(smoke.stdout, /^FAIL host-block-8006 +10\.77\.0\.1:8006 reachable: it must be blocked$/m);
    assert.match(smoke.stdout, /^FAIL lan-block +192\.168\.50\.1:22 reachable: it must be blocked$/m);
    assert.match(smoke.stdout, /^FAIL \(\d+ failed, \d+ passed\)$/m);
  });

  it("real nft accepts the checked-in agent_nat.nft (and the bridge-meta variant where the kernel has it)", async (t) => {
    const check = await lab.exec(ns.host, "nft", ["-c", "-f", AGENT_NAT]);
    assert.equal(check.exitCode, 0, check.stderr);
    const meta = await lab.exec(ns.host, "nft", ["-c", "-f", "-"], {
      input: renderRuleset({ ...DEFAULT_NFT_PARAMS, bridgeMeta: true }),
    });
    if (meta.exitCode === 0) {
      t.diagnostic("this kernel has nft_meta_bridge: the bridge-meta variant loads");
    } else {
      // The only acceptable failure: the kernel lacks `meta ibrname` (apply.sh detects that and leaves it out).
      t.diagnostic("this kernel has no nft_meta_bridge: apply.sh renders without meta ibrname here");
      const errors = meta.stderr.split("\n").filter((line) => /Error:/.test(line));
      assert.ok(errors.length > 0, meta.stderr);
      assert.ok(
        errors.every((line) => /Operation not supported/.test(line)),
        meta.stderr,
      );
      assert.match(meta.stderr, /meta ibrname "vmbr1" jump antispoof/);
    }
  });

  it("apply.sh renders (WAN wan0) and loads the ruleset with real nft", async () => {
    const result = await lab.exec(ns.host, "sh", [APPLY, "--apply", "--root", root, "--wan", "wan0"], {
      timeoutMs: 60_000,
    });
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stderr, /tables inet agentlab, bridge agentlab_l2 and ip agentlab_nat are loaded/);
    const nat = await lab.must(ns.host, "nft", ["list", "table", "ip", "agentlab_nat"]);
    assert.match(nat, /oifname "wan0" ip saddr 10\.77\.0\.0\/16 masquerade/);
    // The daemon registers a VM's port before starting it.
    await fw.registerPort(SB1.port);
    await fw.registerPort(SB2.port);
    assert.deepEqual((await fw.state()).sandboxPorts.sort(), [SB1.port, SB2.port]);
  });

  it("a sandbox reaches the Internet (TCP and ping) but no private, CGNAT or tailnet address", async () => {
    const [web, other, lan, hostWan, tailnet, ping] = await Promise.all([
      lab.connect(ns.sb1, INET_HOST, WEB),
      lab.connect(ns.sb1, INET_OTHER, WEB),
      lab.connect(ns.sb1, LAN_HOST, WEB),
      lab.connect(ns.sb1, HOST_WAN, 22),
      lab.connect(ns.sb1, TAILNET_HOST, WEB),
      lab.ping(ns.sb1, INET_HOST),
    ]);
    assert.deepEqual(
      { web, other, lan, hostWan, tailnet, ping },
      { web: "open", other: "open", lan: "timeout", hostWan: "timeout", tailnet: "timeout", ping: true },
    );
    // The host itself still reaches them: the blocks are the ruleset, not routing.
    const [hostLan, hostTailnet] = await Promise.all([
      lab.connect(ns.host, LAN_HOST, WEB),
      lab.connect(ns.host, TAILNET_HOST, WEB),
    ]);
    assert.deepEqual({ hostLan, hostTailnet }, { hostLan: "open", hostTailnet: "open" });
  });

  it("on the host a sandbox reaches only the guest ports, DNS and ping: not 8006, not sshd", async () => {
    const [bootstrap, artifacts, dns, api, ssh, ping] = await Promise.all([
      lab.connect(ns.sb1, BRIDGE_ADDR, 8844),
      lab.connect(ns.sb1, BRIDGE_ADDR, 8846),
      lab.connect(ns.sb1, BRIDGE_ADDR, 53),
      lab.connect(ns.sb1, BRIDGE_ADDR, 8006),
      lab.connect(ns.sb1, BRIDGE_ADDR, 22),
      lab.ping(ns.sb1, BRIDGE_ADDR),
    ]);
    assert.deepEqual(
      { bootstrap, artifacts, dns, api, ssh, ping },
      { bootstrap: "open", artifacts: "open", dns: "open", api: "timeout", ssh: "timeout", ping: true },
    );
    // The same listeners answer the host itself (the drops are the input chain).
    assert.equal(await lab.connect(ns.host, BRIDGE_ADDR, 8006), "open");
  });

  it("nothing outside opens connections to sandboxes; sandboxes reach each other on the bridge", async () => {
    const [fromLan, fromInet, sandboxToSandbox] = await Promise.all([
      lab.connect(ns.lan, SB1.ip, WEB),
      lab.connect(ns.inet, SB1.ip, WEB),
      lab.connect(ns.sb1, SB2.ip, WEB),
    ]);
    assert.deepEqual(
      { fromLan, fromInet, sandboxToSandbox },
      { fromLan: "timeout", fromInet: "timeout", sandboxToSandbox: "open" },
    );
  });

  it("unbound port: the bridge address cannot be claimed (IPv4 and ARP)", async () => {
    await assertSpoofDropped(sb2Sink, SB2.ip, UDP_SINK, BRIDGE_ADDR);
    await assertArpClaimDropped(BRIDGE_ADDR, "sb2");
  });

  it("unbound port: a source outside the subnet is dropped", async () => {
    await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, "10.99.0.5");
  });

  it("sandbox 2 bound: unbound sandbox 1 cannot claim its address (IPv4 and ARP)", async () => {
    await fw.bind(SB2, DEFAULT_EGRESS);
    await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, SB2.ip);
    await assertSpoofDropped(hostSink, BRIDGE_ADDR, 53, SB2.ip);
    await assertArpClaimDropped(SB2.ip, "host");
    // Sandbox 2 itself still works.
    assert.equal(await lab.connect(ns.sb2, INET_HOST, WEB), "open");
  });

  it("both bound: sandbox 1 keeps working but cannot use another IP, the bridge IP or another MAC", async () => {
    await fw.bind(SB1, DEFAULT_EGRESS);
    const state = await fw.state();
    assert.deepEqual(state.bindings.map((b) => `${b.port} ${b.mac} ${b.ip}`).sort(), [
      `${SB1.port} ${SB1.mac} ${SB1.ip}`,
      `${SB2.port} ${SB2.mac} ${SB2.ip}`,
    ]);
    assert.equal(await lab.connect(ns.sb1, INET_HOST, WEB), "open");
    assert.equal(await lab.connect(ns.sb1, BRIDGE_ADDR, 8844), "open");
    await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, SB2.ip);
    await assertSpoofDropped(hostSink, BRIDGE_ADDR, 53, SB2.ip);
    await assertSpoofDropped(sb2Sink, SB2.ip, UDP_SINK, BRIDGE_ADDR);
    await assertArpClaimDropped(SB2.ip, "host");
    await assertArpClaimDropped(BRIDGE_ADDR, "sb2");
    // Own address, someone else's MAC: dropped too.
    await lab.must(ns.sb1, "ip", ["link", "set", "eth0", "address", "bc:24:11:00:00:99"]);
    try {
      await lab.must(ns.host, "ip", ["neigh", "flush", "dev", "vmbr1"]);
      assert.equal(await lab.connect(ns.sb1, BRIDGE_ADDR, 8844), "timeout");
    } finally {
      await lab.must(ns.sb1, "ip", ["link", "set", "eth0", "address", SB1.mac]);
      await lab.must(ns.host, "ip", ["neigh", "flush", "dev", "vmbr1"]);
      await lab.must(ns.sb1, "ip", ["neigh", "flush", "dev", "eth0"]);
    }
    assert.equal(await lab.connect(ns.sb1, BRIDGE_ADDR, 8844), "open");
  });

  it("per-sandbox policy: allow_private lets one sandbox reach the LAN, not the others", async () => {
    await fw.bind(SB2, { egress: "internet", allowPrivate: true, allowlist: [] });
    assert.deepEqual((await fw.state()).allowPrivate, [SB2.ip]);
    const [sb2Lan, sb2Inet, sb2Tailnet, sb2Api, sb1Lan] = await Promise.all([
      lab.connect(ns.sb2, LAN_HOST, WEB),
      lab.connect(ns.sb2, INET_HOST, WEB),
      lab.connect(ns.sb2, TAILNET_HOST, WEB),
      lab.connect(ns.sb2, BRIDGE_ADDR, 8006),
      lab.connect(ns.sb1, LAN_HOST, WEB),
    ]);
    assert.deepEqual(
      { sb2Lan, sb2Inet, sb2Tailnet, sb2Api, sb1Lan },
      { sb2Lan: "open", sb2Inet: "open", sb2Tailnet: "timeout", sb2Api: "timeout", sb1Lan: "timeout" },
    );
  });

  it("per-sandbox policy: no egress, then an allowlist", async () => {
    await fw.bind(SB2, { egress: "none", allowPrivate: false, allowlist: [] });
    const [inet, lan, bootstrap] = await Promise.all([
      lab.connect(ns.sb2, INET_HOST, WEB),
      lab.connect(ns.sb2, LAN_HOST, WEB),
      lab.connect(ns.sb2, BRIDGE_ADDR, 8844),
    ]);
    assert.deepEqual({ inet, lan, bootstrap }, { inet: "timeout", lan: "timeout", bootstrap: "open" });

    await fw.bind(SB2, { egress: "allowlist", allowPrivate: false, allowlist: [`${INET_HOST}/32`] });
    const state = await fw.state();
    assert.deepEqual(state.egressBlocked, []);
    assert.deepEqual(state.allowlistDest, [{ ip: SB2.ip, dest: `${INET_HOST}/32` }]);
    const [listed, unlisted, sb1Other] = await Promise.all([
      lab.connect(ns.sb2, INET_HOST, WEB),
      lab.connect(ns.sb2, INET_OTHER, WEB),
      lab.connect(ns.sb1, INET_OTHER, WEB),
    ]);
    assert.deepEqual(
      { listed, unlisted, sb1Other },
      { listed: "open", unlisted: "timeout", sb1Other: "open" },
    );
  });

  it("smoke_test.sh from the host, run inside sandbox 1 through a netns prefix, says PASS", async () => {
    const smoke = await lab.exec(
      ns.host,
      "sh",
      [
        SMOKE,
        "--ip",
        SB1.ip,
        "--exec",
        `ip netns exec ${ns.sb1}`,
        "--egress",
        `${INET_HOST}:${WEB}`,
        "--egress-ping",
        INET_HOST,
        "--no-dns",
        "--tailnet",
        `${TAILNET_HOST}:${WEB}`,
        "--spoof-ip",
        SB2.ip,
        "--timeout",
        "1",
      ],
      { timeoutMs: 60_000 },
    );
    assert.equal(smoke.exitCode, 0, smoke.stdout + smoke.stderr);
    for (const check of [
      "exec",
      "egress",
      "egress-ping",
      "host-bootstrap-reach",
      "host-block-8006",
      "host-block-22",
      "lan-block",
      "tailnet-block",
      "spoof-block",
    ]) {
      assert.match(smoke.stdout, new RegExp(`^PASS ${check} `, "m"), smoke.stdout);
    }
    // Discovered from the host namespace's default route: its WAN address and the router.
    assert.match(smoke.stdout, /^PASS lan-block +192\.168\.50\.1:22 blocked /m);
    assert.match(smoke.stdout, /^PASS lan-block +192\.168\.50\.2:80 blocked /m);
    assert.match(smoke.stdout, /^PASS \(10 passed\)$/m);
  });

  it("reloading the ruleset keeps the set members and does not duplicate rules", async () => {
    const countRules = async () => {
      const out = await lab.must(ns.host, "nft", ["-j", "list", "ruleset"]);
      return (JSON.parse(out) as { nftables: Record<string, unknown>[] }).nftables.filter(
        (item) => "rule" in item,
      ).length;
    };
    const before = { state: await fw.state(), rules: await countRules() };
    const result = await lab.exec(ns.host, "sh", [APPLY, "--apply", "--root", root, "--wan", "wan0"], {
      timeoutMs: 60_000,
    });
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stderr, /ruleset .*agentlab\.nft: unchanged/);
    assert.deepEqual(await fw.state(), before.state);
    assert.equal(await countRules(), before.rules);
    assert.equal(await lab.connect(ns.sb2, INET_OTHER, WEB), "timeout", "sb2's allowlist still applies");
  });

  it("release removes every trace of a sandbox; sync makes the sets exactly what the daemon knows", async () => {
    await fw.release({ port: SB2.port, ip: SB2.ip });
    let state = await fw.state();
    const mentionsSb2 = JSON.stringify(state).includes(SB2.ip) || JSON.stringify(state).includes(SB2.port);
    assert.equal(mentionsSb2, false, JSON.stringify(state));
    await fw.release({ port: SB2.port, ip: SB2.ip }); // idempotent

    await fw.sync([
      { port: SB1.port, binding: SB1, policy: { egress: "none", allowPrivate: false, allowlist: [] } },
      { port: SB2.port },
    ]);
    state = await fw.state();
    assert.deepEqual(state.sandboxPorts.sort(), [SB1.port, SB2.port]);
    assert.deepEqual(state.bindings, [SB1]);
    assert.deepEqual(state.egressBlocked, [SB1.ip]);
    assert.deepEqual(state.allowlistDest, []);
    assert.equal(await lab.connect(ns.sb1, INET_HOST, WEB), "timeout");
    assert.equal(await lab.connect(ns.sb2, INET_HOST, WEB), "open");
  });
  it("control: a binding on the name 1e1de3b predicted (fwpr103p0) leaves sb4's real port tap103i0 unpoliced", async () => {
    await fw.registerPort("fwpr103p0");
    await fw.bind({ port: "fwpr103p0", mac: SB4.mac, ip: SB4.ip }, DEFAULT_EGRESS);
    try {
      const sb4 = { ns: "sb4", ip: SB4.ip } as const;
      assert.equal(await spoofArrives(inetSink, INET_HOST, UDP_SINK, UNUSED_IP, sb4), true, "spoofed source");
    } finally {
      await fw.release({ port: "fwpr103p0", ip: SB4.ip });
    }
  });

  it("port discovery: each sandbox is bound on the port Proxmox really gave it, and spoofing from it is dropped", async () => {
    const net = daemonNetworking();
    assert.equal((await net.init()).enabled, true);
    for (const sb of [SB3, SB4]) {
      await net.beforeStart(sb.vmid);
      await net.bind(sb.vmid, sb.mac, sb.ip, "nat");
    }
    for (const [name, sb] of [
      ["sb3", SB3],
      ["sb4", SB4],
    ] as const) {
      const sender = { ns: name, ip: sb.ip } as const;
      assert.equal(await lab.connect(ns[name], INET_HOST, WEB), "open", `${name} reaches the Internet`);
      assert.equal(await lab.connect(ns[name], BRIDGE_ADDR, 8844), "open", `${name} reaches bootstrap`);
      await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, UNUSED_IP, sender);
      await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, SB1.ip, sender);
      await assertSpoofDropped(sb2Sink, SB2.ip, UDP_SINK, BRIDGE_ADDR, sender);
      assert.equal(await foreignMacConnects(name, sb.mac), "timeout", `${name} with a foreign MAC`);
      assert.equal(await lab.connect(ns[name], BRIDGE_ADDR, 8844), "open", `${name} with its own MAC again`);
    }
    const state = await fw.state();
    const bound = state.bindings.map((b) => `${b.port} ${b.mac} ${b.ip}`);
    assert.ok(bound.includes(`fwpr102p0 ${SB3.mac} ${SB3.ip}`), JSON.stringify(bound));
    assert.ok(bound.includes(`tap103i0 ${SB4.mac} ${SB4.ip}`), JSON.stringify(bound));
    // The names that are not these VMs' ports are not left registered (sb3's tap would drop sb3's own
    // traffic inside its firewall bridge as an unbound port using a bound address).
    for (const stale of ["tap102i0", "fwpr103p0"]) assert.ok(!state.sandboxPorts.includes(stale), stale);
    // What `agentlab status` says, read from the real ruleset: both bound, one with no binding named.
    const report = await net.report([
      { vmid: SB3.vmid, ip: SB3.ip },
      { vmid: SB4.vmid, ip: SB4.ip },
      { vmid: 104, ip: "10.77.0.14" },
      { vmid: 106, ip: null },
    ]);
    assert.equal(report.in_force, true, report.reason);
    assert.deepEqual(report.ruleset, { loaded: true, tables: ["inet agentlab", "bridge agentlab_l2"] });
    assert.equal(report.bound, 2);
    assert.deepEqual(report.unbound_vmids, [104]);
  });

  it("daemon restart: resync looks the ports up again and binds the same ones", async () => {
    const before = await fw.state();
    const net = daemonNetworking();
    await net.init();
    const result = await net.resync([
      { vmid: 100, ip: SB1.ip, mac: SB1.mac, mode: "nat" },
      { vmid: SB3.vmid, ip: SB3.ip, mac: SB3.mac, mode: "nat" },
      { vmid: SB4.vmid, ip: SB4.ip, mac: SB4.mac, mode: "nat" },
    ]);
    assert.deepEqual(result, { unbound: [] });
    const after = await fw.state();
    assert.deepEqual(after.sandboxPorts.sort(), ["fwpr102p0", "tap100i0", "tap103i0"]);
    const bindings = (state: typeof after) =>
      state.bindings
        .filter((b) => b.ip !== SB2.ip)
        .map((b) => `${b.port} ${b.ip}`)
        .sort();
    assert.deepEqual(bindings(after), bindings(before));
    await assertSpoofDropped(inetSink, INET_HOST, UDP_SINK, UNUSED_IP, { ns: "sb4", ip: SB4.ip });
    assert.equal(await lab.connect(ns.sb3, INET_HOST, WEB), "open");
  });

  it("a NIC with no port on the bridge is an error naming what was found, and nothing is bound", async () => {
    const net = daemonNetworking();
    await net.init();
    const before = await fw.state();
    for (const [vmid, reason] of [
      [104, "fwpr104p0 does not exist, tap104i0 does not exist"],
      [105, "fwpr105p0 does not exist, tap105i0 is in its firewall bridge fwbr105i0"],
    ] as const) {
      await assert.rejects(net.bind(vmid, "bc:24:11:00:00:0e", "10.77.0.14", "nat"), (e: AgentlabError) => {
        assert.ok(e instanceof BridgePortMissingError, String(e));
        assert.equal(
          e.message,
          `anti-spoofing not in place for sandbox ${vmid}: its NIC net0 has no port on a bridge (${reason})`,
        );
        return true;
      });
    }
    assert.deepEqual(await fw.state(), before);
  });

  it("release forgets every name a sandbox's port may have", async () => {
    const net = daemonNetworking();
    await net.init();
    await net.release(SB3.vmid, SB3.ip);
    await net.release(SB4.vmid, SB4.ip);
    const text = JSON.stringify(await fw.state());
    for (const trace of ["fwpr102p0", "tap102i0", "fwpr103p0", "tap103i0", SB3.ip, SB4.ip]) {
      assert.ok(!text.includes(trace), `${trace} left in ${text}`);
    }
  });
});
