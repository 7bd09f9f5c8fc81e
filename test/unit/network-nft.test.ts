import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  checkNftParams,
  DEFAULT_NFT_PARAMS,
  type NftParams,
  NftParamsError,
  nftParamsFromConfig,
  renderRuleset,
} from "../../src/daemon/network/nft.js";
import { renderFromArgs } from "../../src/daemon/network/render-cli.js";
import { REPO_ROOT } from "../helpers/paths.js";

const AGENT_NAT = join(REPO_ROOT, "scripts/net/agent_nat.nft");

function params(overrides: Partial<NftParams>): NftParams {
  return { ...DEFAULT_NFT_PARAMS, ...overrides };
}

/** The rule lines of one chain, without indentation. */
function chain(text: string, table: string, name: string): string[] {
  const start = text.lastIndexOf(`table ${table} {`);
  assert.ok(start >= 0, `table ${table}`);
  const body = text.slice(start);
  const from = body.indexOf(`\tchain ${name} {`);
  assert.ok(from >= 0, `chain ${name}`);
  const to = body.indexOf("\n\t}", from);
  return body
    .slice(from, to)
    .split("\n")
    .slice(1)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

function indexOfRule(rules: string[], pattern: RegExp): number {
  const index = rules.findIndex((rule) => pattern.test(rule));
  assert.ok(index >= 0, `no rule matches ${pattern}:\n${rules.join("\n")}`);
  return index;
}

describe("network: nftables ruleset rendering", () => {
  it("scripts/net/agent_nat.nft is the rendering of the defaults (not stale)", () => {
    assert.equal(
      readFileSync(AGENT_NAT, "utf8"),
      renderRuleset(DEFAULT_NFT_PARAMS),
      "scripts/net/agent_nat.nft is stale: npm run build && node dist/src/daemon/network/render-cli.js > scripts/net/agent_nat.nft",
    );
  });

  it("is deterministic and renders the defaults when given no parameters", () => {
    assert.equal(renderRuleset(), renderRuleset(DEFAULT_NFT_PARAMS));
    assert.equal(renderRuleset(), renderRuleset({ ...DEFAULT_NFT_PARAMS, guestPorts: [8846, 8844] }));
  });

  it("reloads without losing set members: declares, flushes the tables' rules, never deletes", () => {
    const text = renderRuleset();
    assert.doesNotMatch(text, /^delete /m);
    assert.doesNotMatch(text, /flush ruleset/);
    for (const table of ["inet agentlab", "bridge agentlab_l2", "ip agentlab_nat"]) {
      const declared = text.indexOf(`table ${table} {`);
      const flushed = text.indexOf(`flush table ${table}\n`);
      assert.ok(declared >= 0 && flushed > declared, `table ${table} declared before it is flushed`);
    }
    assert.doesNotMatch(text, /elements =/, "set declarations carry no elements (they would reset members)");
  });

  it("input: from the bridge only guest ports, DNS, DHCP and ping reach the host; the rest is dropped", () => {
    const rules = chain(renderRuleset(), "inet agentlab", "input");
    assert.match(rules[0]!, /^type filter hook input priority -100; policy accept;$/);
    assert.match(rules[1]!, /^iifname != "vmbr1" accept/);
    assert.ok(rules.includes("ct state established,related accept"));
    indexOfRule(rules, /^ip saddr 10\.77\.0\.0\/16 ip daddr 10\.77\.0\.1 tcp dport \{ 8844, 8846 \} accept/);
    indexOfRule(rules, /th dport 53 accept/);
    indexOfRule(rules, /^udp sport 68 udp dport 67 accept/);
    indexOfRule(rules, /icmp type echo-request accept/);
    assert.match(rules.at(-1)!, /^counter drop/);
    const text = rules.map((rule) => rule.replace(/ comment ".*"$/, "")).join("\n");
    assert.doesNotMatch(text, /8006|\b22\b/, "no rule opens the Proxmox API or sshd");
  });

  it("forward: private, link-local, CGNAT/tailnet and ULA are dropped; allow_private and the policy sets come in order", () => {
    const forward = chain(renderRuleset(), "inet agentlab", "forward");
    assert.equal(forward[1], "ct state established,related accept");
    indexOfRule(forward, /^iifname "tailscale0" oifname "vmbr1" accept/);
    indexOfRule(forward, /^iifname "vmbr1" jump from_sandbox$/);
    indexOfRule(forward, /^oifname "vmbr1" ct state new counter drop/);

    const rules = chain(renderRuleset(), "inet agentlab", "from_sandbox");
    const subnet = indexOfRule(rules, /^meta nfproto ipv4 ip saddr != 10\.77\.0\.0\/16 counter drop/);
    const blocked = indexOfRule(rules, /^ip saddr @egress_blocked counter drop/);
    const special = indexOfRule(rules, /^ip daddr \{ 100\.64\.0\.0\/10, 169\.254\.0\.0\/16 \} counter drop/);
    const v6 = indexOfRule(
      rules,
      /^ip6 daddr \{ fd7a:115c:a1e0::\/48, fc00::\/7, fe80::\/10 \} counter drop/,
    );
    const allowPrivate = indexOfRule(
      rules,
      /^ip saddr @allow_private ip daddr \{ 10\.0\.0\.0\/8, 172\.16\.0\.0\/12, 192\.168\.0\.0\/16 \} accept/,
    );
    const rfc1918 = indexOfRule(
      rules,
      /^ip daddr \{ 10\.0\.0\.0\/8, 172\.16\.0\.0\/12, 192\.168\.0\.0\/16 \} counter drop/,
    );
    const allowlist = indexOfRule(
      rules,
      /^ip saddr @egress_allowlist ip saddr \. ip daddr @allowlist_dest accept/,
    );
    const allowlistDrop = indexOfRule(rules, /^ip saddr @egress_allowlist counter drop/);
    const internet = indexOfRule(rules, /^oifname "vmbr0" accept/);
    assert.ok(
      subnet < blocked && blocked < special && special < allowPrivate,
      "no egress / special ranges first",
    );
    assert.ok(v6 < allowPrivate, "IPv6 ULA is never allowed, not even with allow_private");
    assert.ok(allowPrivate < rfc1918, "allow_private is checked before the RFC 1918 drop");
    assert.ok(rfc1918 < allowlist && allowlist < allowlistDrop && allowlistDrop < internet);
    assert.match(rules.at(-1)!, /^counter drop/);
  });

  it("layer 2: sandbox ports are policed; bound ports may use only their MAC and address", () => {
    const text = renderRuleset();
    for (const hook of ["input", "forward"]) {
      const rules = chain(text, "bridge agentlab_l2", hook);
      assert.match(rules[0]!, new RegExp(`^type filter hook ${hook} priority -200; policy accept;$`));
      assert.deepEqual(rules.slice(1), ["iifname @sandbox_ports jump antispoof"]);
    }
    assert.doesNotMatch(text, /ibrname/, "meta ibrname is off by default (not every kernel has it)");
    const bound = chain(text, "bridge agentlab_l2", "bound_port");
    indexOfRule(bound, /iifname \. arp saddr ether \. arp saddr ip @tap_bindings accept$/);
    indexOfRule(bound, /^ether type ip iifname \. ether saddr \. ip saddr @tap_bindings accept$/);
    assert.match(bound.at(-1)!, /^counter drop/);
    const unbound = chain(text, "bridge agentlab_l2", "unbound_port");
    const arpBridge = indexOfRule(unbound, /^ether type arp arp saddr ip 10\.77\.0\.1 counter drop/);
    const arpBound = indexOfRule(unbound, /^ether type arp arp saddr ip @bound_ips counter drop/);
    const arpSubnet = indexOfRule(unbound, /^ether type arp arp saddr ip 10\.77\.0\.0\/16 accept$/);
    const ipBridge = indexOfRule(unbound, /^ether type ip ip saddr 10\.77\.0\.1 counter drop/);
    const ipBound = indexOfRule(unbound, /^ether type ip ip saddr @bound_ips counter drop/);
    const ipSubnet = indexOfRule(unbound, /^ether type ip ip saddr 10\.77\.0\.0\/16 accept$/);
    assert.ok(arpBridge < arpSubnet && arpBound < arpSubnet && ipBridge < ipSubnet && ipBound < ipSubnet);
    assert.match(unbound.at(-1)!, /^counter drop/);
  });

  it("bridgeMeta also polices every frame of the bridge by name", () => {
    const text = renderRuleset(params({ bridgeMeta: true }));
    for (const hook of ["input", "forward"]) {
      const rules = chain(text, "bridge agentlab_l2", hook);
      assert.deepEqual(rules.slice(1), [
        'meta ibrname "vmbr1" jump antispoof comment "every port of the bridge"',
        "iifname @sandbox_ports jump antispoof",
      ]);
    }
  });

  it("NAT: masquerade the subnet out of the WAN interface", () => {
    const rules = chain(renderRuleset(params({ wan: "eno1" })), "ip agentlab_nat", "postrouting");
    assert.deepEqual(rules, [
      "type nat hook postrouting priority 100; policy accept;",
      'oifname "eno1" ip saddr 10.77.0.0/16 masquerade',
    ]);
  });

  it("uses every parameter", () => {
    const text = renderRuleset(
      params({
        bridge: "br-agents",
        subnet: "172.30.0.0/20",
        bridgeAddress: "172.30.0.1",
        wan: "eth0",
        guestPorts: [9000],
        tailscaleIf: "ts0",
        tailnetV4: "100.100.0.0/16",
        tailnetV6: "fd00:1234::/32",
      }),
    );
    assert.doesNotMatch(text, /vmbr1|vmbr0|10\.77|8844|tailscale0|100\.64\.0\.0|fd7a/);
    assert.match(text, /ip saddr 172\.30\.0\.0\/20 ip daddr 172\.30\.0\.1 tcp dport 9000 accept/);
    assert.match(text, /iifname "ts0" oifname "br-agents" accept/);
    assert.match(text, /ip daddr \{ 100\.100\.0\.0\/16, 169\.254\.0\.0\/16 \} counter drop/);
    assert.match(text, /ether type arp arp saddr ip 172\.30\.0\.1 counter drop/);
    assert.match(text, /oifname "eth0" ip saddr 172\.30\.0\.0\/20 masquerade/);
  });

  it("an empty tailscale interface drops the tailnet accept rule but keeps the tailnet drops", () => {
    const text = renderRuleset(params({ tailscaleIf: "" }));
    assert.doesNotMatch(text, /tailscale0/);
    assert.match(text, /ip daddr \{ 100\.64\.0\.0\/10, 169\.254\.0\.0\/16 \} counter drop/);
  });

  it("rejects parameters that would render a wrong or unloadable ruleset, naming each problem", () => {
    const cases: [Partial<NftParams>, RegExp][] = [
      [{ bridge: 'vmbr1" accept' }, /^bridge: .* is not an interface name/],
      [{ bridge: "a-very-long-ifname" }, /^bridge: /],
      [{ wan: "" }, /^wan: /],
      [{ wan: "vmbr1" }, /^wan: must differ from the bridge/],
      [{ tailscaleIf: "tail scale" }, /^tailscale-if: /],
      [{ subnet: "10.77.0.0" }, /^subnet: .* is not an IPv4 CIDR/],
      [{ subnet: "10.77.0.1/16", bridgeAddress: "10.77.0.2" }, /^subnet: .* has host bits set/],
      [{ subnet: "10.77.0.0/31", bridgeAddress: "10.77.0.1" }, /^subnet: \/31 leaves no room/],
      [{ bridgeAddress: "10.78.0.1" }, /^bridge-addr: 10\.78\.0\.1 is outside the subnet 10\.77\.0\.0\/16/],
      [{ bridgeAddress: "10.77.0.0" }, /^bridge-addr: .* network or broadcast/],
      [{ bridgeAddress: "10.77.255.255" }, /^bridge-addr: .* network or broadcast/],
      [{ bridgeAddress: "fd00::1" }, /^bridge-addr: .* is not an IPv4 address/],
      [{ guestPorts: [] }, /^guest-ports: at least one/],
      [{ guestPorts: [0] }, /^guest-ports: 0 is not a TCP port/],
      [{ guestPorts: [70000] }, /^guest-ports: 70000/],
      [{ guestPorts: [8844, 8844] }, /^guest-ports: a port is listed twice/],
      [{ tailnetV4: "100.64.0.1/10" }, /^tailnet-v4: /],
      [{ tailnetV6: "fd7a::zz/48" }, /^tailnet-v6: /],
    ];
    for (const [overrides, expected] of cases) {
      const problems = checkNftParams(params(overrides));
      assert.equal(problems.length, 1, `${JSON.stringify(overrides)} -> ${problems.join("; ")}`);
      assert.match(problems[0]!, expected);
    }
    assert.deepEqual(checkNftParams(DEFAULT_NFT_PARAMS), []);
    assert.throws(
      () => renderRuleset(params({ wan: "bad name", guestPorts: [0] })),
      (error: unknown) =>
        error instanceof NftParamsError && error.code === "INVALID_PARAMS" && error.problems.length === 2,
    );
  });

  it("takes the bridge address, guest ports and subnet from the daemon config", () => {
    assert.deepEqual(
      nftParamsFromConfig({
        bootstrap_listen: "10.80.0.1:9844",
        artifact_listen: "10.80.0.1:9846",
        agent_subnet: "10.80.0.0/16",
      }),
      { ...DEFAULT_NFT_PARAMS, bridgeAddress: "10.80.0.1", guestPorts: [9844, 9846], subnet: "10.80.0.0/16" },
    );
    // A wildcard listener says nothing about the bridge address: the default stays.
    const wildcard = nftParamsFromConfig(
      { bootstrap_listen: ":8844", artifact_listen: ":8844", agent_subnet: "10.77.0.0/16" },
      { wan: "eno1" },
    );
    assert.equal(wildcard.bridgeAddress, "10.77.0.1");
    assert.deepEqual(wildcard.guestPorts, [8844]);
    assert.equal(wildcard.wan, "eno1");
  });
});

describe("network: render-cli", () => {
  it("renders the defaults with no flags", () => {
    assert.deepEqual(renderFromArgs([]), { code: 0, stdout: renderRuleset() });
  });

  it("passes every flag through", () => {
    const result = renderFromArgs([
      "--bridge=vmbr9",
      "--wan",
      "eno1",
      "--subnet",
      "10.9.0.0/16",
      "--bridge-addr",
      "10.9.0.1",
      "--guest-ports",
      " 9000, 9001 ",
      "--tailscale-if=",
      "--tailnet-v4",
      "100.64.0.0/10",
      "--tailnet-v6",
      "fd7a:115c:a1e0::/48",
      "--bridge-meta",
    ]);
    assert.equal(result.code, 0);
    assert.equal(
      result.code === 0 && result.stdout,
      renderRuleset({
        bridge: "vmbr9",
        wan: "eno1",
        subnet: "10.9.0.0/16",
        bridgeAddress: "10.9.0.1",
        guestPorts: [9000, 9001],
        tailscaleIf: "",
        tailnetV4: "100.64.0.0/10",
        tailnetV6: "fd7a:115c:a1e0::/48",
        bridgeMeta: true,
      }),
    );
  });

  it("exits 2 with the problems for bad values and unknown flags", () => {
    const bad = renderFromArgs(["--guest-ports", "8844,http", "--wan", "vmbr1"]);
    assert.equal(bad.code, 2);
    assert.match(
      bad.code === 2 ? bad.stderr : "",
      /^render-cli: wan: must differ from the bridge \(vmbr1\)$/m,
    );
    assert.match(bad.code === 2 ? bad.stderr : "", /^render-cli: guest-ports: NaN is not a TCP port/m);
    const unknown = renderFromArgs(["--bogus"]);
    assert.equal(unknown.code, 2);
    assert.match(
      unknown.code === 2 ? unknown.stderr : "",
      /Unknown option '--bogus'[\s\S]*usage: render-cli/,
    );
  });
});
