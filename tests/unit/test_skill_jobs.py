"""The skill bench's suites side by side (``--jobs``): one process per suite with its share of the
CPU's torch threads, a failed suite named, the report after every suite."""

from __future__ import annotations

import os
import sys

import pytest

from bench.skill import run as skill


def test_run_jobs_splits_threads_logs_and_names_failures(tmp_path):
    show = "import os; print('threads', os.environ['OMP_NUM_THREADS'])"
    commands = {
        "good": [sys.executable, "-c", show],
        "bad": [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"],
        "late": [sys.executable, "-c", show],  # waits for a free slot
    }
    failed = skill.run_jobs(commands, 2, tmp_path / "logs")
    assert failed == ["bad"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for name in ("good", "late"):
        assert (tmp_path / "logs" / f"bench_{name}.log").read_text() == f"threads {threads}\n"
    assert (tmp_path / "logs" / "bench_bad.log").read_text() == "broken\n"


def test_run_jobs_stops_its_processes_when_interrupted(tmp_path, monkeypatch):
    started = []
    popen = skill.subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(skill.subprocess, "Popen", record)
    monkeypatch.setattr(skill.time, "sleep", interrupt)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(KeyboardInterrupt):
        skill.run_jobs({"a": sleeper, "b": sleeper}, 2, tmp_path)
    assert len(started) == 2
    assert all(proc.returncode is not None for proc in started)  # terminated and reaped


def test_suite_argv_passes_the_options_but_not_the_report(tmp_path):
    args = skill.argparse.Namespace(
        out=tmp_path,
        stage=["train", "report", "sample"],
        only="edm",
        force=True,
        ablations=False,
        train_override=["trainer.max_epochs=1"],
    )
    argv = skill._suite_argv("radar", args)
    assert argv[:3] == [sys.executable, "-m", "bench.skill.run"]
    assert argv[3:] == [
        "--suite", "radar", "--out", str(tmp_path), "--stage", "train", "--stage", "sample",
        "--only", "edm", "--force", "--train-override", "trainer.max_epochs=1",
    ]  # fmt: skip


@pytest.fixture
def recorded(monkeypatch):
    """main's parallel path with the report replaced by a record; ``recorded["failed"]`` is what
    the suites' processes (a record too) report as failed."""
    calls = {"jobs": [], "report": [], "failed": []}

    def fake_jobs(commands, jobs, log_dir):
        calls["jobs"].append((list(commands), jobs, log_dir))
        return calls["failed"]

    for name in ("OUT", "ABLATIONS"):  # main sets them: restored after the test
        monkeypatch.setattr(skill, name, getattr(skill, name))
    monkeypatch.setattr(skill, "run_jobs", fake_jobs)
    monkeypatch.setattr(skill, "stage_report", lambda suites: calls["report"].append(suites))
    return calls


def test_main_runs_the_cpu_suites_side_by_side_then_the_report(tmp_path, recorded):
    assert skill.main(["--jobs", "2", "--out", str(tmp_path)]) == 0
    [(names, jobs, log_dir)] = recorded["jobs"]
    assert names == [n for n, s in skill.SUITES.items() if not s.gpu]
    assert (jobs, log_dir) == (2, tmp_path / "logs")
    assert len(recorded["report"]) == 1


def test_main_stops_with_the_failed_suite_and_no_report(tmp_path, recorded):
    recorded["failed"] = ["radar"]
    with pytest.raises(SystemExit, match="suite radar failed"):
        skill.main(["--jobs", "2", "--out", str(tmp_path)])
    assert recorded["report"] == []


def test_main_refuses_zero_jobs(tmp_path, recorded):
    with pytest.raises(SystemExit, match="--jobs must be >= 1"):
        skill.main(["--jobs", "0", "--out", str(tmp_path)])
