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
import { appendFileSync, mkdirSync } from "node:fs";
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
