"""The coordinator's strategy flags reach RoundConfig, and bad ones stop it at start-up."""

from __future__ import annotations

import pytest

from fedmq.cli import main, parser
from fedmq.round_flags import round_config

BASE = ["coordinator", "--job", "j", "--broker", "mqtt://127.0.0.1:1", "--task", "digits"]


def test_flags_reach_theround_config() -> None:
    args = parser().parse_args([
        *BASE, "--server-opt", "fedadam:lr=0.02", "--sample-count", "3",
        "--sample-policy", "by-samples", "--device-class", "rpi4", "--device-class", "phone",
        "--sample-seed", "9", "--dp-clip", "1.5", "--dp-noise", "0.5", "--dp-delta", "1e-6",
        "--dp-seed", "77", "--patience", "4", "--min-delta", "0.01",
    ])
    config = round_config(args, "j")
    assert config.server_opt == "fedadam:lr=0.02"
    assert (config.sample_count, config.sample_fraction, config.sample_policy) == (3, None,
                                                                                 "by-samples")
    assert config.device_classes == frozenset({"rpi4", "phone"}) and config.sample_seed == 9
    assert (config.dp_clip, config.dp_noise, config.dp_delta, config.dp_seed) == (1.5, 0.5,
                                                                                 1e-6, 77)
    assert (config.patience, config.min_delta) == (4, 0.01)
    assert config.names_cohort


def test_defaults_change_nothing() -> None:
    config = round_config(parser().parse_args(BASE), "j")
    assert config.server_opt == "fedavg" and not config.names_cohort
    assert config.dp_noise is None and config.patience is None


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--dp-noise", "1"], "DP needs dp_clip"),
        (["--sample-count", "2", "--quorum", "3"], "cannot meet quorum"),
        (["--dp-clip", "1", "--dp-noise", "1", "--aggregator", "median"], "replaces the"),
        (["--patience", "2", "--no-eval"], "needs server-side evaluation"),
        (["--cohort-by", "hash"], "needs --sample-fraction"),
        (["--cohort-by", "hash", "--sample-count", "3"], "--sample-count"),
        (["--cohort-by", "hash", "--sample-fraction", "0.1", "--secagg"], "--secagg"),
        (["--cohort-by", "hash", "--sample-fraction", "0.1", "--mode", "fedbuff"],
         "a hashed cohort"),
    ],
)
def test_bad_combinations_exit_2_with_the_reason(
    flags: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *flags]) == 2
    assert error in capsys.readouterr().err


def test_a_bad_server_optimiser_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--server-opt", "fedadam:beta=0.9"])
    assert exc.value.code == 2
    assert "'beta' is not a parameter of fedadam" in capsys.readouterr().err


def test_fraction_and_count_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*BASE, "--sample-fraction", "0.5", "--sample-count", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_hashed_cohort_reaches_the_round_config() -> None:
    config = round_config(parser().parse_args(
        [*BASE, "--cohort-by", "hash", "--sample-fraction", "0.25"]), "j")
    assert config.cohort_hash is not None and config.cohort_hash.below == 2**62
    assert not config.names_cohort
