#!/usr/bin/env bash
# Set up (see setup.sh), then lint, type-check (mypy --strict) and run the whole suite.
# Integration tests start their own brokers on free ports. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEDMQ_VENV:-$ROOT/.venv}"
"$ROOT/scripts/setup.sh" "coordinator,dev"
cd "$ROOT"
"$VENV/bin/ruff" check .
# The JavaScript wire protocol against the shared vectors (protocol/vectors/), in node.
(cd "$ROOT/web" && node --test test/protocol/)
# every product package and the tools, strictly typed (pyproject.toml [tool.mypy])
"$VENV/bin/mypy"
exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
