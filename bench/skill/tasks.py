"""The skill bench's steps as a graph of processes on a few CPU cores (``--jobs N``).

Each task is one command (a training, a checkpoint choice, a draw, a suite's scoring) that may start
once the tasks it comes after have finished. At most ``jobs`` run at once, each with ``cpu_count //
jobs`` torch threads, and a free slot goes to the ready task with the longest estimated path to the
end of the graph (list scheduling by critical path, Hu 1961; Graham 1969 bounds its makespan). Two
whole suites side by side left one core idle for the last 25 minutes of an 81-minute run
(bench/skill/notes.md, "Machine and budget"); the tasks of both suites fill both cores.
"""

from __future__ import annotations

import os
import subprocess
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


def run_tasks(
    tasks: Sequence[Task],
    jobs: int,
    log_dir: Path,
    cwd: Path,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run ``tasks`` (at most ``jobs`` at once, longest path first); the names of those that failed
    and of those skipped because a task they come after failed. Interrupted, it stops the running
    processes (a rerun reuses their finished steps)."""
    lengths = path_lengths(tasks)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = sorted(tasks, key=lambda t: -lengths[t.name])  # stable: definition order on ties
    done: set[str] = set()
    failed: list[str] = []
    running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
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
                with open(path, "w") as fh:  # the process writes to its own copy of the file
                    proc = subprocess.Popen(
                        list(task.argv), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd
                    )
                running[task.name] = (proc, path, time.perf_counter())
                log(f"{task.name}: started ({threads} torch threads; log {path})")
            if not running:
                continue  # only skipped tasks were left (handled above)
            time.sleep(1)
            for name, (proc, path, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                seconds = time.perf_counter() - start
                if proc.returncode:
                    failed.append(name)
                    log(
                        f"{name}: failed (exit {proc.returncode}) after {seconds:.0f} s; see {path}"
                    )
                else:
                    done.add(name)
                    log(f"{name}: done in {seconds:.0f} s")
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
            proc.wait()
    return failed
