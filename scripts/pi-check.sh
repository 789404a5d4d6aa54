#!/usr/bin/env bash
# The Raspberry Pi check (docs/EDGE.md, "On ARM, emulated"): a Debian bookworm root for a
# Pi's architecture, run by qemu-user-static on this machine; fedmq[agent] installed into it
# from this checkout with pip (wheels only for the dependencies: nothing is compiled); one
# agent with the numpy trainer inside it takes part in W1 (20 agents, 20 rounds of MNIST 2NN)
# against a coordinator, 19 agents and a Mosquitto on this machine's loopback, to the end of
# the run. Prints import time, idle and training RSS, per-round training time (emulated: not
# a Pi's figure), installed size per distribution; writes bench-results/pi-ARCH.json.
#
#   sudo scripts/pi-check.sh [arm64|armhf]      (default arm64; needs root: chroot, binfmt)
#
# The root is cached in $FEDMQ_PI_CACHE (default ~/.cache/fedmq-pi), outside the checkout,
# so a re-run skips debootstrap; the venv inside it is made afresh each run (pip's download
# cache is kept). armhf: the dependencies that PyPI has no armv7l wheel for are reported and
# taken from Debian's packages instead (python3-numpy, ...), as a 32-bit Pi OS user would.
# Needs the host venv (scripts/setup.sh coordinator,dev) and the shared MNIST.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDMQ_VENV:-$ROOT/.venv}"
ARCH="${1:-arm64}"
CACHE="${FEDMQ_PI_CACHE:-${HOME:-/root}/.cache/fedmq-pi}"
MNIST="${FEDMQ_MNIST_DIR:-$ROOT/../shared/data/mnist}"
SUITE=bookworm
case "$ARCH" in
  arm64) QEMU=aarch64 ;;
  armhf) QEMU=arm ;;
  *) echo "pi-check: architecture must be arm64 or armhf, got $ARCH" >&2; exit 2 ;;
