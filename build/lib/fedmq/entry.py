"""The ``fedmq`` console script: ``fedmq agent`` skips the full CLI's imports.

A device runs only ``fedmq agent``; routing it to :mod:`fedmq.agent_cli` before
:mod:`fedmq.cli` is imported keeps the coordinator, the benchmarks and their
modules out of a long-running agent's memory. Standard library only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: top-level options that take a value (they may come before the sub-command)
_VALUED = frozenset({"--log-level"})


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is no option or option value."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if command_of(args) == "agent":
        from fedmq.agent_cli import main as agent_main

        return agent_main(args)
    from fedmq.cli import main as cli_main

    return cli_main(args)
