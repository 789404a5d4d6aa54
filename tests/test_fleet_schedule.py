"""The uneven fleet's schedule (fedmq/fleet_schedule.py): pure, seeded, driven by ``now``."""

from __future__ import annotations

import argparse

import pytest

from fedmq.fleet_schedule import (
    FleetSchedule,
    FleetSpec,
    add_fleet_flags,
    fleet_argv,
    fleet_spec,
    parse_speeds,
)

SPEC = FleetSpec(speeds=(1, 3, 10), base_delay_s=0.1, offline_fraction=0.2, on_s=2.0,
                 off_s=1.0, seed=7)


def test_speed_classes_cycle_and_set_the_delay() -> None:
    schedule = FleetSchedule(SPEC, 20)
    assert [schedule.speed(i) for i in range(4)] == [1, 3, 10, 1]
    assert [round(schedule.delay_s(i), 9) for i in range(3)] == [0.0, 0.2, 0.9]
    assert parse_speeds("1, 3,10") == (1.0, 3.0, 10.0)
    with pytest.raises(ValueError, match="speed classes"):
        parse_speeds("0.5,2")


def test_the_flaky_fraction_is_seeded_and_starts_online() -> None:
    a, b = FleetSchedule(SPEC, 20), FleetSchedule(SPEC, 20)
    assert len(a.flaky) == 4 and a.flaky == b.flaky
    assert all(a.online(i, 0.0) for i in range(20))
    other = FleetSchedule(FleetSpec(offline_fraction=0.2, seed=8), 20)
    assert other.flaky != a.flaky


def test_periods_alternate_and_do_not_depend_on_the_order_of_questions() -> None:
    forward, backward = FleetSchedule(SPEC, 20), FleetSchedule(SPEC, 20)
    times = [t / 10 for t in range(600)]
    agent = min(forward.flaky)
    ahead = [forward.online(agent, t) for t in times]
    behind = [backward.online(agent, t) for t in reversed(times)][::-1]
    assert ahead == behind
    assert True in ahead and False in ahead  # it goes offline and comes back
    change = forward.next_change(agent, 0.0)
    assert change is not None and change > 0
    assert forward.online(agent, change - 1e-9) and not forward.online(agent, change)
    steady = next(i for i in range(20) if i not in forward.flaky)
    assert forward.next_change(steady, 5.0) is None
    # over a long run the flaky agents are offline about off / (on + off) of the time
    share = sum(len(forward.offline(t)) for t in times) / (len(times) * len(forward.flaky))
    assert 0.15 < share < 0.55


def test_flags_round_trip_to_a_child_fleet() -> None:
    p = argparse.ArgumentParser()
    add_fleet_flags(p)
    args = p.parse_args(["--speeds", "1,3,10", "--base-delay", "0.1",
                         "--offline-fraction", "0.2", "--fleet-seed", "7"])
    again = p.parse_args(fleet_argv(args))
    assert fleet_spec(again) == fleet_spec(args)
    assert fleet_argv(p.parse_args([])) == []  # an even fleet adds no flags
    with pytest.raises(SystemExit, match="offline fraction"):
        fleet_spec(p.parse_args(["--offline-fraction", "2"]))
