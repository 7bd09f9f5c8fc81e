#!/bin/sh
# Install and load the agentlab nftables ruleset: sandbox egress filter, host input filter, layer-2
# anti-spoofing and NAT (docs/networking.md explains every rule).
#
#   scripts/net/apply.sh [--bridge vmbr1] [--wan vmbr0] [--subnet 10.77.0.0/16] [--bridge-addr 10.77.0.1]
#                        [--guest-ports 8844,8846] [--tailscale-if tailscale0|""] [--tailnet-v4 100.64.0.0/10]
#                        [--tailnet-v6 fd7a:115c:a1e0::/48] [--bridge-meta auto|on|off]
#                        [--apply] [--force] [--replace] [--print] [--root DIR]
#
# Dry run by default: renders, checks the ruleset with `nft -c` (as root), shows what would change.
# --apply writes /etc/nftables.d/agentlab.nft and /etc/systemd/system/agentlab-nftables.service and
# loads the rules (systemctl enable + restart of that unit, or `nft -f` where systemd is not running).
# Differing installed files are refused unless --force. Reloading keeps the per-sandbox set members;
# --replace deletes the agentlab tables first (members are lost until the daemon syncs them again).
# --print writes the rendered ruleset to stdout and does nothing else.
# --bridge-meta: also police every port of the bridge by name (needs the kernel's nft_meta_bridge);
# auto (default) uses it when `nft -c` accepts it.
# --root DIR (or AGENTLAB_ROOT=DIR): install under DIR; with --apply the rules are loaded with nft -f
# into the current network namespace (systemd is never touched).
# The rules come from the daemon's renderer (src/daemon/network/nft.ts, through render-cli.js); with
# default parameters the checked-in rendering scripts/net/agent_nat.nft is used, so no build is needed.
# Exit status: 0 done or nothing to do, 1 refused or failed, 2 usage error.
set -eu

script_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
render_cli="$repo/dist/src/daemon/network/render-cli.js"
default_rules="$script_dir/agent_nat.nft"

apply=0
force=0
replace=0
print=0
bridge_meta=auto
root=${AGENTLAB_ROOT:-/}
render_args=""
custom=0

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'apply: %s\n' "$*" >&2; exit 1; }
usage_error() { printf 'apply: %s (see --help)\n' "$*" >&2; exit 2; }
say() { printf 'apply: %s\n' "$*" >&2; }

# Render flags are passed through to render-cli, which validates them. Values are kept one per line.
add_render() { render_args="$render_args$1
$2
"; custom=1; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --bridge | --wan | --subnet | --bridge-addr | --guest-ports | --tailscale-if | --tailnet-v4 | --tailnet-v6)
      [ "$#" -ge 2 ] || usage_error "$1 needs a value"
      case "$2" in *"
"*) usage_error "$1: value has a newline" ;; esac
      add_render "$1" "$2"; shift 2 ;;
    --bridge=* | --wan=* | --subnet=* | --bridge-addr=* | --guest-ports=* | --tailscale-if=* | --tailnet-v4=* | --tailnet-v6=*)
      add_render "${1%%=*}" "${1#*=}"; shift ;;
    --bridge-meta) [ "$#" -ge 2 ] || usage_error "--bridge-meta needs auto, on or off"; bridge_meta=$2; shift 2 ;;
    --bridge-meta=*) bridge_meta=${1#--bridge-meta=}; shift ;;
    --root) [ "$#" -ge 2 ] || usage_error "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --apply) apply=1; shift ;;
    --force) force=1; shift ;;
    --replace) replace=1; shift ;;
    --print) print=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
case "$bridge_meta" in auto | on | off) ;; *) usage_error "--bridge-meta: expected auto, on or off, got \"$bridge_meta\"" ;; esac

root=${root%/}
live=0
[ -z "$root" ] && live=1
is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ "$apply" = 1 ] && [ "$is_root" = 0 ]; then
  die "--apply needs root (CAP_NET_ADMIN) to load nftables rules"
