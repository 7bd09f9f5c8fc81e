#!/bin/sh
# The guided tour: builds agentlab, starts the built-in Proxmox simulator and a real agentlabd against
# it in a throw-away directory (scripts/dev/simhost), and walks through a sandbox's life with the real
# CLI. Nothing outside the temp directory is touched; both processes are stopped at the end.
#
#   npm run tour                     shell backend (qm/pvesh/pvesm)
#   npm run tour -- --backend api    REST API backend (HTTPS, API token, TLS verified against the sim's CA)
#   npm run tour -- --real-guests    as root: every sandbox a real QEMU guest (scripts/tour-real-guests.sh)
set -eu
cd "$(dirname "$0")/.."

backend=shell
real_guests=0
case "${1:-}" in
  --backend) backend=${2:-shell} ;;
  --real-guests) real_guests=1 ;;
esac

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "tour: installing npm dependencies (first run only)"
  npm install --no-audit --no-fund >/dev/null
fi
npm run -s build
[ "$real_guests" = 1 ] && exec sh scripts/tour-real-guests.sh

dir=$(mktemp -d "${TMPDIR:-/tmp}/agentlab-tour-XXXXXX")
scripts/dev/simhost up "$dir" --backend "$backend" >/dev/null
gitd=""
cleanup() {
  [ -n "$gitd" ] && kill "$gitd" 2>/dev/null
  scripts/dev/simhost down "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
export AGENTLAB_SOCKET="$dir/run/agentlabd.sock"

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() {
  printf '\n\033[1m$ %s\033[0m\n' "$*"
  "$@" || printf '(exit status %s)\n' "$?"
}
agentlab() { node bin/agentlab "$@"; }

say "agentlabd is running in $dir against the Proxmox simulator ($backend backend)."
echo "Everything below is the real CLI talking JSON-RPC to that daemon, which drives the simulator"
echo "exactly as it would drive a Proxmox VE host."
step agentlab status
step agentlab profile list

say "Create a sandbox: clone the template, configure, boot, wait for the guest, snapshot 'clean'."
step agentlab sandbox new --profile yolo-ephemeral --ttl 2h
vmid=$(agentlab --json ls | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).sandboxes[0].vmid))')
step agentlab new +yolo +workspace --tag demo
step agentlab sandbox list
step agentlab sandbox show "$vmid"

say "Leases renew only while RUNNING; a stopped sandbox says why not."
step agentlab sandbox lease renew "$vmid" --ttl 3h
step agentlab sandbox stop "$vmid"
step agentlab sandbox lease renew "$vmid" --ttl 3h
step agentlab sandbox start "$vmid"

say "Pause and resume keep the sandbox's memory; revert takes its root disk back to 'clean'."
step agentlab sandbox pause "$vmid"
step agentlab sandbox resume "$vmid"
step agentlab sandbox revert --force "$vmid"

say "Destroy one; then remove a VM behind agentlab's back: inventory reports the drift, prune clears it."
step agentlab sandbox destroy "$vmid"
other=$((vmid + 1))
node dist/test/pvesim/cli.js control "$dir/pve" --remove-vm "$other" >/dev/null
echo "(VM $other removed from the simulator directly, as if someone ran qm destroy $other)"
step agentlab sandbox inventory
step agentlab sandbox prune
step agentlab sandbox list --all
step agentlab logs "$vmid" --tail 8

say "Workspaces are persistent /work disks, owned by a protected holder VM: no sandbox destroy deletes them."
step agentlab workspace create --name proj --size 4G
step agentlab sandbox new --profile yolo-ephemeral --workspace proj
step agentlab workspace list
say "Snapshots, forks and fsck need the workspace detached; the refusal says what to run:"
step agentlab workspace snapshot create proj before-change
step agentlab workspace detach proj
step agentlab workspace snapshot create proj before-change
step agentlab workspace fsck proj
step agentlab workspace fork proj --name proj-try --from-snapshot before-change
say "Sessions: named work on a workspace. stop destroys the sandbox and keeps the workspace; resume makes a new one."
step agentlab session create --name try --profile yolo-ephemeral --workspace proj-try
step agentlab session stop try
step agentlab workspace snapshot list proj-try
step agentlab session resume try
step agentlab session list

say "Jobs: a repository and a task, run unattended by the guest runner in a sandbox of its own."
# The simulator's guests run the real runner (scripts/guest/agent-runner.sh), which needs git, jq, curl.
missing=""
for tool in git jq curl; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "tour: installing$missing for the guest runner"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 && missing=""
fi
if [ -n "$missing" ]; then
  echo "(skipped: the guest runner needs$missing on this machine: apt-get install$missing)"
else
  repo="$dir/demo-repo"
  mkdir -p "$repo/.agentlab" "$dir/serve"
  printf '#!/bin/sh\necho "the agent got its task: $(cat)"\necho "working in $(pwd) on $(git rev-parse --short HEAD)"\n' \
    >"$repo/.agentlab/run.sh"
  chmod +x "$repo/.agentlab/run.sh"
  git -C "$repo" init -q && git -C "$repo" symbolic-ref HEAD refs/heads/main && git -C "$repo" add .agentlab
  git -C "$repo" -c user.name=tour -c user.email=tour@agentlab.invalid -c commit.gpgsign=false commit -q -m demo
  git clone -q --bare "$repo" "$dir/serve/demo.git"
  port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  git daemon --reuseaddr --export-all --base-path="$dir/serve" --listen=127.0.0.1 --port="$port" "$dir/serve" \
    2>"$dir/git-daemon.log" &
  gitd=$!
  tries=0
  until git ls-remote "git://127.0.0.1:$port/demo.git" >/dev/null 2>&1 || [ "$tries" -ge 50 ]; do
    sleep 0.1
    tries=$((tries + 1))
  done
  echo "A local git daemon serves a tiny repository whose .agentlab/run.sh is the agent."
  step agentlab job run --repo "git://127.0.0.1:$port/demo.git" --task "say hello" --profile yolo-ephemeral --wait
  step agentlab job list
  kill "$gitd" 2>/dev/null
  gitd=""
fi

say "agentlab init checks the host; this simulated host has no vmbr1 or nftables yet, so it says how to fix that:"
step agentlab init

say "Errors explain themselves, with the fix:"
step agentlab sandbox new --profile no-such-profile
step agentlab --socket "$dir/nothing.sock" status

say "Stopping agentlabd (SIGTERM: drain, close the database, remove the socket) and the simulator."
cleanup
trap - EXIT INT TERM
tail -n 1 "$dir/agentlabd.log"
echo
echo "Tour files (config, database, simulator state, daemon log) are kept in $dir."
