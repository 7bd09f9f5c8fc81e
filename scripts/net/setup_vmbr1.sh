#!/bin/sh
# Set up the agentlab sandbox bridge on a Proxmox VE host: an ifupdown stanza for the bridge (no
# ports: sandboxes reach the outside only through the host) and IPv4 forwarding.
#
#   scripts/net/setup_vmbr1.sh [--bridge vmbr1] [--address 10.77.0.1/16] [--apply] [--force] [--root DIR]
#
# Dry run by default: prints what it would write and run. --apply does it (root).
# Writes /etc/network/interfaces.d/agentlab-<bridge>.cfg when /etc/network/interfaces sources
# interfaces.d (Proxmox VE does), else a marked block appended to /etc/network/interfaces; and
# /etc/sysctl.d/99-agentlab.conf (net.ipv4.ip_forward = 1). Identical content is left alone; differing
# content is refused unless --force. A bridge of that name defined elsewhere (e.g. by the Proxmox GUI)
# is left alone when it has the same address, refused otherwise (--force does not override that).
# --apply then runs sysctl and `ifreload -a` (ifupdown2), else `ifup <bridge>`.
# --root DIR (or AGENTLAB_ROOT=DIR) works on DIR/etc/... and never touches the running system.
# Exit status: 0 done or nothing to do, 1 refused or failed, 2 usage error.
set -eu

bridge=vmbr1
address=10.77.0.1/16
apply=0
force=0
root=${AGENTLAB_ROOT:-/}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'setup_vmbr1: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'setup_vmbr1: %s (see --help)\n' "$*" >&2; exit 2; }
say() { printf 'setup_vmbr1: %s\n' "$*"; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --bridge) [ "$#" -ge 2 ] || usage_error "--bridge needs a name"; bridge=$2; shift 2 ;;
    --bridge=*) bridge=${1#--bridge=}; shift ;;
    --address) [ "$#" -ge 2 ] || usage_error "--address needs an address/prefix"; address=$2; shift 2 ;;
    --address=*) address=${1#--address=}; shift ;;
    --root) [ "$#" -ge 2 ] || usage_error "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --apply) apply=1; shift ;;
    --force) force=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

# --- validate ---------------------------------------------------------------------------------------
case "$bridge" in
  "" | -* | *[!A-Za-z0-9_.-]*) usage_error "--bridge: \"$bridge\" is not an interface name" ;;
esac
[ "${#bridge}" -le 15 ] || usage_error "--bridge: \"$bridge\" is longer than 15 characters"

valid_address() {
  # a.b.c.d/n, each octet 0-255, n 8-30
  printf '%s\n' "$1" | awk -F'[./]' '
    NF != 5 { exit 1 }
    { for (i = 1; i <= 5; i++) if ($i !~ /^[0-9]+$/) exit 1
      for (i = 1; i <= 4; i++) if ($i > 255) exit 1
      if ($5 < 8 || $5 > 30) exit 1 }'
}
valid_address "$address" || usage_error "--address: \"$address\" is not an IPv4 address with a prefix length 8-30 (e.g. 10.77.0.1/16)"

