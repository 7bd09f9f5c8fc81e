#!/bin/sh
# Check a sandbox's network from the inside, run from the host: the Internet is reachable, the host's
# guest port answers, and the LAN, the tailnet and the host's management ports are not reachable.
#
#   scripts/net/smoke_test.sh --ip <sandbox-ip> [--user agent] [--identity FILE]
#                             [--exec "<command prefix>"] [--gateway <bridge-addr>] [--bridge vmbr1]
#                             [--egress host:port]... [--egress-ping host] [--dns-name example.com | --no-dns]
#                             [--lan ip[:port]]... [--tailnet ip[:port]]... [--bootstrap-port 8844]
#                             [--block-port 8006 --block-port 22] [--spoof-ip <neighbour-ip>] [--timeout 3]
#
# The probes run inside the sandbox with bash, through `ssh <user>@<ip>` by default, or through any
# command prefix given with --exec (e.g. --exec "ip netns exec sb1" for a network namespace). They need
# bash and timeout in the sandbox; --egress-ping and --spoof-ip also need ping, and --spoof-ip root or
# passwordless sudo (it adds the neighbour's address to the sandbox for a moment).
#
# Checks (each PASS or FAIL): exec; dns (--dns-name resolves; default example.com); egress (TCP to each
# --egress, default example.com:443; ping to --egress-ping); host-bootstrap-reach (gateway:8844 answers);
# host-block-<port> (gateway:8006 and gateway:22 by default: must time out); lan-block (each --lan,
# default the host's own WAN address:22 and its default gateway:80); tailnet-block (each --tailnet,
# default the host's tailscale0 address:22); spoof-block (with --spoof-ip: traffic using a neighbour's
# address gets nowhere). A block check passes only on a timeout: a refused connection means a host
# answered, i.e. the packet got through.
# Summary line: "PASS (n passed)" and exit 0, or "FAIL (x failed, y passed)" and exit 1; 2 = usage.
set -eu

ip=""
user=agent
identity=""
exec_prefix=""
gateway=""
bridge=vmbr1
egress=""
egress_ping=""
dns_name=example.com
lan=""
tailnet=""
bootstrap_port=8844
block_ports=""
spoof_ip=""
timeout_s=3

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
usage_error() { printf 'smoke_test: %s (see --help)\n' "$*" >&2; exit 2; }
need() { [ "$1" -ge 2 ] || usage_error "$2 needs a value"; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --ip) need "$#" "$1"; ip=$2; shift 2 ;;
    --user) need "$#" "$1"; user=$2; shift 2 ;;
    --identity) need "$#" "$1"; identity=$2; shift 2 ;;
    --exec) need "$#" "$1"; exec_prefix=$2; shift 2 ;;
    --gateway) need "$#" "$1"; gateway=$2; shift 2 ;;
    --bridge) need "$#" "$1"; bridge=$2; shift 2 ;;
    --egress) need "$#" "$1"; egress="$egress $2"; shift 2 ;;
    --egress-ping) need "$#" "$1"; egress_ping="$egress_ping $2"; shift 2 ;;
    --dns-name) need "$#" "$1"; dns_name=$2; shift 2 ;;
    --no-dns) dns_name=""; shift ;;
    --lan) need "$#" "$1"; lan="$lan $2"; shift 2 ;;
    --tailnet) need "$#" "$1"; tailnet="$tailnet $2"; shift 2 ;;
    --bootstrap-port) need "$#" "$1"; bootstrap_port=$2; shift 2 ;;
    --block-port) need "$#" "$1"; block_ports="$block_ports $2"; shift 2 ;;
    --spoof-ip) need "$#" "$1"; spoof_ip=$2; shift 2 ;;
    --timeout) need "$#" "$1"; timeout_s=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done

is_ipv4() {
  printf '%s\n' "$1" | awk -F. 'NF != 4 { exit 1 } { for (i = 1; i <= 4; i++) if ($i !~ /^[0-9]+$/ || $i > 255) exit 1 }'
}
is_port() { case "$1" in "" | *[!0-9]*) return 1 ;; esac; [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
is_host() { case "$1" in "" | -* | *[!A-Za-z0-9.-]*) return 1 ;; esac; }

[ -n "$ip" ] || usage_error "--ip is required"
is_ipv4 "$ip" || usage_error "--ip: \"$ip\" is not an IPv4 address"
case "$timeout_s" in "" | *[!0-9]* | 0) usage_error "--timeout: whole seconds, at least 1" ;; esac
is_port "$bootstrap_port" || usage_error "--bootstrap-port: \"$bootstrap_port\" is not a port"
[ -z "$spoof_ip" ] || is_ipv4 "$spoof_ip" || usage_error "--spoof-ip: \"$spoof_ip\" is not an IPv4 address"
[ -z "$dns_name" ] || is_host "$dns_name" || usage_error "--dns-name: \"$dns_name\" is not a host name"

