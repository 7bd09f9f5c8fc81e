#!/bin/sh
# The tour with real guests (`npm run tour -- --real-guests`, as root): the Proxmox simulator boots every
# sandbox as a real QEMU virtual machine (TCG) from the Debian guest image (scripts/dev/guest-image,
# built and cached on first use), on a vmbr1 with the real ruleset and dnsmasq in network namespaces
# (scripts/dev/guest-net). Our cloud-init snippet is read by real cloud-init, the guest agent is real,
# the job runner runs under the guest's systemd. Everything is removed at the end.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tour --real-guests: run as root (network namespaces, QEMU taps, nftables)" >&2; exit 1; }

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() {
  printf '\n\033[1m$ %s\033[0m\n' "$*"
  "$@" || printf '(exit status %s)\n' "$?"
}
agentlab() { node bin/agentlab "$@"; }

say "Building (or reusing) the guest image: Debian bookworm with cloud-init, qemu-guest-agent and sshd."
started=$(date +%s)
image=$(scripts/dev/guest-image | tail -n 1)
echo "guest image $image ready in $(($(date +%s) - started)) s"

dir=$(mktemp -d "${TMPDIR:-/tmp}/agentlab-tour-rg-XXXXXX")
prefix="altour$$"
gitd=""
cleanup() {
  [ -n "$gitd" ] && kill "$gitd" 2>/dev/null
  scripts/dev/simhost down "$dir" >/dev/null 2>&1 || true
  scripts/dev/guest-net down "$prefix" "$dir/net" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
eval "$(scripts/dev/guest-net up "$prefix" "$dir/net")"
echo "203.0.113.2 inet.agentlab.test" >"$dir/net/dnsmasq.hosts"
kill -HUP "$(cat "$dir/net/dnsmasq.pid")"
ssh-keygen -q -t ed25519 -N "" -C agentlab-tour -f "$dir/id_ed25519"
scripts/dev/simhost up "$dir" --guest-image "$image" --netns "$host" --ssh-key "$dir/id_ed25519.pub" >/dev/null
export AGENTLAB_SOCKET="$dir/run/agentlabd.sock"
gssh() {
  ip netns exec "$host" ssh -i "$dir/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "agent@$1" "$2"
}

say "agentlabd runs in namespace $host with vmbr1 10.77.0.1/16, the agentlab ruleset and dnsmasq;"
echo "$lan is a LAN (192.168.50.2) and $inet the Internet (203.0.113.2)."
step agentlab status

say "Create a sandbox: the VM is a real QEMU guest; READY comes from its own phone-home."
started=$(date +%s)
step agentlab sandbox new --profile yolo-ephemeral --ttl 2h
first_boot=$(($(date +%s) - started))
vmid=$(agentlab --json ls | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).sandboxes[0].vmid))')
ip=$(agentlab --json sandbox show "$vmid" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).ip))')
echo "first boot: sandbox new -> RUNNING in $first_boot s"
step agentlab logs "$vmid" --tail 6

say "Inside the guest, over real ssh as agent@$ip:"
step gssh "$ip" 'uname -sr; cloud-init status; systemctl is-active qemu-guest-agent; ip -4 -o addr show scope global'
say "Isolation from inside: the Internet answers, the LAN and the host's Proxmox API do not."
ip netns exec "$inet" python3 -m http.server 8080 --bind 203.0.113.2 >/dev/null 2>&1 &
web=$!
sleep 1
step gssh "$ip" 'curl -s -o /dev/null -w "Internet: HTTP %{http_code}\n" -m 5 http://inet.agentlab.test:8080/'
step gssh "$ip" 'curl -s -o /dev/null -m 3 http://192.168.50.2:8080/ || echo "LAN: blocked (curl exit $?)"'
step gssh "$ip" 'curl -s -o /dev/null -m 3 http://10.77.0.1:8006/ || echo "host :8006: blocked (curl exit $?)"'
kill "$web" 2>/dev/null || true

say "A job: the real runner, started by the guest's systemd as agent, clones from the Internet side."
repo="$dir/demo-repo"
mkdir -p "$repo/.agentlab" "$dir/serve"
printf '#!/bin/sh\necho "the agent got its task: $(cat) as $(id -un) on $(hostname)"\n' >"$repo/.agentlab/run.sh"
chmod +x "$repo/.agentlab/run.sh"
git -C "$repo" init -q && git -C "$repo" symbolic-ref HEAD refs/heads/main && git -C "$repo" add .agentlab
git -C "$repo" -c user.name=tour -c user.email=tour@agentlab.invalid -c commit.gpgsign=false commit -q -m demo
git clone -q --bare "$repo" "$dir/serve/demo.git"
ip netns exec "$inet" git daemon --reuseaddr --export-all --base-path="$dir/serve" --listen=203.0.113.2 \
  "$dir/serve" 2>"$dir/git-daemon.log" &
gitd=$!
step agentlab job run --repo git://203.0.113.2/demo.git --task "say hello" --profile yolo-ephemeral --wait

say "Destroy: the QEMU process, its disk overlay and its tap go."
step agentlab sandbox destroy "$vmid"
step ip -n "$host" -o link show type tun

say "Stopping agentlabd, QEMU guests, dnsmasq and the namespaces."
cleanup
trap - EXIT INT TERM
echo "first boot took $first_boot s (guest start -> phone-home -> RUNNING, TCG)."
echo "Tour files (config, database, simulator state, daemon log, serial logs) are kept in $dir."
