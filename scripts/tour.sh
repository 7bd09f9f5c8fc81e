#!/bin/sh
# The guided tour: builds agentlab, starts a real agentlabd in a throw-away directory (its own config,
# profiles, SQLite database and Unix socket), and walks through the commands that exist today.
# Nothing outside the temp directory is touched; the daemon is stopped at the end.
set -eu
cd "$(dirname "$0")/.."

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "tour: installing npm dependencies (first run only)"
  npm ci --no-audit --no-fund >/dev/null
fi
npm run -s build

dir=$(mktemp -d "${TMPDIR:-/tmp}/agentlab-tour-XXXXXX")
cp -r profiles "$dir/profiles"
umask 077
cat >"$dir/config.yaml" <<YAML
# A tour daemon: every path is relative to this file's directory.
profiles_dir: profiles
data_dir: data
run_dir: run
log_level: info
YAML
export AGENTLAB_SOCKET="$dir/run/agentlabd.sock"

node bin/agentlabd --config "$dir/config.yaml" >"$dir/agentlabd.log" 2>&1 &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

i=0
until [ -S "$AGENTLAB_SOCKET" ] && node bin/agentlab status >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 100 ] || ! kill -0 "$daemon" 2>/dev/null; then
    echo "tour: agentlabd did not start; its output:" >&2
    cat "$dir/agentlabd.log" >&2
    exit 1
  fi
  sleep 0.1
done

step() {
  printf '\n\033[1m$ %s\033[0m\n' "$*"
  # shellcheck disable=SC2068
  "$@" || printf '(exit status %s)\n' "$?"
}
agentlab() { node bin/agentlab "$@"; }

echo "agentlabd is running in $dir (socket $AGENTLAB_SOCKET)."
echo "Everything below is the real CLI talking JSON-RPC to that daemon."
step agentlab status
step agentlab profile list
step agentlab --json profile list
step agentlab version
echo
echo "Errors explain themselves; here the CLI is pointed at a socket nobody serves:"
step agentlab --socket "$dir/nothing.sock" status

printf '\n\033[1mStopping agentlabd (SIGTERM: drain, close the database, remove the socket)\033[0m\n'
kill -TERM "$daemon"
wait "$daemon" || true
trap - EXIT INT TERM
tail -n 2 "$dir/agentlabd.log"
[ -S "$AGENTLAB_SOCKET" ] && echo "socket still present (unexpected)" || echo "socket removed."
echo
echo "Tour files (config, database, daemon log) are kept in $dir."
