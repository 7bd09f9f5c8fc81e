/**
 * The daemon binds each sandbox's anti-spoofing on the bridge port Proxmox really gave its NIC, end to
 * end: the shell-backend daemon runs in a network namespace with vmbr1 and the real agentlab ruleset, the
 * simulator plugs each starting VM's NIC there (its nic_plug knob, as qemu-server's pve-bridge does),
 * and `sandbox new` must bind `fwpr<vmid>p0` behind a firewall bridge, `tap<vmid>i0` without one, and
 * fail the sandbox with the reason when the NIC has no bridge port. Root only (namespaces, nft).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { REPO_ROOT } from "../helpers/paths.js";
import { type NetnsSimHost, startSimHostInNetns } from "../helpers/smoke-host.js";
import { setControl } from "../pvesim/harness.js";
import { NetnsLab, netnsSkipReason, removeStaleNamespaces } from "../system/netns.js";

const skip = netnsSkipReason();

/** nic_plug commands, run by the simulator with PVESIM_IFACE (tap<vmid>i<n>) and PVESIM_BRIDGE set. */
function plugs(host: string) {
  const ipn = `ip -n ${host}`;
  return {
    // The nftables proxmox-firewall (or firewall=0): the tap is the bridge port.
    tap: `${ipn} tuntap add dev "$PVESIM_IFACE" mode tap && ${ipn} link set "$PVESIM_IFACE" master "$PVESIM_BRIDGE" up`,
    // The iptables pve-firewall with firewall=1 (pve-common src/PVE/Network.pm:443-463): the tap in
    // fwbr<vmid>i<n>, joined to the bridge by the veth pair fwln<vmid>i<n> / fwpr<vmid>p<n>.
    firewallBridge: [
      `v=$PVESIM_VMID; n=\${PVESIM_NET#net}`,
      `${ipn} link add "fwbr\${v}i\${n}" type bridge`,
      `${ipn} link add "fwln\${v}i\${n}" type veth peer name "fwpr\${v}p\${n}"`,
      `${ipn} link set "fwpr\${v}p\${n}" master "$PVESIM_BRIDGE" up`,
      `${ipn} link set "fwln\${v}i\${n}" master "fwbr\${v}i\${n}" up`,
      `${ipn} tuntap add dev "$PVESIM_IFACE" mode tap`,
      `${ipn} link set "$PVESIM_IFACE" master "fwbr\${v}i\${n}" up`,
      `${ipn} link set "fwbr\${v}i\${n}" up`,
    ].join(" && "),
    // A plug that leaves no port on any bridge (QEMU started, the NIC went nowhere).
    nowhere: `${ipn} tuntap add dev "$PVESIM_IFACE" mode tap`,
  };
}

interface SandboxJson {
  vmid: number;
  state: string;
  ip?: string | null;
  failure_reason?: string;
}

