#!/bin/sh
# The whole test suite, from a fresh machine: system packages the tests use, npm dependencies, build,
# lint, generated-docs check, then every test file under dist/test with Node's test runner.
set -eu
cd "$(dirname "$0")/.."

need_apt=""
command -v sqlite3 >/dev/null 2>&1 || need_apt="$need_apt sqlite3"
# The network isolation system test uses real nftables in network namespaces (nft and ip live in
# /usr/sbin, which a non-root PATH may lack).
{ command -v nft || [ -x /usr/sbin/nft ]; } >/dev/null 2>&1 || need_apt="$need_apt nftables"
{ command -v ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } >/dev/null 2>&1 || need_apt="$need_apt iproute2"
command -v ping >/dev/null 2>&1 || need_apt="$need_apt iputils-ping"
command -v systemd-analyze >/dev/null 2>&1 || need_apt="$need_apt systemd"
# The man page test renders docs/agentlab.1 with groff (install.test).
command -v groff >/dev/null 2>&1 || need_apt="$need_apt groff-base"
# The fish completion script is run by fish itself (integration/completion.test).
command -v fish >/dev/null 2>&1 || need_apt="$need_apt fish"
# Workspace fsck runs the real e2fsck/debugfs/mkfs.ext4 (e2fsprogs) and blkid/partx/losetup (util-linux, mount).
{ command -v e2fsck || [ -x /usr/sbin/e2fsck ] || [ -x /sbin/e2fsck ]; } >/dev/null 2>&1 || need_apt="$need_apt e2fsprogs"
{ command -v blkid || [ -x /usr/sbin/blkid ] || [ -x /sbin/blkid ]; } >/dev/null 2>&1 || need_apt="$need_apt util-linux"
{ command -v losetup || [ -x /usr/sbin/losetup ] || [ -x /sbin/losetup ]; } >/dev/null 2>&1 || need_apt="$need_apt mount"
# The systemd unit's namespace test (test/system/unit-namespace.test.ts): unshare, setpriv, findmnt.
{ command -v unshare && command -v setpriv && command -v findmnt; } >/dev/null 2>&1 || need_apt="$need_apt util-linux"
command -v curl >/dev/null 2>&1 || need_apt="$need_apt curl"
# The guest runner (scripts/guest/agent-runner.sh) runs for real in the simulator's guests.
command -v jq >/dev/null 2>&1 || need_apt="$need_apt jq"
command -v git >/dev/null 2>&1 || need_apt="$need_apt git"
# init --smoke-test's second repo server kind (git's dumb HTTP over python3 -m http.server).
command -v python3 >/dev/null 2>&1 || need_apt="$need_apt python3"
# Real guests (scripts/dev/guest-image builds the image, test/helpers/real-guest boots it): QEMU and
# qemu-img, debootstrap, genisoimage for the cidata seed, a kernel for the guest with mkinitramfs for its
# small initrd, ssh into the guest, and (for its network namespaces) ssh-keygen.
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt="$need_apt qemu-system-x86"
command -v qemu-img >/dev/null 2>&1 || need_apt="$need_apt qemu-utils"
{ command -v debootstrap || [ -x /usr/sbin/debootstrap ]; } >/dev/null 2>&1 || need_apt="$need_apt debootstrap"
command -v genisoimage >/dev/null 2>&1 || need_apt="$need_apt genisoimage"
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_apt="$need_apt linux-image-amd64"
{ command -v mkinitramfs || [ -x /usr/sbin/mkinitramfs ]; } >/dev/null 2>&1 || need_apt="$need_apt initramfs-tools"
command -v ssh >/dev/null 2>&1 || need_apt="$need_apt openssh-client"
# Real OpenSSH sshd processes: agentlab ssh's system test (test/system/ssh.test.ts: the sandbox and the
# jump host) and sandbox exec's test (test/integration/sandbox-exec.test.ts).
{ command -v sshd || [ -x /usr/sbin/sshd ]; } >/dev/null 2>&1 || need_apt="$need_apt openssh-server"
# The real-guest suite's sandbox network (scripts/dev/guest-net): DHCP and DNS on vmbr1 as on a host.
{ command -v dnsmasq || [ -x /usr/sbin/dnsmasq ]; } >/dev/null 2>&1 || need_apt="$need_apt dnsmasq-base"
# The metrics test checks a real scrape and the example alert rules with promtool, from Debian's
# prometheus package (whose server is not wanted: see policy-rc.d below).
command -v promtool >/dev/null 2>&1 || need_apt="$need_apt prometheus"
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "test: installing system packages:$need_apt"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    # No package's service may start during the install (prometheus' server would hold port 9090):
    # invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101 means "not allowed". Only a
    # policy-rc.d this script wrote is removed again.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      own_policy=1
    fi
    installed=0
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_apt >/dev/null || installed=$?
    [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
    [ "$installed" = 0 ] || exit "$installed"
    # Nor start at the next boot: only promtool is wanted (node-exporter comes as a recommendation).
    case "$need_apt" in *prometheus*)
      for unit in prometheus prometheus-node-exporter; do systemctl disable "$unit" >/dev/null 2>&1 || true; done ;;
    esac
  else
    echo "test: missing system packages:$need_apt (run as root once, or install them)" >&2
    exit 1
  fi
fi

# The installer creates the socket's group; as root, do the same so the socket-group test runs for real.
if [ "$(id -u)" = 0 ] && ! getent group agentlab >/dev/null 2>&1; then
  groupadd --system agentlab
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # npm install, not npm ci: this registry serves only this platform's optional packages (biome's
  # binaries for other systems 404), so the lock file cannot list them and npm ci would refuse it.
  npm install --no-audit --no-fund
fi
npm run -s build
npx biome check .
node dist/scripts/gen-docs.js --check
cd dist/test
# Only *.test.js files are tests; helpers and the simulator under dist/test are not.
if [ "$#" -gt 0 ]; then
  exec node --test --test-concurrency=2 "$@"
fi
# The fast suite first, then the real-guest suite on its own: its QEMU guests run under TCG and need
# both cores, and the fast suite's timing-sensitive tests must not share them with a booting guest.
# The Proxmox-faults file runs beside the rest, as its own process started first: it is the longest
# (about 12 min) and mostly waits (task timeouts, a failed start's wait for the VM's tasks), so in its
# sorted place (Node's runner sorts the files it is given) it ran its last minutes alone on idle cores.
# Its report is printed after the rest's, whole, so the two do not interleave.
waits_most=./reliability/proxmox-faults.test.js
waits_most_log=$(mktemp)
node --test "$waits_most" >"$waits_most_log" 2>&1 &
waits_most_pid=$!
status=0
# shellcheck disable=SC2046
node --test --test-concurrency=2 \
  $(find . -name '*.test.js' -not -path './real-guest/*' -not -path "$waits_most" | sort) || status=$?
wait "$waits_most_pid" || status=$?
echo "test: $waits_most (run beside the rest):"
cat "$waits_most_log"
rm -f "$waits_most_log"
[ "$status" -eq 0 ] || exit "$status"
real_guest_tests=$(find ./real-guest -name '*.test.js' 2>/dev/null | sort)
[ -n "$real_guest_tests" ] || exit 0
if [ "$(id -u)" = 0 ]; then
  # Built once per cache key (scripts/dev/guest-image --help); a cached image answers at once.
  started=$(date +%s)
  ../../scripts/dev/guest-image >/dev/null
  echo "test: guest image ready in $(($(date +%s) - started)) s"
fi
# shellcheck disable=SC2086
exec node --test --test-concurrency=1 $real_guest_tests
