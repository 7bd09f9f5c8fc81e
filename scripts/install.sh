#!/bin/sh
# Install agentlab on a Proxmox VE host (run as root from a built checkout: npm install && npm run build).
#
#   scripts/install.sh [--root DIR] [--backend shell|api]  install (or upgrade) the code, unit and layout
#   scripts/install.sh [--root DIR] --uninstall [--purge]  remove the code and unit; --purge also removes
#                                                         /etc/agentlab, /var/lib/agentlab (all data) and
#                                                         the agentlab group (backups in /var/backups/agentlab
#                                                         are kept: remove them yourself)
#   scripts/install.sh --help                             this text
#
# Layout: code in /opt/agentlab, launchers /usr/local/bin/agentlab{,d}, man page agentlab(1), config /etc/agentlab (0750) with
# config.yaml (0600, written only if missing) and profiles/ (copied only if missing), data
# /var/lib/agentlab (0750), unit /etc/systemd/system/agentlabd.service, group agentlab, and the timers
# agentlab-maintenance.timer (daily `agentlab maintenance run`) and agentlab-backup.timer (daily
# `agentlab db backup` into /var/backups/agentlab, newest 7 kept) with their services.
# The unit runs unsandboxed, as the shell backend needs; for the api backend (proxmox_backend: api in
# config.yaml, or --backend api for a first install) the sandbox drop-in agentlabd.service.d/api-backend.conf is added.
# Re-run this script after changing proxmox_backend. See docs/runbook.md "Installing: the systemd unit".
# --root installs under another directory (for packaging and tests); then no group is created and
# systemd is not touched.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
root=/
action=install
purge=0
backend=
while [ "$#" -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=1; shift ;;
    --backend) backend=${2:?--backend needs shell or api}; shift 2 ;;
    --backend=*) backend=${1#--backend=}; shift ;;
    -h | --help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in
  "" | shell | api) ;;
  *) echo "install: --backend must be shell or api, not '$backend'" >&2; exit 2 ;;
esac
root=${root%/}
live=0
[ -z "$root" ] && live=1

say() { printf 'install: %s\n' "$*"; }
# Housekeeping units (docs/maintenance.md): oneshot services started by their timers.
timer_units="agentlab-maintenance.service agentlab-maintenance.timer agentlab-backup.service agentlab-backup.timer"

if [ "$live" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or use --root DIR to install into a directory)" >&2
  exit 1
fi

if [ "$action" = uninstall ]; then
  if [ "$live" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now agentlab-maintenance.timer agentlab-backup.timer 2>/dev/null || true
    systemctl disable --now agentlabd.service 2>/dev/null || true
  fi
  for unit in $timer_units; do rm -f "$root/etc/systemd/system/$unit"; done
  rm -f "$root/etc/systemd/system/agentlabd.service" "$root/usr/local/bin/agentlab" "$root/usr/local/bin/agentlabd"
  rm -f "$root/usr/local/share/man/man1/agentlab.1"
  rm -f "$root/etc/systemd/system/agentlabd.service.d/api-backend.conf"
  rmdir "$root/etc/systemd/system/agentlabd.service.d" 2>/dev/null || true
  rm -rf "$root/opt/agentlab"
  if [ "$purge" = 1 ]; then
    rm -rf "$root/etc/agentlab" "$root/var/lib/agentlab"
    if [ "$live" = 1 ] && getent group agentlab >/dev/null 2>&1; then
      groupdel agentlab && say "removed group agentlab"
    fi
    say "removed agentlab, its configuration and its data"
    [ -d "$root/var/backups/agentlab" ] && say "kept the database backups in $root/var/backups/agentlab (rm -r it to remove them)"
  else
    say "removed agentlab; kept $root/etc/agentlab and $root/var/lib/agentlab (--purge removes them)"
  fi
  [ "$live" = 1 ] && command -v systemctl >/dev/null 2>&1 && systemctl daemon-reload || true
  exit 0
fi

if [ ! -f "$repo/dist/src/daemon/main.js" ] || [ ! -d "$repo/node_modules" ]; then
  echo "install: build first: npm install && npm run build" >&2
  exit 1
fi

# The backend decides the unit's sandbox, and the unit must suit the backend the daemon will use (a
# sandboxed shell backend fails every task): an existing config.yaml decides (no proxmox_backend key:
# shell, the daemon's default) and --backend may only agree with it; a new config.yaml is written with
# --backend's value. Decided before anything is installed, so that a bad value changes nothing.
config_backend=
if [ -f "$root/etc/agentlab/config.yaml" ]; then
  config_backend=$(sed -n 's/^proxmox_backend:[[:space:]]*["'"'"']\{0,1\}\([a-z]*\).*/\1/p' "$root/etc/agentlab/config.yaml" | tail -n 1)
  config_backend=${config_backend:-shell}
fi
if [ -z "$backend" ]; then
  backend=${config_backend:-shell}
elif [ -n "$config_backend" ] && [ "$config_backend" != "$backend" ]; then
  echo "install: --backend $backend contradicts proxmox_backend: $config_backend in $root/etc/agentlab/config.yaml (no key: shell); set proxmox_backend there and run this again without --backend" >&2
  exit 2
fi
case "$backend" in
  shell | api) ;;
  *) echo "install: proxmox_backend in $root/etc/agentlab/config.yaml is '$backend'; expected shell or api" >&2; exit 2 ;;
