#!/usr/bin/env bash
# Set up (see setup.sh), then lint and run the whole suite. Integration tests start
# their own Mosquitto from mosquitto.conf on a free port. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDMQ_VENV:-$ROOT/.venv}"
"$ROOT/scripts/setup.sh" "coordinator,dev"
cd "$ROOT"
"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