root=${root%/}
live=0
[ -z "$root" ] && live=1
if [ "$apply" = 1 ] && [ "$live" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "--apply needs root (or --root DIR to write into a directory)"
fi

interfaces="$root/etc/network/interfaces"
interfaces_d="$root/etc/network/interfaces.d"
cfg="$interfaces_d/agentlab-$bridge.cfg"
sysctl_conf="$root/etc/sysctl.d/99-agentlab.conf"
begin_marker="# BEGIN agentlab-managed $bridge"
end_marker="# END agentlab-managed $bridge"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/setup_vmbr1.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

cat >"$tmp/stanza" <<EOF
# Managed by agentlab (scripts/net/setup_vmbr1.sh): the sandbox bridge. It has no ports; sandboxes
# reach the outside only through this host (NAT and the agentlab nftables ruleset, scripts/net/apply.sh).
auto $bridge
iface $bridge inet static
	address $address
	bridge-ports none
	bridge-stp off
	bridge-fd 0
EOF

cat >"$tmp/sysctl" <<EOF
# Managed by agentlab (scripts/net/setup_vmbr1.sh): this host routes (NATs) the sandboxes' traffic.
net.ipv4.ip_forward = 1
EOF

[ -f "$interfaces" ] || die "$interfaces does not exist: this host does not use ifupdown; create bridge $bridge ($address) with its network manager and enable net.ipv4.ip_forward"

# --- where the stanza goes, and whether the bridge is defined elsewhere ------------------------------
if grep -Eq '^[[:space:]]*source(-directory)?[[:space:]]+[^#]*interfaces\.d' "$interfaces"; then
  mode=dir
  target=$cfg
else
  mode=append
  target=$interfaces
fi

# The interfaces file without our own marked block (that one is ours to replace).
awk -v b="$begin_marker" -v e="$end_marker" '
  $0 == b { skip = 1; next }
  $0 == e { skip = 0; next }
  !skip { print }' "$interfaces" >"$tmp/interfaces.others"

# Prints "<file> <address>" for each stanza of the bridge outside our managed file/block.
find_elsewhere() {
  for file in "$tmp/interfaces.others" "$interfaces_d"/*; do
    [ -f "$file" ] || continue
    [ "$file" = "$cfg" ] && continue
    shown=$file
    [ "$file" = "$tmp/interfaces.others" ] && shown=$interfaces
    awk -v br="$bridge" -v shown="$shown" '
      $1 == "iface" { inside = ($2 == br); if (inside) { found = 1 } next }
      $1 == "auto" || $1 == "allow-hotplug" || $1 == "source" || $1 == "source-directory" || $1 == "mapping" { inside = 0; next }
      inside && $1 == "address" { addr = $2 }
      END { if (found) print shown, (addr == "" ? "-" : addr) }' "$file"
  done
}
elsewhere=$(find_elsewhere)

refusals=0
refuse() { printf 'setup_vmbr1: refusing: %s\n' "$*" >&2; refusals=$((refusals + 1)); }

write_stanza=0
stanza_state=""
if [ -n "$elsewhere" ]; then
  printf '%s\n' "$elsewhere" | while read -r file addr; do
    say "bridge $bridge is already defined in $file (address $addr)"
  done
  if printf '%s\n' "$elsewhere" | awk -v want="$address" '$2 != want { bad = 1 } END { exit bad ? 0 : 1 }'; then
    refuse "bridge $bridge is defined elsewhere with a different address (want $address); change it there or remove that definition (--force does not override another file)"
  else
    stanza_state="defined elsewhere with the same address: left alone"
  fi
fi

if [ -z "$stanza_state" ] && [ "$refusals" = 0 ]; then
  if [ "$mode" = dir ]; then
    if [ ! -e "$cfg" ]; then
      write_stanza=1; stanza_state="new"
    elif cmp -s "$tmp/stanza" "$cfg"; then
      stanza_state="unchanged"
    elif [ "$force" = 1 ]; then
      write_stanza=1; stanza_state="differs: overwriting (--force)"
    else
      refuse "$cfg differs from what this script writes (rerun with --force to overwrite):"
      diff -u "$cfg" "$tmp/stanza" >&2 || true
    fi
  else
    awk -v b="$begin_marker" -v e="$end_marker" '
      $0 == b { inside = 1; next }
      $0 == e { inside = 0; next }
      inside { print }' "$interfaces" >"$tmp/current-block"
    if ! grep -qxF "$begin_marker" "$interfaces"; then
      write_stanza=1; stanza_state="new (appended: $interfaces does not source interfaces.d)"
    elif cmp -s "$tmp/stanza" "$tmp/current-block"; then
      stanza_state="unchanged"
    elif [ "$force" = 1 ]; then
      write_stanza=1; stanza_state="differs: replacing the managed block (--force)"
    else
      refuse "the agentlab block in $interfaces differs from what this script writes (rerun with --force to overwrite):"
      diff -u "$tmp/current-block" "$tmp/stanza" >&2 || true
    fi
  fi
fi

write_sysctl=0
if [ ! -e "$sysctl_conf" ]; then
  write_sysctl=1; sysctl_state="new"
elif cmp -s "$tmp/sysctl" "$sysctl_conf"; then
  sysctl_state="unchanged"
elif [ "$force" = 1 ]; then
  write_sysctl=1; sysctl_state="differs: overwriting (--force)"
else
  refuse "$sysctl_conf differs from what this script writes (rerun with --force to overwrite):"
  diff -u "$sysctl_conf" "$tmp/sysctl" >&2 || true
fi

[ "$refusals" = 0 ] || { say "nothing changed ($refusals refusal(s))"; exit 1; }

# --- report or do -----------------------------------------------------------------------------------
say "bridge stanza ($target): $stanza_state"
say "sysctl ($sysctl_conf): $sysctl_state"
if [ "$live" = 1 ]; then
  forward=$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo "?")
  say "now: net.ipv4.ip_forward = $forward"
  if ip -4 -o addr show dev "$bridge" 2>/dev/null | grep -q .; then
    say "now: $(ip -4 -o addr show dev "$bridge" | awk '{print $2, $4}' | tr '\n' ' ')"
  else
    say "now: bridge $bridge has no IPv4 address (or does not exist)"
  fi
fi

reload_cmd="ifup $bridge"
if [ "$live" = 1 ] && command -v ifreload >/dev/null 2>&1; then reload_cmd="ifreload -a"; fi

if [ "$apply" = 0 ]; then
  if [ "$write_stanza" = 1 ]; then
    say "would write $target:"
    sed 's/^/    /' "$tmp/stanza"
  fi
  if [ "$write_sysctl" = 1 ]; then
    say "would write $sysctl_conf:"
    sed 's/^/    /' "$tmp/sysctl"
  fi
  if [ "$live" = 1 ]; then
    say "would run: sysctl -q -p $sysctl_conf"
    say "would run: $reload_cmd"
  fi
  if [ "$write_stanza" = 0 ] && [ "$write_sysctl" = 0 ]; then
    say "nothing to write"
  else
    say "dry run: nothing changed (rerun with --apply)"
  fi
  exit 0
fi

install_file() { # src dest: atomic replace
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.agentlab-new"
  chmod 0644 "$2.agentlab-new"
  mv -f "$2.agentlab-new" "$2"
}

if [ "$write_stanza" = 1 ]; then
  if [ "$mode" = dir ]; then
    install_file "$tmp/stanza" "$cfg"
  else
    cp "$interfaces" "$tmp/interfaces.new"
    if grep -qxF "$begin_marker" "$interfaces"; then
      awk -v b="$begin_marker" -v e="$end_marker" -v f="$tmp/stanza" '
        $0 == b { print; while ((getline line < f) > 0) print line; skip = 1; next }
        $0 == e { skip = 0; print; next }
        !skip { print }' "$interfaces" >"$tmp/interfaces.new"
    else
      { printf '\n%s\n' "$begin_marker"; cat "$tmp/stanza"; printf '%s\n' "$end_marker"; } >>"$tmp/interfaces.new"
    fi
    install_file "$tmp/interfaces.new" "$interfaces"
  fi
  say "wrote $target"
fi
if [ "$write_sysctl" = 1 ]; then
  install_file "$tmp/sysctl" "$sysctl_conf"
  say "wrote $sysctl_conf"
fi

if [ "$live" = 0 ]; then
  say "--root $root: not touching the running system (no sysctl, no $reload_cmd)"
  exit 0
fi
sysctl -q -p "$sysctl_conf" || die "sysctl -p $sysctl_conf failed"
say "ran: sysctl -q -p $sysctl_conf"
if [ "$stanza_state" != "unchanged" ] && [ "${stanza_state#defined elsewhere}" = "$stanza_state" ] || ! ip link show "$bridge" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  $reload_cmd || die "$reload_cmd failed: check the stanza in $target and the output above"
  say "ran: $reload_cmd"
fi
if ip -4 -o addr show dev "$bridge" 2>/dev/null | grep -q .; then
  say "bridge $bridge is up: $(ip -4 -o addr show dev "$bridge" | awk '{print $4}' | tr '\n' ' ')"
else
  die "bridge $bridge has no IPv4 address after $reload_cmd"
fi