esac

# Code: the built output, production dependencies, launchers, defaults and docs.
dest="$root/opt/agentlab"
rm -rf "$dest.new"
mkdir -p "$dest.new/dist"
cp -r "$repo/dist/src" "$dest.new/dist/src"
cp -r "$repo/bin" "$repo/profiles" "$repo/docs" "$repo/systemd" "$repo/package.json" "$repo/package-lock.json" "$repo/LICENSE" "$dest.new/"
mkdir -p "$dest.new/scripts"
cp -r "$repo/scripts/install.sh" "$dest.new/scripts/"
[ -d "$repo/scripts/net" ] && cp -r "$repo/scripts/net" "$dest.new/scripts/net"
# The guest runner: the daemon puts it into every job sandbox's cloud-init snippet.
cp -r "$repo/scripts/guest" "$dest.new/scripts/guest"
cp -r "$repo/node_modules" "$dest.new/node_modules"
# --ignore-scripts: the copied modules are already built for this host; without it npm 11 rebuilds
# better-sqlite3 from source (minutes, and a compiler a Proxmox host need not have).
(cd "$dest.new" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null 2>&1) || say "warning: could not prune dev dependencies"
rm -rf "$dest.old"
[ -d "$dest" ] && mv "$dest" "$dest.old"
mv "$dest.new" "$dest"
rm -rf "$dest.old"
say "code in $dest"

mkdir -p "$root/usr/local/bin"
install -D -m 0644 "$repo/docs/agentlab.1" "$root/usr/local/share/man/man1/agentlab.1"
ln -sf /opt/agentlab/bin/agentlab "$root/usr/local/bin/agentlab"
ln -sf /opt/agentlab/bin/agentlabd "$root/usr/local/bin/agentlabd"

if [ "$live" = 1 ] && ! getent group agentlab >/dev/null 2>&1; then
  groupadd --system agentlab
  say "created group agentlab (add users with: usermod -aG agentlab USER)"
fi

install -d -m 0750 "$root/etc/agentlab" "$root/var/lib/agentlab"
# The SSH key pair whose public half sandboxes get (ssh_public_key_path: /etc/agentlab/keys/<name>.pub).
install -d -m 0700 "$root/etc/agentlab/keys"
if [ ! -e "$root/etc/agentlab/config.yaml" ]; then
  umask 077
  cat >"$root/etc/agentlab/config.yaml" <<'YAML'
# agentlab daemon configuration. Every key has a default (docs/configuration.md); set only what differs.
# proxmox_backend: shell          # or api, with proxmox_api_url, proxmox_api_token, proxmox_tls_ca_path
# ssh_public_key_path: /etc/agentlab/keys/agentlab_ed25519.pub   # ssh-keygen -t ed25519 -f /etc/agentlab/keys/agentlab_ed25519
# log_level: info
YAML
  if [ "$backend" = api ]; then
    echo "proxmox_backend: api   # --backend api: also set proxmox_api_url, proxmox_api_token, proxmox_tls_ca_path" >>"$root/etc/agentlab/config.yaml"
  fi
  umask 022
  say "wrote $root/etc/agentlab/config.yaml (defaults, proxmox_backend: $backend)"
else
  say "kept existing $root/etc/agentlab/config.yaml"
fi
if [ ! -e "$root/etc/agentlab/profiles" ]; then
  cp -r "$repo/profiles" "$root/etc/agentlab/profiles"
  say "installed default profiles in $root/etc/agentlab/profiles"
else
  say "kept existing $root/etc/agentlab/profiles"
fi

mkdir -p "$root/etc/systemd/system"
install -m 0644 "$repo/systemd/agentlabd.service" "$root/etc/systemd/system/agentlabd.service"
for unit in $timer_units; do install -m 0644 "$repo/systemd/$unit" "$root/etc/systemd/system/$unit"; done
dropin="$root/etc/systemd/system/agentlabd.service.d/api-backend.conf"
if [ "$backend" = api ]; then
  install -d -m 0755 "$(dirname "$dropin")"
  install -m 0644 "$repo/systemd/agentlabd-api-backend.conf" "$dropin"
  say "api backend: agentlabd runs sandboxed ($dropin); re-run this script if you switch to the shell backend"
else
  if [ -e "$dropin" ]; then
    rm -f "$dropin"
    rmdir "$(dirname "$dropin")" 2>/dev/null || true
    say "removed the api backend's sandbox drop-in $dropin"
  fi
  say "shell backend: agentlabd runs unsandboxed, like pvedaemon (pvesh runs Proxmox's workers in it; docs/runbook.md)"
fi
if [ "$live" = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable agentlabd.service >/dev/null 2>&1 || true
  say "enabled agentlabd.service; start it with: systemctl start agentlabd (or restart it after an upgrade)"
  systemctl enable --now agentlab-maintenance.timer agentlab-backup.timer >/dev/null 2>&1 || true
  say "enabled agentlab-maintenance.timer (daily maintenance run) and agentlab-backup.timer (daily backup, 7 kept); see: systemctl list-timers 'agentlab-*'"
else
  say "unit in $root/etc/systemd/system/agentlabd.service; timers agentlab-maintenance.timer and agentlab-backup.timer beside it"
fi