fi
nft=${AGENTLAB_NFT:-nft}
have_nft=0
command -v "$nft" >/dev/null 2>&1 && have_nft=1
if [ "$apply" = 1 ] && [ "$have_nft" = 0 ]; then
  die "nft not found: apt-get install nftables"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/agentlab-apply.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# --- bridge-meta: does this kernel know `meta ibrname`? -----------------------------------------------
meta_from_auto=0
if [ "$bridge_meta" = auto ]; then
  bridge_meta=off
  meta_from_auto=1
  if [ "$is_root" = 1 ] && [ "$have_nft" = 1 ]; then
    cat >"$tmp/probe.nft" <<'EOF'
table bridge agentlab_probe {
	chain probe {
		type filter hook input priority 0; policy accept;
		meta ibrname "agentlab-probe" accept
	}
}
EOF
    if "$nft" -c -f "$tmp/probe.nft" >/dev/null 2>&1; then
      bridge_meta=on
    else
      say "this kernel has no nft_meta_bridge (meta ibrname): policing the registered sandbox ports only"
    fi
  fi
fi
if [ "$bridge_meta" = on ]; then
  if [ "$custom" = 0 ] && [ "$meta_from_auto" = 1 ] && { [ ! -f "$render_cli" ] || ! command -v "${AGENTLAB_NODE:-node}" >/dev/null 2>&1; }; then
    say "warning: the kernel supports --bridge-meta but the renderer is not built (npm run build): using $default_rules without it"
  else
    add_render "--bridge-meta" ""
  fi
fi

# --- render -----------------------------------------------------------------------------------------
rules="$tmp/agentlab.nft"
if [ "$custom" = 0 ]; then
  [ -f "$default_rules" ] || die "$default_rules is missing"
  cp "$default_rules" "$rules"
else
  [ -f "$render_cli" ] || die "non-default parameters need the renderer: build first (npm ci && npm run build), missing $render_cli"
  command -v "${AGENTLAB_NODE:-node}" >/dev/null 2>&1 || die "node not found (needed to render non-default parameters)"
  # One argument per line in $render_args; an empty value stays an empty argument.
  set --
  pending=""
  have_pending=0
  while IFS= read -r line; do
    if [ "$have_pending" = 0 ]; then
      pending=$line; have_pending=1
    else
      if [ "$pending" = "--bridge-meta" ]; then set -- "$@" "$pending"; else set -- "$@" "$pending=$line"; fi
      have_pending=0
    fi
  done <<EOF
$render_args
EOF
  if ! "${AGENTLAB_NODE:-node}" "$render_cli" "$@" >"$rules" 2>"$tmp/render.err"; then
    sed 's/^render-cli: /apply: /' "$tmp/render.err" >&2
    exit 2
  fi
fi

if [ "$print" = 1 ]; then
  cat "$rules"
  exit 0
fi

if [ "$is_root" = 1 ] && [ "$have_nft" = 1 ]; then
  if ! "$nft" -c -f "$rules" >"$tmp/check.out" 2>&1; then
    cat "$tmp/check.out" >&2
    die "nft -c rejected the rendered ruleset (nothing changed)"
  fi
  say "ruleset checked with nft -c: ok"
else
  say "not root: the ruleset was not checked with nft -c"
fi

