"""``fedmq agent --config``: the TOML file, its validation, precedence, and the lean entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedmq.agent_cli import agent_settings, parsers
from fedmq.agent_config import read_agent_config
from fedmq.entry import command_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "agent.example.toml"


def parse(argv: list[str], config: Path | None = None):  # type: ignore[no-untyped-def]
    top, agent = parsers()
    if config is not None:
        agent.set_defaults(**read_agent_config(config))
    return top.parse_args(["agent", *argv])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_example_config_parses_into_settings_and_a_policy() -> None:
    args = parse([], EXAMPLE)
    settings = agent_settings(args)
    assert (settings.job, settings.task, settings.agent_id) == ("farm", "mnist-logreg", "pi-7")
    assert (settings.shard, settings.num_shards, settings.trainer) == (7, 20, "numpy")
    assert settings.state_dir == Path("/var/lib/fedmq") and settings.threads == 1
    assert args.password_file == EXAMPLE.parent / "password"  # relative to the file
    policy = settings.policy
    assert policy is not None and [str(w) for w in policy.windows] == ["22:00-06:00"]
    assert (policy.max_rss_mb, policy.min_available_mb, policy.hook_timeout_s) == (300, 64, 10)


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'job = "a"\ntrainer = "numpy"\nshard = "1/4"\n'
                             '[policy]\nwindows = ["01:00-02:00"]\n')
    args = parse(["--job", "b", "--trainer", "torch", "--shard", "3/4",
                  "--windows", "10:00-11:00"], config)
    assert (args.job, args.trainer, args.shard, args.windows) == ("b", "torch", (3, 4),
                                                                  "10:00-11:00")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('jobb = "x"\n', "unknown key 'jobb'"),
        ('[policy]\nwindow = ["x"]\n', "unknown key 'policy.window'"),
        ("threads = true\n", "threads must be an integer"),
        ('threads = "2"\n', "threads must be an integer"),
        ("job = 3\n", "job must be a string"),
        ('shard = "4/4"\n', "shard must be 'I/N'"),
        ('trainer = "tensorflow"\n', "trainer must be one of torch, numpy"),
        ('[policy]\nmax_rss_mb = "lots"\n', "policy.max_rss_mb must be an integer or a number"),
        ('[policy]\nwindows = [1]\n', "policy.windows must be a list of strings"),
        ("policy = 3\n", "policy must be a table"),
        ("job = \n", "not TOML"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_agent_config(write(tmp_path, text))


def test_a_bundle_named_in_the_file_sits_below_the_files_own_keys(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "agent.toml").write_text('broker = "mqtt://from-bundle:1883"\njob = "farm"\n'
                                       'agent_id = "pi-1"\nshard = "1/3"\n'
                                       'password_file = "password"\n')
    config = write(tmp_path, 'bundle = "bundle"\njob = "other"\ntrainer = "numpy"\n')
    values = read_agent_config(config)
    assert values["broker"] == "mqtt://from-bundle:1883" and values["job"] == "other"
    assert values["password_file"] == str(bundle / "password")


def test_the_command_runs_end_to_end_only_with_what_it_needs(tmp_path: Path) -> None:
    config = write(tmp_path, 'job = "farm"\n')
    done = subprocess.run([sys.executable, "-m", "fedmq", "agent", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2
    assert "missing --broker (config key broker)" in done.stderr
    assert "--agent-id (config key agent_id)" in done.stderr
    bad = write(tmp_path, "jobb = 1\n")
    done = subprocess.run([sys.executable, "-m", "fedmq", "agent", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2 and "unknown key 'jobb'" in done.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [(["agent", "--job", "x"], "agent"), (["--log-level", "INFO", "agent"], "agent"),
     (["--log-level=INFO", "agents"], "agents"), (["-h"], None), ([], None)],
)
def test_the_entry_point_finds_the_sub_command(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


def test_fedmq_agent_skips_the_full_cli_and_the_coordinator() -> None:
    code = ("import sys; from fedmq.entry import main; "
            "sys.argv = ['fedmq', 'agent', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'coordinator') or m in ('fedmq.cli', 'fedmq_tools.bench')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_log_lines_are_plain_and_leave_the_timestamp_to_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedmq.agent_cli import log_format

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert log_format().startswith("%(asctime)s")
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert log_format() == "%(levelname)s %(name)s: %(message)s"
