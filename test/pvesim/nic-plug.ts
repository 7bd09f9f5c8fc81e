/**
 * Plugging a VM's NICs into their bridges when its QEMU process starts, as qemu-server does: QEMU runs
 * the `-netdev tap,...,script=/usr/libexec/qemu-server/pve-bridge` script for each NIC
 * (qemu-server src/PVE/QemuServer.pm:1464-1468), which calls `tap_plug` (src/usr/pve-bridge:45 ->
 * src/PVE/QemuServer/Network.pm:351-355). A failing script makes QEMU exit and the start fail with
 * `start failed: QEMU exited with code 1` (QemuServer.pm:5835, 5878).
 *
 * The simulator has no host interfaces of its own, so the plug is a knob: `nic_plug`, a command run
 * synchronously (`sh -c`) once per bridged NIC before the VM counts as running (its output, and QEMU's
 * `network script ... failed` line when it fails, go to DIR/guests/<vmid>.log), with the NIC in
 * PVESIM_IFACE (`tap<vmid>i<n>`), PVESIM_NET (`net<n>`), PVESIM_BRIDGE and PVESIM_FIREWALL (0/1). A test
 * uses it to create (or rename) the VM's port in a network namespace, so the daemon finds the port there
 * when the start returns, as on a real host. Empty (the default): nothing is plugged.
 */
import { spawnSync } from "node:child_process";
import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import type { VmRec } from "./types.js";
import { mergedConfig, parseProps } from "./vmconfig.js";

/** Runs the nic_plug knob for each `net<n>` with a bridge; throws the start failure when one fails. */
export function plugNics(ctx: Ctx, vm: VmRec): void {
  const command = ctx.control.nic_plug;
  if (!command) return;
  const config = mergedConfig(vm);
  const nets = Object.keys(config)
    .filter((key) => /^net\d+$/.test(key))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  const logDir = join(ctx.dir, "guests");
  mkdirSync(logDir, { recursive: true });
  for (const net of nets) {
    const props = new Map(parseProps(String(config[net])).map((p) => [p.key, p.value]));
    const bridge = props.get("bridge");
    if (!bridge) continue;
    const iface = `tap${vm.vmid}i${net.slice(3)}`;
    const result = spawnSync("sh", ["-c", command], {
      encoding: "utf8",
      timeout: 30_000,
      env: {
        ...process.env,
        PVESIM_DIR: ctx.dir,
        PVESIM_VMID: String(vm.vmid),
        PVESIM_NODE: vm.node,
        PVESIM_NET: net,
        PVESIM_IFACE: iface,
        PVESIM_BRIDGE: bridge,
        PVESIM_FIREWALL: props.get("firewall") === "1" ? "1" : "0",
      },
    });
    const kvm =
      result.status === 0
        ? ""
        : `kvm: -netdev type=tap,id=${net},ifname=${iface},script=/usr/libexec/qemu-server/pve-bridge: ` +
          `network script /usr/libexec/qemu-server/pve-bridge failed with status ${(result.status ?? 1) * 256}\n`;
    appendFileSync(
      join(logDir, `${vm.vmid}.log`),
      `nic_plug ${iface} ${bridge}: exit ${result.status ?? result.signal}\n${result.stdout ?? ""}${result.stderr ?? ""}${kvm}`,
    );
    if (result.status !== 0) throw fail("start failed: QEMU exited with code 1");
  }
}

/**
 * Real guests (guests=qemu): the `-netdev` of a NIC. With a bridge it is qemu-server's tap netdev
 * (`print_netdev_full`, QemuServer.pm:1465-1468): QEMU creates `tap<vmid>i<n>` and runs a script that
 * does what pve-bridge does (src/usr/pve-bridge -> pve-common Network.pm `tap_create` :380-395,
 * `tap_plug` -> `bridge_add_interface` :265-274): bridge MTU, link up, IPv6 off, into the bridge. A
 * missing bridge makes the script die with `bridge '<name>' does not exist` (`read_bridge_mtu`,
 * :131-136), QEMU exits 1 and the start fails, as on Proxmox. The tap is QEMU's own (not persistent),
 * so it goes away with the process. Without a bridge, or with the knob `guest_net=user` (tests without
 * a network namespace), it is `type=user,id=net<n>,hostname=<name>`, as qemu-server does for a NIC
 * without bridge.
 */
export function tapNetdev(
  ctx: Ctx,
  vm: VmRec,
  key: string,
  nic: { rest: Array<{ key: string; value: string }> },
): string {
  const bridge = nic.rest.find((p) => p.key === "bridge")?.value;
  if (!bridge || ctx.control.guest_net === "user") {
    return `type=user,id=${key},hostname=${vm.config["name"] || `vm${vm.vmid}`}`;
  }
  const iface = `tap${vm.vmid}i${key.slice(3)}`;
  const logDir = join(ctx.dir, "guests");
  mkdirSync(logDir, { recursive: true });
  const script = join(logDir, `${vm.vmid}.${key}.pve-bridge`);
  writeFileSync(
    script,
    [
      "#!/bin/sh",
      `# pvesim: what qemu-server's pve-bridge does for ${iface} on ${bridge} (see nic-plug.ts)`,
      `[ "$1" = ${iface} ] || { echo "got strange interface name '$1'" >&2; exit 255; }`,
      `mtu=$(cat /sys/class/net/${bridge}/mtu 2>/dev/null) || { echo "bridge '${bridge}' does not exist" >&2; exit 255; }`,
      `[ -w /proc/sys/net/ipv6/conf/${iface}/disable_ipv6 ] && echo 1 > /proc/sys/net/ipv6/conf/${iface}/disable_ipv6`,
      `ip link set ${iface} up promisc on mtu "$mtu" || { echo "interface activation failed" >&2; exit 255; }`,
      `ip link set ${iface} master ${bridge} || exit 255`,
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  return `type=tap,id=${key},ifname=${iface},script=${script},downscript=no`;
}
