#!/usr/bin/env bash
# Idempotent set-up on Debian/Ubuntu: Mosquitto from apt when missing, a virtualenv
# with the pinned CPU build of torch, and fedmq with the extras given as arguments.
# Sourced by demo.sh and test.sh; FEDMQ_VENV overrides the venv location.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDMQ_VENV:-$ROOT/.venv}"
EXTRAS="${1:-coordinator}"
# The CPU wheel; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC="${FEDMQ_TORCH_SPEC:-torch==2.13.0}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }

if ! have_mosquitto; then
  echo "setup: installing Mosquitto from apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients
fi
have_mosquitto || { echo "setup: Mosquitto could not be installed" >&2; exit 1; }

if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "setup: installing python3-venv from apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
echo "setup: installing $TORCH_SPEC and fedmq[$EXTRAS]"
"$VENV/bin/pip" install -q --disable-pip-version-check "$TORCH_SPEC"
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[$EXTRAS]"
# Developers (the dev extra) also get the tools: benchmarks, swarm, reference, chaos.
case ",$EXTRAS," in
  *,dev,*) "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT/tools" ;;
esac

# The browser side (web/, tests/browser, `fedmq demo --browser-agents`): Debian's chromium
# (never a downloaded browser build), node and npm, and the npm packages pinned in
# web/package-lock.json. `npm ci` runs again only when the lockfile changed.
# For developers (the dev extra) and for FEDMQ_BROWSER=1 (the demo with --browser-agents):
# the plain demo needs none of it, its pages ship inside the Python package.
if [ "${FEDMQ_BROWSER:-}" = 1 ] || case ",$EXTRAS," in *,dev,*) true ;; *) false ;; esac; then
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    echo "setup: installing chromium from apt"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm from apt"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
  { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; } \
    || { echo "setup: chromium could not be installed" >&2; exit 1; }
  command -v npm >/dev/null 2>&1 || { echo "setup: npm could not be installed" >&2; exit 1; }
  STAMP="$ROOT/web/node_modules/.fedmq-lockfile"
  if ! cmp -s "$ROOT/web/package-lock.json" "$STAMP"; then
    echo "setup: installing web/ npm packages from the lockfile"
    (cd "$ROOT/web" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$ROOT/web/package-lock.json" "$STAMP"
  fi
fi
