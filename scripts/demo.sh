#!/usr/bin/env bash
# Set up (see setup.sh), then run the demo: a private Mosquitto, a coordinator and
# ten agents training on scikit-learn's digits. Extra arguments go to `fedmq demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# headless Chromium only when the demo starts browser agents
case " $* " in *" --browser-agents"*) export FEDMQ_BROWSER=1 ;; esac
"$ROOT/scripts/setup.sh" coordinator
exec "${FEDMQ_VENV:-$ROOT/.venv}/bin/fedmq" demo "$@"
