"""The swarm carries out the uneven fleet's schedule (fedmq/fleet_schedule.py) over a real
Mosquitto: a slow member's result is held back by its delay, a flaky member goes offline
(its presence says so) and comes back, and a synchronous run still completes."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.fleet_schedule import FleetSchedule
from fedmq.fleet_schedule import FleetSpec as Unevenness
from fedmq.launch import Connection, build_coordinator
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench import fleet
from fedmq_tools.swarm import Swarm
from protocol import Phase, Topics, decode_presence
from transport.connection import BrokerURL

JOB = "uneven-swarm"
#: agent 2 is of class 10 (0.9 s after each training); the seed makes agent 1 the flaky one
UNEVEN = Unevenness(speeds=(1, 1, 10), base_delay_s=0.1, offline_fraction=0.34, on_s=0.4,
                    off_s=0.4, seed=1)


class PresenceLog:
    """Every presence change of ``agent``, in order."""

    def __init__(self, url: str, agent: str) -> None:
        self.states: list[bool] = []
        self.back = threading.Event()
        broker = BrokerURL.parse(url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(Topics(JOB).presence(agent), qos=1)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            self.states.append(decode_presence(bytes(msg.payload)).online)
            if self.states[-2:] == [False, True]:
                self.back.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def test_the_seed_makes_agent_1_flaky_and_agent_2_slow() -> None:
    schedule = FleetSchedule(UNEVEN, 3)
    assert schedule.flaky == {1} and schedule.delay_s(2) == pytest.approx(0.9)


@pytest.mark.integration
def test_a_swarm_follows_the_schedule_and_the_run_completes(broker: LocalBroker) -> None:
    spec = fleet.FleetSpec(broker=broker.url, job=JOB, task="linreg", count=3, uneven=UNEVEN)
    watch = PresenceLog(broker.url, "agent-1")
    # members stay after the run, still following the schedule, until stopped
    swarm = Swarm(fleet.build_members(spec), BrokerURL.parse(broker.url),
                  schedule=FleetSchedule(UNEVEN, 3), exit_when_done=False)
    agents = threading.Thread(target=swarm.run, daemon=True)
    config = RoundConfig(job=JOB, task="linreg", rounds=3, plan=get_task("linreg").plan,
                         min_agents=3, quorum=2, deadline_s=30.0, evaluate=False)
    node = build_coordinator(config, Connection(BrokerURL.parse(broker.url)),
                             data=DataConfig(), run_dir=None)
    agents.start()
    try:
        assert node.run() is Phase.DONE
        assert watch.back.wait(30)  # offline by the schedule, then online again
    finally:
        swarm.stop()
        agents.join(30)
        watch.close()
    assert not agents.is_alive()
    assert [m.closed_by.value for m in node.rounds.history] == ["quorum"] * 3
    assert swarm.stats.rounds_trained >= 6
