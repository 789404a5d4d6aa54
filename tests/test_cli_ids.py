"""Ids every tested broker carries, checked where the user types them (before: NATS closed
an agent called ``pi.07`` on every connect, RabbitMQ silently lost its presence)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedmq import agent_cli, cli


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (agent_cli.main, ["agent", "--broker", "mqtt://h", "--job", "j", "--task", "digits",
                          "--agent-id", "pi.07", "--shard", "0/1"]),
        (cli.main, ["coordinator", "--broker", "mqtt://h", "--job", "mnist.v2", "--task",
                    "digits"]),
        (cli.main, ["agents", "--broker", "mqtt://h", "--job", "j", "--task", "digits",
                    "--count", "2", "--id-prefix", "pi."]),
        (cli.main, ["demo", "--job", "demo.1"]),
    ],
)
def test_a_dotted_id_is_refused_with_the_reason(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "no '.': NATS refuses it in topics and RabbitMQ turns it into a topic level" in err
