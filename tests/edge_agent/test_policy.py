"""The resource policy: pure rules with the time and memory passed in, and the veto hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_agent.policy import (
    MIB,
    MIN_ROUND_NEED,
    NEED_PER_MODEL_BYTE,
    Memory,
    ResourcePolicy,
    Window,
    read_memory,
    round_need,
    run_hook,
    veto,
)

PLENTY = Memory(available_bytes=4096 * MIB, rss_bytes=50 * MIB)
CONTEXT = {"job": "farm", "agent": "pi-7", "round": "3"}


def minute(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("22:00-06:00", ["22:00", "23:59", "00:00", "05:59"], ["06:00", "12:00", "21:59"]),
        ("09:30-17:00", ["09:30", "16:59"], ["09:29", "17:00", "00:00"]),
        ("00:00-24:00", ["00:00", "12:00", "23:59"], []),
    ],
)
def test_windows_include_their_start_exclude_their_end_and_wrap_midnight(
    window: str, inside: list[str], outside: list[str]
) -> None:
    policy = ResourcePolicy(windows=(Window.parse(window),))
    for t in inside:
        assert veto(policy, minute(t), PLENTY) is None, t
    for t in outside:
        reason = veto(policy, minute(t), PLENTY)
        assert reason is not None and window in reason, t


@pytest.mark.parametrize("bad", ["22-06", "25:00-06:00", "10:61-11:00", "08:00-08:00", "x"])
def test_bad_windows_are_refused_naming_them(bad: str) -> None:
    with pytest.raises(ValueError, match="time window"):
        Window.parse(bad)


def test_any_of_several_windows_allows() -> None:
    policy = ResourcePolicy(windows=(Window.parse("01:00-02:00"), Window.parse("13:00-14:00")))
    assert veto(policy, minute("13:30"), PLENTY) is None
    assert veto(policy, minute("12:00"), PLENTY) is not None


def test_memory_ceiling_and_floor() -> None:
    policy = ResourcePolicy(max_rss_mb=100, min_available_mb=200)
    assert veto(policy, 0, Memory(300 * MIB, 99 * MIB)) is None
    over = veto(policy, 0, Memory(300 * MIB, 101 * MIB))
    assert over is not None and "ceiling" in over
    short = veto(policy, 0, Memory(199 * MIB, 50 * MIB))
    assert short is not None and "available" in short
    # a device that cannot tell (no /proc) is not vetoed for it
    assert veto(policy, 0, Memory(None, None)) is None


def test_a_round_that_would_not_fit_is_declined_by_any_policy() -> None:
    # a Pi Zero 2 W unit with MemoryMax=384M, a torch agent idling at 333 MiB
    tight = Memory(available_bytes=51 * MIB, rss_bytes=333 * MIB, limit_bytes=384 * MIB)
    reason = veto(ResourcePolicy(), 0, tight, need_bytes=152 * MIB)
    assert reason is not None
    assert "152 MiB" in reason and "51 MiB left" in reason and "384 MiB limit" in reason
    assert veto(ResourcePolicy(), 0, tight, need_bytes=50 * MIB) is None
    # without a limit it is the machine's MemAvailable that must hold the round
    reason = veto(ResourcePolicy(), 0, Memory(10 * MIB, 40 * MIB), need_bytes=20 * MIB)
    assert reason is not None and "limit" not in reason


def test_the_ceiling_counts_what_the_round_will_add() -> None:
    policy = ResourcePolicy(max_rss_mb=300)
    assert veto(policy, 0, Memory(4096 * MIB, 250 * MIB), need_bytes=40 * MIB) is None
    reason = veto(policy, 0, Memory(4096 * MIB, 250 * MIB), need_bytes=60 * MIB)
    assert reason is not None and "from 250 to about 310 MiB" in reason


def test_a_rounds_need_is_learned_else_estimated_from_the_model() -> None:
    cnn = 1_663_370 * 4  # float32 bytes of mnist-cnn
    assert round_need(cnn, learned=None) == NEED_PER_MODEL_BYTE * cnn
    assert round_need(1000, learned=None) == MIN_ROUND_NEED
    assert round_need(cnn, learned=7 * MIB) == 7 * MIB


def test_the_default_policy_allows_everything() -> None:
    assert veto(ResourcePolicy(), minute("03:00"), Memory(1, 10**12)) is None


@pytest.mark.parametrize(
    "kwargs", [{"max_threads": 0}, {"max_rss_mb": 0}, {"min_available_mb": -1},
               {"hook_timeout_s": 0}],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ResourcePolicy(**kwargs)  # type: ignore[arg-type]


def test_read_memory_on_linux() -> None:
    memory = read_memory()
    assert memory.rss_bytes is not None and memory.rss_bytes > 10 * MIB
    assert memory.available_bytes is not None and memory.available_bytes > 0
    assert read_memory(Path("/nonexistent")) == Memory(None, None)
    if memory.limit_bytes is not None:  # under a cgroup limit: never more than it leaves
        assert memory.available_bytes <= memory.limit_bytes


def test_a_command_hook_vetoes_with_a_nonzero_exit_and_sees_the_round(tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(
        "import os, sys\n"
        "if os.environ['FEDMQ_ROUND'] == '3' and os.environ['FEDMQ_AGENT'] == 'pi-7':\n"
        "    sys.exit('on battery')\n"
    )
    reason = run_hook(f"{sys.executable} {script}", CONTEXT, timeout_s=30)
    assert reason is not None and "exited 1" in reason and "on battery" in reason
    assert run_hook(f"{sys.executable} {script}", {**CONTEXT, "round": "4"}, 30) is None


def test_a_hook_that_hangs_or_is_missing_vetoes(tmp_path: Path) -> None:
    slow = run_hook(f"{sys.executable} -c 'import time; time.sleep(30)'", CONTEXT, 0.5)
    assert slow is not None and "did not finish" in slow
    missing = run_hook(str(tmp_path / "no-such-hook"), CONTEXT, 5)
    assert missing is not None and "cannot run" in missing


def test_a_callable_hook(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "def charging(job, agent, round):\n    return int(round) % 2 == 0\n"
        "def reasoned(**context):\n    return 'busy: ' + context['job']\n"
        "def broken(**context):\n    raise RuntimeError('no sensor')\n"
    )
    assert run_hook(f"{hooks}:charging", {**CONTEXT, "round": "2"}, 5) is None
    odd = run_hook(f"{hooks}:charging", CONTEXT, 5)
    assert odd is not None and "vetoed" in odd
    assert run_hook(f"{hooks}:reasoned", CONTEXT, 5) == f"hook '{hooks}:reasoned': busy: farm"
    broken = run_hook(f"{hooks}:broken", CONTEXT, 5)
    assert broken is not None and "RuntimeError: no sensor" in broken
    assert run_hook("no_such_module_xyz:f", CONTEXT, 5) is not None