esac
CHROOT="$CACHE/$SUITE-$ARCH"
say() { echo "pi-check: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "needs root (chroot, binfmt_misc)"; exit 2; }
started=$(date +%s)

# --- tools from Debian ------------------------------------------------------------------
if ! command -v debootstrap >/dev/null || [ ! -f "/usr/lib/binfmt.d/qemu-$QEMU.conf" ]; then
  say "installing debootstrap and qemu-user-static from apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static
fi

# --- the binfmt handler: the kernel runs $ARCH binaries through qemu ----------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU" ]; then
  # The conf's F flag opens the interpreter now, so the root needs no copy of qemu.
  cat "/usr/lib/binfmt.d/qemu-$QEMU.conf" > /proc/sys/fs/binfmt_misc/register
fi

# --- the root, cached -------------------------------------------------------------------
# The mirror is the one this machine's apt uses (FEDMQ_PI_MIRROR overrides).
mirror() {
  cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    sed -n -e 's/^URIs: *\([^ ]*\/debian\)$/\1/p' -e 's/^deb  *\([^ ]*\/debian\)  .*/\1/p'
}
MIRROR="${FEDMQ_PI_MIRROR:-$(mirror | head -1 || true)}"
[ -n "$MIRROR" ] || { say "no Debian mirror in the apt sources: set FEDMQ_PI_MIRROR"; exit 2; }
if [ ! -f "$CHROOT/.fedmq-root" ]; then
  say "debootstrap $SUITE $ARCH into $CHROOT (once; cached)"
  rm -rf "$CHROOT"
  mkdir -p "$CACHE"
  t0=$(date +%s)
  debootstrap --arch="$ARCH" --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$SUITE" "$CHROOT" "$MIRROR" >&2
  echo "debootstrap_s=$(( $(date +%s) - t0 ))" > "$CHROOT/.fedmq-root"
fi

[ -x "$VENV/bin/python" ] || { say "no host venv at $VENV: run scripts/setup.sh coordinator,dev"; exit 2; }
[ -f "$MNIST/t10k-images-idx3-ubyte.gz" ] || { say "no MNIST in $MNIST (FEDMQ_MNIST_DIR)"; exit 2; }

# --- the checkout, the data and the network inside the root --------------------------------
mounted=()
cleanup() {
  local m
  for (( i=${#mounted[@]}-1; i>=0; i-- )); do umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || true; done
}
trap cleanup EXIT
bind() {  # bind SRC DEST [ro]
  mkdir -p "$2"; mount --bind "$1" "$2"; mounted+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
mountpoint -q "$CHROOT/proc" || { mount -t proc proc "$CHROOT/proc"; mounted+=("$CHROOT/proc"); }
mountpoint -q "$CHROOT/dev" || bind /dev "$CHROOT/dev"
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
# The host's CA bundle, so that pip inside trusts what pip here trusts (a local TLS proxy).
HOST_CA="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
cp "$HOST_CA" "$CHROOT/etc/ssl/certs/host-ca-certificates.crt"
# The checkout as committed plus uncommitted edits, without .venv or results: what pip sees.
rm -rf "$CHROOT/src/fedmq" && mkdir -p "$CHROOT/src/fedmq"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
  (cd "$ROOT" && xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) | tar -xf - -C "$CHROOT/src/fedmq"
bind "$MNIST" "$CHROOT/data/mnist" ro
mkdir -p "$CACHE/pip-$ARCH" && bind "$CACHE/pip-$ARCH" "$CHROOT/root/.cache/pip"
in_root() {
  chroot "$CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt ${https_proxy:+https_proxy=$https_proxy} "$@"
}

# --- fedmq[agent] in a fresh venv, wheels only for the dependencies -------------------------
PY=/opt/fedmq/bin/python
mkdir -p "$ROOT/bench-results"
rm -rf "$CHROOT/opt/fedmq"
t0=$(date +%s)
if [ "$ARCH" = armhf ]; then
  # PyPI has no armv7l wheels for numpy, msgpack or zstd: a 32-bit Pi OS user takes
  # Debian's builds (or piwheels'); say which were missing, then do that.
  missing=$(in_root python3 -m venv /tmp/probe-venv >/dev/null && for dep in numpy msgpack zstandard backports.zstd paho-mqtt typing_extensions; do
    in_root /tmp/probe-venv/bin/pip download -q --no-deps --only-binary=:all: -d /tmp/probe-dl "$dep" >/dev/null 2>&1 || printf '%s ' "$dep"; done)
  say "no armv7l wheel on the registry for: ${missing:-none}"
  echo "$missing" > "$CACHE/armhf-no-wheel.txt"
  in_root apt-get update -qq
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-numpy python3-msgpack >/dev/null
  in_root python3 -m venv --system-site-packages /opt/fedmq
  # without the agent extra (no zstd wheel either): the agent declines rounds sent with zstd
  in_root $PY -m pip install -q --disable-pip-version-check --only-binary=:all: /src/fedmq
  EXTRAS=-
  # what Debian's packages cost (KiB, dpkg's Installed-Size): pip's RECORDs do not list them
  in_root dpkg-query -W -f='${Package} ${Installed-Size}\n' python3-numpy python3-msgpack \
    libblas3 liblapack3 libgfortran5 > "$ROOT/bench-results/pi-armhf-debian.txt"
else
  in_root python3 -m venv /opt/fedmq
  in_root $PY -m pip install -q --disable-pip-version-check --only-binary=:all: "/src/fedmq[agent]"
  EXTRAS=agent
fi
pip_s=$(( $(date +%s) - t0 ))
say "installed in ${pip_s} s; probing size and import time (emulated)"
in_root $PY /src/fedmq/tools/fedmq_tools/bench/probe.py "$EXTRAS" > "$ROOT/bench-results/pi-$ARCH-probe.json"

# --- W1 with one emulated agent ----------------------------------------------------------
say "W1: coordinator, 19 agents and Mosquitto here; agent-0 ($ARCH, numpy trainer) emulated"
"$VENV/bin/fedmq" bench device \
  --agent-cmd "chroot $CHROOT /usr/bin/env -i PATH=/usr/bin:/bin LANG=C.UTF-8 OPENBLAS_NUM_THREADS=1 /opt/fedmq/bin/fedmq" \
  --agent-data /data/mnist --data "$MNIST" --label "$ARCH (qemu-user, emulated)" \
  --probe "$ROOT/bench-results/pi-$ARCH-probe.json" --setup-s "$pip_s" \
  --out "$ROOT/bench-results/pi-$ARCH.json"
say "done in $(( $(date +%s) - started )) s ($(cat "$CHROOT/.fedmq-root"))"
