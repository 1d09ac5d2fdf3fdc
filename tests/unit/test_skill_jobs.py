"""The skill bench's steps side by side (``--jobs``): a graph of processes, each with its share of
the CPU's torch threads, longest chains first, a failed step named and what comes after it skipped,
the report after everything."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import pytest

from bench.skill import run as skill
from bench.skill.tasks import Task, fork_server, path_lengths, run_tasks

SHOW = "import os, sys; print(sys.argv[1], 'threads', os.environ['OMP_NUM_THREADS'])"


def _task(name, after=(), cost=1.0, code=SHOW):
    return Task(name, (sys.executable, "-c", code, name), tuple(after), cost)


def test_path_lengths_add_the_longest_chain_after_each_task():
    tasks = [
        _task("a", cost=1),
        _task("b", ["a"], 5),
        _task("c", ["a"], 2),
        _task("d", ["b", "c"], 1),
    ]
    assert path_lengths(tasks) == {"a": 7, "b": 6, "c": 3, "d": 1}
    with pytest.raises(ValueError, match="unknown tasks"):
        path_lengths([_task("x", ["nope"])])
    with pytest.raises(ValueError, match="cycle"):
        path_lengths([_task("x", ["y"]), _task("y", ["x"])])


def test_run_tasks_splits_threads_logs_and_skips_what_follows_a_failure(tmp_path):
    fail = "import sys; print('broken'); sys.exit(3)"
    tasks = [
        _task("good"),
        _task("bad", code=fail),
        _task("after_bad", ["bad"]),
        _task("after_skipped", ["after_bad"]),
        _task("after_good", ["good"]),
    ]
    lines, seconds = [], {}
    failed = run_tasks(tasks, 2, tmp_path / "logs", tmp_path, lines.append, seconds=seconds)
    assert failed == ["bad", "after_bad", "after_skipped"]
    assert set(seconds) == {"good", "after_good"} and all(t > 0 for t in seconds.values())
    threads = max(1, (os.cpu_count() or 1) // 2)
    for name in ("good", "after_good"):
        log = (tmp_path / "logs" / f"bench_{name}.log").read_text()
        assert log == f"{name} threads {threads}\n"
    assert (tmp_path / "logs" / "bench_bad.log").read_text() == "broken\n"
    assert not (tmp_path / "logs" / "bench_after_bad.log").exists()
    assert any("after_bad: skipped" in line for line in lines)


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)
def test_python_module_tasks_are_forked_from_a_preloaded_server(tmp_path):
    """``python -m`` steps run in processes forked from a server that imported torch once: same
    output, thread count, working directory, exit handlers and exit codes as a new interpreter."""
    probe = (sys.executable, "-m", "tests.unit._task_probe")
    tasks = [
        Task("ok", (*probe, "ok", "0")),
        Task("bad", (*probe, "bad", "3")),
        Task("after_bad", (*probe, "after", "0"), ("bad",)),
    ]
    lines = []
    forks = fork_server(("torch",), 2)
    failed = run_tasks(tasks, 2, tmp_path / "logs", tmp_path, lines.append, forks=forks)
    assert failed == ["bad", "after_bad"]
    assert any("bad: failed (exit 3)" in line for line in lines)
    threads = max(1, (os.cpu_count() or 1) // 2)
    for name in ("ok", "bad"):
        log = (tmp_path / "logs" / f"bench_{name}.log").read_text().splitlines()
        assert log == [
            f"preloaded True {name}",
            f"threads {threads} {threads} cwd {tmp_path}",
            "to stderr",
            "exit handler ran",
        ]


def test_run_tasks_starts_the_longest_chain_first(tmp_path):
    """One slot: of the ready tasks the one with the most work after it goes first."""
    tasks = [_task("short", cost=5), _task("head", cost=1), _task("tail", ["head"], 10)]
    lines = []
    assert run_tasks(tasks, 1, tmp_path, tmp_path, lines.append) == []
    started = [line.split(":")[0] for line in lines if "started" in line]
    assert started == ["head", "tail", "short"]


def test_run_tasks_stops_its_processes_when_interrupted(tmp_path, monkeypatch):
    started = []
    popen = skill.subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("bench.skill.tasks.subprocess.Popen", record)
    monkeypatch.setattr("bench.skill.tasks.time.sleep", interrupt)
    sleeper = "import time; time.sleep(60)"
    with pytest.raises(KeyboardInterrupt):
        run_tasks([_task("a", code=sleeper), _task("b", code=sleeper)], 2, tmp_path, tmp_path)
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
        "--suite", "radar", "--stage", "train", "--stage", "sample", "--only", "edm",
        "--out", str(tmp_path), "--force", "--train-override", "trainer.max_epochs=1",
    ]  # fmt: skip


def _graph(suite_name, tmp_path, monkeypatch):
    monkeypatch.setattr(skill, "OUT", tmp_path)
    stages = [s for s in skill.STAGES if s not in ("build", "report")]
    tasks = skill.suite_tasks(skill.SUITES[suite_name], stages, ["--out", str(tmp_path)])
    return {t.name: t for t in tasks}


def _only(task):
    argv = list(task.argv)
    return argv[argv.index("--only") + 1] if "--only" in argv else None


def test_the_iberia_core_graph(tmp_path, monkeypatch):
    graph = _graph("iberia", tmp_path, monkeypatch)
    core = skill._IBERIA_CORE.first
    train, select = "iberia.train.residual_sqrt_62", "iberia.select.residual_sqrt_62"
    draw = f"iberia.sample.{skill._slug(core.name)}"
    assert graph[select].after == (train,) and graph[draw].after == (train, select)
    assert _only(graph[draw]) == skill._slug(core.name) and "sample" in graph[draw].argv
    assert _only(graph[train]) == "residual_sqrt_62" and "train" in graph[train].argv
    # one training per model of the core rows: the regression row is the core's regression stage,
    # drawn from the checkpoint the core rows sample; the GAN's row needs no checkpoint choice
    trains = {n.split(".")[2] for n in graph if ".train." in n}
    assert trains == {"gan", "residual_sqrt_62", "residual_sqrt_62_seed1"}
    mean = skill._IBERIA_CORE_MEAN
    assert "residual_mean=true" in mean.overrides and mean.checkpoint == "selected"
    assert graph[f"iberia.sample.{skill._slug(mean.name)}"].after == (train, select)
    assert graph["iberia.sample.gan"].after == ("iberia.train.gan",)
    # pooled rows are left to the scoring task, which comes after every other task
    assert not any("pooled" in n for n in graph)
    score, gcm = graph["iberia.score"], graph["iberia.gcm.application"]
    assert set(score.after) == set(graph) - {"iberia.score", "iberia.gcm.application"}
    assert [a for a in score.argv if a in skill.STAGES] == ["sample", "evaluate"]
    assert _only(score) is None
    # the GCM application waits only for the reanalysis draw whose drizzle threshold it takes
    assert skill.SUITES["iberia"].gcm_sampling == core.name
    assert gcm.after == (draw,) and [a for a in gcm.argv if a in skill.STAGES] == ["gcm"]


def test_a_gcm_stage_without_draws_waits_for_its_model(tmp_path, monkeypatch):
    monkeypatch.setattr(skill, "OUT", tmp_path)
    tasks = skill.suite_tasks(skill.SUITES["iberia"], ["train", "select", "gcm"], [])
    gcm = next(t for t in tasks if t.name == "iberia.gcm.application")
    assert gcm.after == ("iberia.train.residual_sqrt_62", "iberia.select.residual_sqrt_62")
    # a suite without a GCM store has no such task
    assert not any(".gcm." in t.name for t in skill.suite_tasks(skill.SUITES["radar"], ["gcm"], []))


def test_a_select_stage_alone_runs_the_checkpoint_choices(tmp_path, monkeypatch):
    monkeypatch.setattr(skill, "OUT", tmp_path)
    tasks = skill.suite_tasks(skill.SUITES["iberia"], ["select"], [])
    assert [t.name for t in tasks] == [
        "iberia.select.residual_sqrt_62",
        "iberia.select.residual_sqrt_62_seed1",
    ]
    assert all(t.after == () and "select" in t.argv for t in tasks)


def test_derived_rows_are_drawn_by_the_scoring_task(tmp_path, monkeypatch):
    graph = _graph("radar", tmp_path, monkeypatch)
    assert not any(n.endswith("_conserved") for n in graph)
    assert "radar.sample.gan_64_px_tiles_8_members" in graph
    # the core rows' models only: the residual EDM and the 10-epoch EDM are ablations
    assert {n.split(".")[2] for n in graph if ".train." in n} == {
        "edm_auto_30",
        "regression",
        "gan",
    }


def test_recorded_costs_order_the_core_trainings_first(tmp_path, monkeypatch):
    """The estimates come from bench/results/skill.json: the two 60-epoch trainings lead the
    longest chains."""
    graph = {**_graph("iberia", tmp_path, monkeypatch), **_graph("radar", tmp_path, monkeypatch)}
    lengths = path_lengths(list(graph.values()))
    first = sorted(lengths, key=lambda n: -lengths[n])[:2]
    assert set(first) == {"iberia.train.residual_sqrt_62", "iberia.train.residual_sqrt_62_seed1"}


@pytest.fixture
def recorded(monkeypatch):
    """main's parallel path with the processes, the builds and the report replaced by records;
    ``recorded["failed"]`` is what the tasks report as failed."""
    calls = {"tasks": [], "report": [], "build": [], "failed": [], "order": []}

    def fake_tasks(tasks, jobs, log_dir, cwd, log, forks=None, seconds=None):
        assert forks == "server"  # the steps are forked from the server started first
        calls["tasks"].append((list(tasks), jobs, log_dir))
        seconds.update({t.name: 12.34 for t in tasks if t.name not in calls["failed"]})
        return calls["failed"]

    for name in ("OUT", "ABLATIONS"):  # main sets them: restored after the test
        monkeypatch.setattr(skill, name, getattr(skill, name))
    monkeypatch.setattr(skill, "run_tasks", fake_tasks)

    def build(suite):
        calls["build"].append(suite.name)
        calls["order"].append(("build", suite.name))

    monkeypatch.setattr(skill, "stage_build", build)

    def server(preload, jobs):
        assert "downscale.train" in preload  # what every step imports, once
        calls["order"].append(("server", jobs))
        return "server"

    monkeypatch.setattr(skill, "fork_server", server)
    monkeypatch.setattr(skill, "stage_report", lambda suites: calls["report"].append(suites))
    return calls


def test_main_builds_then_runs_every_cpu_suites_steps_then_the_report(tmp_path, recorded):
    assert skill.main(["--jobs", "2", "--out", str(tmp_path)]) == 0
    cpu = [n for n, s in skill.SUITES.items() if not s.gpu]
    assert recorded["build"] == cpu
    # the fork server first: it imports while the stores are built
    assert recorded["order"] == [("server", 2), *(("build", n) for n in cpu)]
    [(tasks, jobs, log_dir)] = recorded["tasks"]
    assert {t.name.split(".")[0] for t in tasks} == set(cpu)
    assert {f"{n}.score" for n in cpu} <= {t.name for t in tasks}
    assert (jobs, log_dir) == (2, tmp_path / "logs")
    assert len(recorded["report"]) == 1
    # each finished step's time, kept for the next run's estimates
    times = json.loads((tmp_path / "logs" / skill.STEP_SECONDS).read_text())
    assert times == {t.name: 12.3 for t in tasks}


def test_main_with_only_runs_one_process_per_suite(tmp_path, recorded):
    assert skill.main(["--jobs", "2", "--out", str(tmp_path), "--only", "models"]) == 0
    [(tasks, _, _)] = recorded["tasks"]
    assert [t.name for t in tasks] == [n for n, s in skill.SUITES.items() if not s.gpu]
    assert all(t.after == () for t in tasks)


def test_main_stops_with_the_failed_steps_and_no_report(tmp_path, recorded):
    recorded["failed"] = ["radar.train.gan", "radar.score"]
    with pytest.raises(SystemExit, match="radar.train.gan, radar.score failed"):
        skill.main(["--jobs", "2", "--out", str(tmp_path)])
    assert recorded["report"] == []
    times = json.loads((tmp_path / "logs" / skill.STEP_SECONDS).read_text())
    assert "radar.train.gan" not in times and "radar.train.edm_auto_30" in times


def test_recorded_step_times_are_the_schedulers_estimates(tmp_path, monkeypatch):
    results = tmp_path / "skill.json"
    steps = {"iberia.gcm.application": 86.0, "iberia.score": 60.0, "iberia.train.gan": 272.0}
    gan = {"kind": "model", "train_seconds": 250.0, "sample_seconds_per_member_day": 5.0}
    record = {"step_seconds": {**steps, "iberia.sample.gan": 1.0}}  # the GAN's draw was reused
    record["suites"] = {"iberia": {"scores": {"methods": {"GAN": gan}}}}
    results.write_text(json.dumps(record))
    monkeypatch.setattr(skill, "RESULTS_JSON", results)
    graph = _graph("iberia", tmp_path, monkeypatch)
    assert {name: graph[name].cost for name in steps} == steps
    # a reused step's second does not undercut its row's sampling time (8 members, 1 day: no store)
    assert graph["iberia.sample.gan"].cost == pytest.approx(8 * 5.0)
    # a step the record lacks keeps its default
    assert graph["iberia.select.residual_sqrt_62"].cost == skill._DEFAULT_COST["select"]


def test_main_refuses_zero_jobs(tmp_path, recorded):
    with pytest.raises(SystemExit, match="--jobs must be >= 1"):
        skill.main(["--jobs", "0", "--out", str(tmp_path)])
