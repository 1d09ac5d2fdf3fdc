"""Atomic outputs: a file or store appears under its final name only when complete."""

from __future__ import annotations

import subprocess
import sys

import pytest

from downscale.utils.atomic import atomic_path, write_text


def test_file_appears_only_when_complete(tmp_path):
    final = tmp_path / "a" / "b" / "metrics.json"
    with atomic_path(final) as tmp:
        tmp.write_text("{}")
        assert not final.exists()
        assert tmp.parent == final.parent and tmp.name.startswith(".metrics.json.tmp-")
    assert final.read_text() == "{}"
    assert [p.name for p in final.parent.iterdir()] == ["metrics.json"]


def test_failure_leaves_nothing_not_even_new_folders(tmp_path):
    final = tmp_path / "new" / "deeper" / "store.zarr"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        (tmp / "precip").mkdir(parents=True)
        (tmp / "precip" / "c0").write_bytes(b"x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_folders_that_existed(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "other.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out" / "x.txt") as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other.txt"]


def test_directory_store_is_replaced_whole(tmp_path):
    final = tmp_path / "s.zarr"
    for version in ("old", "new"):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / version).write_text(version)
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    assert [p.name for p in final.iterdir()] == ["new"]


def test_killed_writer_never_leaves_the_final_name(tmp_path):
    final = tmp_path / "report.html"
    code = (
        "import os, sys\n"
        "from downscale.utils.atomic import atomic_path\n"
        f"with atomic_path({str(final)!r}) as tmp:\n"
        "    tmp.write_text('half a report')\n"
        "    os._exit(9)  # killed mid-write: no cleanup runs\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 9
    assert not final.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(
        ".report.html.tmp-"
    )  # hidden, marked tmp


def test_write_text(tmp_path):
    write_text(tmp_path / "x.txt", "hello")
    assert (tmp_path / "x.txt").read_text() == "hello"