describe("anti-spoofing binds the NIC's real bridge port", { skip, timeout: 600_000 }, () => {
  const lab = new NetnsLab();
  let host = "";
  let root = "";
  let h: NetnsSimHost;

  before(async () => {
    await removeStaleNamespaces();
    root = mkdtempSync(join(tmpdir(), "agentlab-it-antispoof-"));
    host = await lab.addNamespace("host");
    await lab.must(host, "ip", ["link", "add", "vmbr1", "type", "bridge", "stp_state", "0"]);
    await lab.must(host, "ip", ["addr", "add", "10.77.0.1/16", "dev", "vmbr1"]);
    await lab.must(host, "ip", ["link", "set", "vmbr1", "up"]);
    // Only the WAN's name matters here (the masquerade rule); nothing leaves the namespace.
    await lab.must(host, "ip", ["link", "add", "wan0", "type", "veth", "peer", "name", "wan0p"]);
    const apply = await lab.exec(
      host,
      "sh",
      [join(REPO_ROOT, "scripts/net/apply.sh"), "--apply", "--root", root, "--wan", "wan0"],
      { timeoutMs: 60_000 },
    );
    assert.equal(apply.exitCode, 0, apply.stderr);
    h = await startSimHostInNetns(host, "bootstrap_listen: 10.77.0.1:8844\n");
  });

  after(async () => {
    await h?.stop();
    const problems = await lab.destroy();
    if (root) rmSync(root, { recursive: true, force: true });
    assert.deepEqual(problems, [], "teardown left namespaces behind");
  });

  async function nftSet(set: string): Promise<string> {
    return lab.must(host, "nft", ["list", "set", "bridge", "agentlab_l2", set]);
  }

  async function newSandbox(plug: string): Promise<{ code: number; output: string; sandbox: SandboxJson }> {
    await setControl(h.sim.dir, { nic_plug: plug });
    const result = await h.cli(["--json", "sandbox", "new", "--profile", "yolo-ephemeral"]);
    const listed = JSON.parse((await h.cli(["--json", "sandbox", "list", "--all"])).stdout) as {
      sandboxes: SandboxJson[];
    };
    const sandbox = listed.sandboxes.reduce((a, b) => (b.vmid > a.vmid ? b : a));
    // Under --json the error is the JSON on stdout; both streams are searched.
    return { code: result.code ?? -1, output: `${result.stdout}\n${result.stderr}`, sandbox };
  }

  for (const [kind, port] of [
    ["firewall bridge", (vmid: number) => `fwpr${vmid}p0`],
    ["bare tap", (vmid: number) => `tap${vmid}i0`],
  ] as const) {
    test(`${kind}: sandbox new binds ${port(0).replace("0", "<vmid>")}, destroy releases every name`, async () => {
      const plug = kind === "firewall bridge" ? plugs(host).firewallBridge : plugs(host).tap;
      const { code, output, sandbox } = await newSandbox(plug);
      assert.equal(code, 0, `${output}\n${h.daemonOutput().stderr}`);
      assert.equal(sandbox.state, "RUNNING");
      const other = kind === "firewall bridge" ? `tap${sandbox.vmid}i0` : `fwpr${sandbox.vmid}p0`;
      const bindings = await nftSet("tap_bindings");
      assert.match(bindings, new RegExp(`"${port(sandbox.vmid)}" \\. [0-9a-f:]{17} \\. ${sandbox.ip}`));
      assert.doesNotMatch(bindings, new RegExp(other));
      assert.doesNotMatch(await nftSet("sandbox_ports"), new RegExp(`"${other}"`));

      const destroyed = await h.cli(["--json", "sandbox", "destroy", String(sandbox.vmid)]);
      assert.equal(destroyed.code, 0, destroyed.stderr);
      for (const set of ["tap_bindings", "sandbox_ports", "bound_ips"]) {
        const members = await nftSet(set);
        assert.doesNotMatch(members, new RegExp(`${sandbox.vmid}[ip]0|${sandbox.ip}`), `${set}: ${members}`);
      }
    });
  }

  test("a NIC with no bridge port: sandbox new fails with the reason, the sandbox is FAILED, nothing bound", async () => {
    const { code, output, sandbox } = await newSandbox(plugs(host).nowhere);
    const vmid = sandbox.vmid;
    assert.notEqual(code, 0);
    const reason =
      `anti-spoofing not in place for sandbox ${vmid}: its NIC net0 has no port on a bridge ` +
      `(fwpr${vmid}p0 does not exist, tap${vmid}i0 exists but is in no bridge)`;
    assert.ok(output.includes(reason), output);
    assert.equal(sandbox.state, "FAILED");
    assert.ok(sandbox.failure_reason?.includes(reason), JSON.stringify(sandbox));
    assert.doesNotMatch(await nftSet("tap_bindings"), new RegExp(`${vmid}`));
    await setControl(h.sim.dir, { nic_plug: "" });
  });
});
