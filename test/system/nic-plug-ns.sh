#!/bin/sh
# Test helper for the simulator's nic_plug knob (test/pvesim/nic-plug.ts): plugs a simulator VM's NIC
# into <host-ns> the way Proxmox does without a firewall bridge (nftables proxmox-firewall, or
# firewall=0): the port on the bridge is the tap itself, tap<vmid>i<n> (PVESIM_IFACE).
#
#   nic-plug-ns.sh <host-ns>
#
# The test prepared the VM's port as `sbport`, a port of PVESIM_BRIDGE whose veth peer is the sandbox
# namespace's eth0; plugging renames it. A restart of the same VM finds it already plugged. With nothing
# to plug it fails, and so does the VM's start (as with a failing pve-bridge).
set -eu
[ "$#" -eq 1 ] || { echo "usage: $0 <host-ns>" >&2; exit 2; }
host=$1
iface=${PVESIM_IFACE:?} bridge=${PVESIM_BRIDGE:?}
master_of() { ip -n "$host" -o link show dev "$1" 2>/dev/null | sed -n 's/.* master \([^ ]*\) .*/\1/p'; }
if [ "$(master_of "$iface")" = "$bridge" ]; then exit 0; fi
[ "$(master_of sbport)" = "$bridge" ] || { echo "nic-plug-ns: no sbport on $bridge in $host to plug as $iface" >&2; exit 1; }
ip -n "$host" link set sbport down
ip -n "$host" link set sbport name "$iface"
ip -n "$host" link set "$iface" up
