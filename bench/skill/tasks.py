"""The skill bench's steps as a graph of processes on a few CPU cores (``--jobs N``).

Each task is one command (a training, a checkpoint choice, a draw, a suite's scoring) that may start
once the tasks it comes after have finished. At most ``jobs`` run at once, each with ``cpu_count //
jobs`` torch threads, and a free slot goes to the ready task with the longest estimated path to the
end of the graph (list scheduling by critical path, Hu 1961; Graham 1969 bounds its makespan). Two
whole suites side by side left one core idle for the last 25 minutes of an 81-minute run
(bench/skill/notes.md, "Machine and budget"); the tasks of both suites fill both cores.

A ``python -m <module>`` task is forked from a server process that has imported ``preload`` once
(multiprocessing's forkserver) instead of starting a new interpreter: importing lightning, torch and
the package takes about 9 s on a slow 2-core machine, for each of the bench's steps.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """One command of the graph."""

    name: str  # also its log file: ``bench_<name>.log``
    argv: tuple[str, ...]
    after: tuple[str, ...] = ()  # tasks that must have finished first
    cost: float = 60.0  # estimated seconds (the previous run's record, else a default)


def path_lengths(tasks: Sequence[Task]) -> dict[str, float]:
    """Each task's cost plus the longest chain of costs after it (its "bottom level")."""
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        missing = [d for d in task.after if d not in by_name]
        if missing:
            raise ValueError(f"task {task.name} comes after unknown tasks {missing}")
    followers: dict[str, list[str]] = {t.name: [] for t in tasks}
    for task in tasks:
        for dep in task.after:
            followers[dep].append(task.name)
    lengths: dict[str, float] = {}
    visiting: set[str] = set()

    def length(name: str) -> float:
        if name not in lengths:
            if name in visiting:
                raise ValueError(f"the task graph has a cycle through {name}")
            visiting.add(name)
            tail = max((length(f) for f in followers[name]), default=0.0)
            lengths[name] = by_name[name].cost + tail
        return lengths[name]

    for task in tasks:
        length(task.name)
    return lengths


def _python_module(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` of a ``python -m module ...`` command of this interpreter."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2], list(argv[3:])
    return None


def _run_module(module: str, args: list[str], log_path: str, cwd: str, threads: int) -> None:
    """A forked task: what ``python -m module args`` would do, its output into ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported by the server before this task's thread count was known
        sys.modules["torch"].set_num_threads(threads)
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # run afresh as __main__, as a new interpreter would
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # a forked process leaves through os._exit, which skips them


class _Forked:
    """A forked ``python -m`` task behind the part of ``subprocess.Popen`` that run_tasks uses."""

    def __init__(self, context, module: str, args: list[str], log: Path, cwd: Path, threads: int):
        self.process = context.Process(
            target=_run_module, args=(module, args, str(log), str(cwd), threads)
        )
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self) -> int | None:
        self.process.join()
        return self.process.exitcode


def _start(
    task: Task, path: Path, cwd: Path, env: dict, threads: int, forks
) -> subprocess.Popen | _Forked:
    """The process of ``task``: forked from the preloaded server for ``python -m`` commands (when
    there is one), else a new one."""
    call = _python_module(task.argv) if forks is not None else None
    if call is not None:
        return _Forked(forks, *call, path, cwd, threads)
    with open(path, "w") as fh:  # the process writes to its own copy of the file
        return subprocess.Popen(
            list(task.argv), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )


def threads_per_job(jobs: int) -> int:
    """The torch threads of each of ``jobs`` processes side by side."""
    return max(1, (os.cpu_count() or 1) // jobs)


def fork_server(preload: Sequence[str], jobs: int):
    """multiprocessing's forkserver context with ``preload`` imported once, for :func:`run_tasks`,
    or None where there is no forkserver (Windows) or nothing to preload. Started here (its imports
    run in the background until the first task is forked); a server already started is reused."""
    if not preload or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    # started now, so that its imports see this run's thread count (each task sets it again: a
    # server started by an earlier call keeps its own)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return context


def run_tasks(
    tasks: Sequence[Task],
    jobs: int,
    log_dir: Path,
    cwd: Path,
    log: Callable[[str], None] = print,
    forks=None,
    seconds: dict[str, float] | None = None,
) -> list[str]:
    """Run ``tasks`` (at most ``jobs`` at once, longest path first); the names of those that failed
    and of those skipped because a task they come after failed. ``python -m`` tasks are forked
    from ``forks`` (:func:`fork_server`'s context) when given; ``seconds``, when given, receives
    each finished task's wall time. Interrupted, it stops the running processes (a rerun reuses
    their finished steps)."""
    lengths = path_lengths(tasks)
    threads = threads_per_job(jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = sorted(tasks, key=lambda t: -lengths[t.name])  # stable: definition order on ties
    done: set[str] = set()
    failed: list[str] = []
    running: dict[str, tuple[subprocess.Popen | _Forked, Path, float]] = {}
    try:
        while waiting or running:
            for task in [t for t in waiting if any(d in failed for d in t.after)]:
                waiting.remove(task)
                failed.append(task.name)
                log(f"{task.name}: skipped (a task it comes after failed)")
            ready = [t for t in waiting if all(d in done for d in t.after)]
            while ready and len(running) < jobs:
                task = ready.pop(0)
                waiting.remove(task)
                path = log_dir / f"bench_{task.name}.log"
                proc = _start(task, path, cwd, env, threads, forks)
                running[task.name] = (proc, path, time.perf_counter())
                log(f"{task.name}: started ({threads} torch threads; log {path})")
            if not running:
                continue  # only skipped tasks were left (handled above)
            time.sleep(1)
            for name, (proc, path, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                took = time.perf_counter() - start
                if proc.returncode:
                    failed.append(name)
                    log(f"{name}: failed (exit {proc.returncode}) after {took:.0f} s; see {path}")
                else:
                    done.add(name)
                    log(f"{name}: done in {took:.0f} s")
                    if seconds is not None:
                        seconds[name] = took
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
            proc.wait()
    return failed