# --- files ------------------------------------------------------------------------------------------
nft_path=$(command -v "$nft" 2>/dev/null || echo /usr/sbin/nft)
case "$nft_path" in /*) ;; *) nft_path=/usr/sbin/nft ;; esac
rules_dest="$root/etc/nftables.d/agentlab.nft"
unit_dest="$root/etc/systemd/system/agentlab-nftables.service"
cat >"$tmp/unit" <<EOF
# Managed by agentlab (scripts/net/apply.sh): loads the agentlab nftables ruleset at boot, before the
# network comes up. Reloading keeps the per-sandbox set members. There is no ExecStop on purpose:
# stopping this unit must not open the sandboxes' network; remove the rules with
#   nft delete table inet agentlab; nft delete table bridge agentlab_l2; nft delete table ip agentlab_nat
[Unit]
Description=agentlab nftables ruleset (sandbox bridge isolation)
Documentation=file:///opt/agentlab/docs/networking.md
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
After=local-fs.target nftables.service
# Debian's nftables.service starts with "flush ruleset": load again whenever it does.
PartOf=nftables.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=$nft_path -f /etc/nftables.d/agentlab.nft
ExecReload=$nft_path -f /etc/nftables.d/agentlab.nft

[Install]
WantedBy=sysinit.target nftables.service
EOF

refusals=0
changes=0
plan() { # src dest label -> sets state_<label>
  if [ ! -e "$2" ]; then
    eval "state_$3=new"; changes=$((changes + 1))
  elif cmp -s "$1" "$2"; then
    eval "state_$3=unchanged"
  elif [ "$force" = 1 ]; then
    eval "state_$3=overwrite"; changes=$((changes + 1))
  else
    printf 'apply: refusing: %s differs from the rendered file (rerun with --force to overwrite):\n' "$2" >&2
    diff -u "$2" "$1" >&2 || true
    eval "state_$3=refused"; refusals=$((refusals + 1))
  fi
}
plan "$rules" "$rules_dest" rules
plan "$tmp/unit" "$unit_dest" unit
# shellcheck disable=SC2154 # set by plan through eval
{
  say "ruleset $rules_dest: $state_rules"
  say "unit $unit_dest: $state_unit"
}
[ "$refusals" = 0 ] || { say "nothing changed ($refusals refusal(s))"; exit 1; }

use_systemd=0
if [ "$live" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then use_systemd=1; fi

if [ "$apply" = 0 ]; then
  [ "$changes" -gt 0 ] && say "would write the files marked new/overwrite above"
  [ "$replace" = 1 ] && say "would delete tables inet agentlab, bridge agentlab_l2, ip agentlab_nat (set members are lost)"
  if [ "$use_systemd" = 1 ]; then
    say "would run: systemctl daemon-reload; systemctl enable agentlab-nftables.service; systemctl restart agentlab-nftables.service"
  else
    say "would run: nft -f $rules_dest"
  fi
  say "dry run: nothing changed (rerun with --apply)"
  exit 0
fi

install_file() { # src dest mode
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.agentlab-new"
  chmod "$3" "$2.agentlab-new"
  mv -f "$2.agentlab-new" "$2"
}
[ "$state_rules" = unchanged ] || { install_file "$rules" "$rules_dest" 0644; say "wrote $rules_dest"; }
[ "$state_unit" = unchanged ] || { install_file "$tmp/unit" "$unit_dest" 0644; say "wrote $unit_dest"; }

if [ "$replace" = 1 ]; then
  # One transaction: declare (so delete cannot fail), delete, load. No moment without rules.
  {
    for table in "inet agentlab" "bridge agentlab_l2" "ip agentlab_nat"; do
      printf 'table %s\ndelete table %s\n' "$table" "$table"
    done
    cat "$rules_dest"
  } >"$tmp/replace.nft"
  "$nft" -f "$tmp/replace.nft" || die "nft -f (replace) failed"
  say "replaced tables inet agentlab, bridge agentlab_l2, ip agentlab_nat (set members are gone until the daemon syncs them)"
fi

if [ "$use_systemd" = 1 ]; then
  systemctl daemon-reload
  systemctl enable agentlab-nftables.service >/dev/null 2>&1 || die "systemctl enable agentlab-nftables.service failed"
  systemctl restart agentlab-nftables.service || die "agentlab-nftables.service failed: journalctl -u agentlab-nftables -n 50"
  say "loaded: systemctl restart agentlab-nftables.service"
elif [ "$replace" = 0 ]; then
  "$nft" -f "$rules_dest" || die "nft -f $rules_dest failed"
  say "loaded: nft -f $rules_dest"
fi
for table in "inet agentlab" "bridge agentlab_l2" "ip agentlab_nat"; do
  # shellcheck disable=SC2086
  "$nft" list table $table >/dev/null 2>&1 || die "table $table is not loaded after applying"
done
say "tables inet agentlab, bridge agentlab_l2 and ip agentlab_nat are loaded"
