"""``fedmq coordinator --mode fedbuff`` flags reach the BufferConfig; sync stays the default."""

from __future__ import annotations

import pytest

from coordinator.staleness import BufferConfig
from fedmq.cli import parser
from fedmq.round_flags import buffer_config

BASE = ["coordinator", "--job", "j", "--broker", "mqtt://127.0.0.1:1", "--task", "digits"]


def test_synchronous_rounds_are_the_default() -> None:
    assert buffer_config(parser().parse_args(BASE)) is None


def test_fedbuff_flags_reach_the_buffer_config() -> None:
    args = parser().parse_args([*BASE, "--mode", "fedbuff", "--buffer-k", "4",
                                "--max-staleness", "2", "--concurrency", "6",
                                "--staleness", "poly:1"])
    assert buffer_config(args) == BufferConfig(k=4, max_staleness=2, concurrency=6,
                                               staleness="poly:1")


def test_a_bad_fedbuff_setting_stops_the_coordinator_at_start_up() -> None:
    args = parser().parse_args([*BASE, "--mode", "fedbuff", "--buffer-k", "0"])
    with pytest.raises(SystemExit, match="buffer k must be >= 1"):
        buffer_config(args)
