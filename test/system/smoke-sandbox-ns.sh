#!/bin/sh
# Test helper for `agentlab init --smoke-exec`: runs a command inside the network namespace that plays a
# simulator sandbox, giving that namespace the sandbox's identity on first use.
#
#   smoke-sandbox-ns.sh <host-ns> <sandbox-ns> <vmid> <ip> <command> [args...]
#
# The test creates <sandbox-ns> with an eth0 whose peer, `sbport` in <host-ns>, is a port of vmbr1; the
# simulator's nic_plug (test/system/nic-plug-ns.sh) renamed it to the VM's tap<vmid>i0 when the VM
# started, and the daemon bound that port. On first use eth0 gets the VM's net0 MAC (qm config from the
# simulator: its qm must be on PATH) and the address the simulator reported, so the daemon's
# anti-spoofing binding of port + MAC + address applies to its traffic.
set -eu
[ "$#" -ge 5 ] || { echo "usage: $0 <host-ns> <sandbox-ns> <vmid> <ip> <command...>" >&2; exit 2; }
host=$1 sb=$2 vmid=$3 ip=$4
shift 4
port="tap${vmid}i0"

if ! ip -n "$sb" -4 -o addr show dev eth0 | grep -q " $ip/"; then
  mac=$(qm config "$vmid" | sed -n 's/^net0: [a-z0-9]*=\([0-9A-Fa-f:]\{17\}\).*/\1/p')
  [ -n "$mac" ] || { echo "smoke-sandbox-ns: no net0 MAC in qm config $vmid" >&2; exit 1; }
  ip -n "$host" link show dev "$port" >/dev/null || { echo "smoke-sandbox-ns: VM $vmid's port $port is not plugged" >&2; exit 1; }
  ip -n "$sb" link set eth0 down
  ip -n "$sb" link set eth0 address "$mac"
  ip -n "$sb" addr flush dev eth0
  ip -n "$sb" addr add "$ip/16" dev eth0
  ip -n "$sb" link set eth0 up
  ip -n "$sb" route replace default via 10.77.0.1
fi
exec ip netns exec "$sb" "$@"
