"""``fedmq report``: PNG plots and a markdown summary from a run directory."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from recorded import JOB, RUN, record_run

from fedmq.cli import main
from fedmq.progress import RunRecorder
from fedmq.report import PLOTS, REPORT, load_run, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def run_dir_of_a_recorded_run(path: Path, rounds: int = 5) -> Path:
    """What a coordinator leaves: its recorder's metrics.jsonl and summary.json."""
    recorder = RunRecorder(rounds, out=None, jsonl=path / "metrics.jsonl")
    rec = record_run(rounds=rounds, agents=3, observe=recorder)
    summary = recorder.summary(rec.core, job=JOB, run=RUN, task="toy")
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_report_writes_three_pngs_and_a_summary(tmp_path: Path) -> None:
    run_dir = run_dir_of_a_recorded_run(tmp_path / "run")
    written = write_report(run_dir, tmp_path / "out")
    assert [p.name for p in written] == [*PLOTS, REPORT]
    for name in PLOTS:
        path = tmp_path / "out" / name
        assert png_size(path) == (800, 320)
        assert 5_000 < path.stat().st_size < 200_000
    md = (tmp_path / "out" / REPORT).read_text()
    assert f"# fedmq run {RUN} (job {JOB})" in md
    assert "| outcome | done: completed 5 rounds |" in md
    assert "| updates | 15 accepted, 0 declined, 1 rejected |" in md
    assert "| rejected by reason | duplicate 1 |" in md
    assert "| final accuracy | 1.0000 (best 1.0000 in round 5) |" in md
    assert "| compression | up " in md and "down per agent per round |" in md
    assert "| down/agent | both ways |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "quorum" in line]
    assert [row.split("|")[1].strip() for row in table] == ["1", "2", "3", "4", "5"]
    for name in PLOTS:
        assert f"]({name})" in md


def test_a_reused_run_dir_reports_the_summarys_run_once_per_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    older = RunRecorder(2, out=None, jsonl=run_dir / "metrics.jsonl")
    record_run(rounds=2, agents=2, run="older", observe=older)
    run_dir_of_a_recorded_run(run_dir, rounds=3)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    # a resumed run writes its last round again; a crash leaves half a line
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(lines[-1] + "\n" + lines[-1][:30] + "\n")
    record = load_run(run_dir)
    assert [(m.run, m.round) for m in record.rounds] == [(RUN, 1), (RUN, 2), (RUN, 3)]
    assert record.skipped_lines == 1
    (run_dir / "summary.json").unlink()
    assert load_run(run_dir).rounds[-1].run == RUN  # the last run written
    assert "unreadable lines | 1 skipped" in (write_report(run_dir)[-1]).read_text()


def test_missing_or_empty_metrics_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("not json\n\n")
    with pytest.raises(ValueError, match="holds no rounds"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 2


def test_cli_report_prints_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = run_dir_of_a_recorded_run(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / name) for name in (*PLOTS, REPORT)]