# --- defaults discovered on the host (route lookups only, no traffic) ---------------------------------
if [ -z "$gateway" ]; then
  gateway=$(ip -4 -o addr show dev "$bridge" 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
  [ -n "$gateway" ] || gateway=10.77.0.1
fi
is_ipv4 "$gateway" || usage_error "--gateway: \"$gateway\" is not an IPv4 address"
[ -n "$egress" ] || egress="example.com:443"
[ -n "$block_ports" ] || block_ports="8006 22"
if [ -z "$lan" ]; then
  route=$(ip -4 route show default 2>/dev/null | head -n 1)
  wan_dev=$(printf '%s\n' "$route" | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }')
  default_gw=$(printf '%s\n' "$route" | awk '{ for (i = 1; i < NF; i++) if ($i == "via") print $(i + 1) }')
  if [ -n "$wan_dev" ]; then
    wan_addr=$(ip -4 -o addr show dev "$wan_dev" 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
    [ -n "$wan_addr" ] && lan="$lan $wan_addr:22"
  fi
  [ -n "$default_gw" ] && lan="$lan $default_gw:80"
fi
if [ -z "$tailnet" ]; then
  ts_addr=$(ip -4 -o addr show dev tailscale0 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
  [ -n "$ts_addr" ] && tailnet="$ts_addr:22"
fi

# --- the probe list: "<check> <kind> <expect> <args...>", one per line ---------------------------------
probes=""
add() { probes="$probes$*
"; }
split_target() { # host[:port] default_port -> "host port"
  case "$1" in
    *:*) t_host=${1%:*}; t_port=${1##*:} ;;
    *) t_host=$1; t_port=$2 ;;
  esac
  is_host "$t_host" || usage_error "\"$1\": bad host"
  is_port "$t_port" || usage_error "\"$1\": bad port"
}

[ -n "$dns_name" ] && add "dns dns reach $dns_name"
for target in $egress; do
  split_target "$target" 443
  add "egress tcp reach $t_host $t_port"
done
for target in $egress_ping; do
  is_host "$target" || usage_error "--egress-ping: \"$target\": bad host"
  add "egress-ping ping reach $target"
done
add "host-bootstrap-reach tcp reach $gateway $bootstrap_port"
for port in $block_ports; do
  is_port "$port" || usage_error "--block-port: \"$port\" is not a port"
  add "host-block-$port tcp block $gateway $port"
done
for target in $lan; do
  split_target "$target" 22
  add "lan-block tcp block $t_host $t_port"
done
for target in $tailnet; do
  split_target "$target" 22
  add "tailnet-block tcp block $t_host $t_port"
done
[ -n "$spoof_ip" ] && add "spoof-block spoof block $ip $spoof_ip $gateway"

# --- the script that runs inside the sandbox -----------------------------------------------------------
# Arguments: <timeout> then the probe lines' words, each line ended by ",". Prints "<n> <result> <detail>".
# Not ";": ssh hands its arguments to the sandbox's login shell as one line, where ";" ends a command.
# shellcheck disable=SC2016 # expanded by the sandbox's bash, not here
remote='
set -u
t=$1; shift
dir=$(mktemp -d) || { echo "0 error mktemp failed"; exit 0; }
trap "rm -rf \"$dir\"" EXIT
tcp() { # host port -> open | timeout | refused | error
  local err
  err=$(timeout "$t" bash -c "exec 3<>/dev/tcp/$1/$2" 2>&1)
  case $? in
    0) echo "open" ;;
    124) echo "timeout" ;;
    *) case "$err" in *refused*) echo "refused" ;; *"No route"* | *unreachable*) echo "unreachable" ;; *) echo "error ${err##*: }" ;; esac ;;
  esac
}
run() { # n kind args...
  local n=$1 kind=$2; shift 2
  case "$kind" in
    tcp) echo "$n $(tcp "$1" "$2")" ;;
    ping)
      if ! command -v ping >/dev/null 2>&1; then echo "$n error no ping in the sandbox"; return; fi
      if ping -n -c 1 -W "$t" "$1" >/dev/null 2>&1; then echo "$n open"; else echo "$n timeout"; fi ;;
    dns)
      if getent hosts "$1" >/dev/null 2>&1; then echo "$n open"; else echo "$n timeout"; fi ;;
    spoof) # own-ip spoof-ip gateway
      local sudo="" dev
      [ "$(id -u)" = 0 ] || sudo="sudo -n"
      if ! command -v ping >/dev/null 2>&1; then echo "$n error no ping in the sandbox"; return; fi
      dev=$(ip -4 -o addr show | awk -v a="$1" "{ split(\$4, p, \"/\"); if (p[1] == a) { print \$2; exit } }")
      [ -n "$dev" ] || { echo "$n error no interface has $1"; return; }
      if ! ping -n -c 1 -W "$t" "$3" >/dev/null 2>&1; then echo "$n error control ping to $3 failed"; return; fi
      $sudo ip addr add "$2/32" dev "$dev" 2>/dev/null || { echo "$n error cannot add $2 (needs root or sudo -n)"; return; }
      $sudo ip neigh flush to "$3" dev "$dev" 2>/dev/null || true
      if ping -n -c 1 -W "$t" -I "$2" "$3" >/dev/null 2>&1; then r=open; else r=timeout; fi
      $sudo ip addr del "$2/32" dev "$dev" 2>/dev/null || true
      $sudo ip neigh flush to "$3" dev "$dev" 2>/dev/null || true
      echo "$n $r" ;;
    *) echo "$n error unknown probe $kind" ;;
  esac
}
n=0; words=""
spoof_line=""
for w in "$@"; do
  if [ "$w" = "," ]; then
    n=$((n + 1))
    # shellcheck disable=SC2086
    set -- $words
    if [ "$2" = spoof ]; then spoof_line="$n $words"; else run "$n" $words >"$dir/$n" & fi
    words=""
  else
    words="$words $w"
  fi
done
wait
# The spoof probe changes the sandbox address set: run it alone, after the others.
if [ -n "$spoof_line" ]; then set -- $spoof_line; k=$1; shift; run "$k" "$@" >"$dir/$k"; fi
i=1
while [ "$i" -le "$n" ]; do cat "$dir/$i" 2>/dev/null || echo "$i error no result"; i=$((i + 1)); done
'

# Words for the remote side: each probe line without its check name and expectation, "," after each.
# Every word is a validated token (names, addresses, ports) that any shell passes through unchanged.
set --
while IFS= read -r line; do
  [ -n "$line" ] || continue
  # shellcheck disable=SC2046 # split into words on purpose (they are validated tokens)
  set -- "$@" $(printf '%s\n' "$line" | cut -d' ' -f2,4-) ","
done <<EOF
$probes
EOF

if [ -n "$exec_prefix" ]; then
  runner=$exec_prefix
  exec_label="exec"
else
  runner="ssh -o BatchMode=yes -o ConnectTimeout=$timeout_s -o StrictHostKeyChecking=accept-new"
  [ -n "$identity" ] && runner="$runner -i $identity"
  runner="$runner $user@$ip"
  exec_label="ssh"
fi
total_timeout=$((timeout_s * 3 + 30))
# shellcheck disable=SC2086 # the prefix is a list of words on purpose
if out=$(printf '%s' "$remote" | timeout "$total_timeout" $runner bash -s -- "$timeout_s" "$@" 2>&1); then
  exec_ok=1
else
  exec_ok=0
fi

passed=0
failed=0
report() { # PASS|FAIL check detail
  printf '%s %-22s %s\n' "$1" "$2" "$3"
  if [ "$1" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

if [ "$exec_ok" = 0 ] || ! printf '%s\n' "$out" | grep -q '^1 '; then
  report FAIL "$exec_label" "cannot run the probes in the sandbox with: $runner"
  printf '%s\n' "$out" | sed 's/^/    /' | tail -n 5
  printf 'FAIL (%d failed, %d passed)\n' "$failed" "$passed"
  exit 1
fi
report PASS "$exec_label" "probes run in the sandbox ($runner)"

i=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  i=$((i + 1))
  # shellcheck disable=SC2086
  set -- $line
  check=$1 kind=$2 expect=$3
  shift 3
  target="$*"
  case "$kind" in
    tcp) target="$1:$2" ;;
    spoof) target="gateway $3 using the neighbour address $2" ;;
  esac
  result=$(printf '%s\n' "$out" | awk -v n="$i" '$1 == n { $1 = ""; sub(/^ /, ""); print; exit }')
  [ -n "$result" ] || result="error no result"
  case "$expect:$result" in
    reach:open) report PASS "$check" "$target reachable" ;;
    reach:*) report FAIL "$check" "$target not reachable ($result)" ;;
    block:timeout) report PASS "$check" "$target blocked (timed out)" ;;
    block:open) report FAIL "$check" "$target reachable: it must be blocked" ;;
    block:refused) report FAIL "$check" "$target answered (connection refused): the packet got through" ;;
    block:unreachable) report PASS "$check" "$target blocked (no route)" ;;
    *) report FAIL "$check" "$target: $result" ;;
  esac
done <<EOF
$probes
EOF

if [ "$failed" = 0 ]; then
  printf 'PASS (%d passed)\n' "$passed"
  exit 0
fi
printf 'FAIL (%d failed, %d passed)\n' "$failed" "$passed"
exit 1
