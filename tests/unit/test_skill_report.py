"""docs/results.md pieces of the skill benchmark (bench/skill/report.py)."""

from __future__ import annotations

from bench.skill.report import _hardware


def test_hardware_lines_name_the_rows_of_each_device():
    methods = {
        "analogs": {"kind": "baseline"},
        "old row": {"kind": "model"},  # a record from before devices were written
        "gpu row": {"kind": "model", "train_device": "NVIDIA H200", "sample_device": "NVIDIA H200"},
        "cpu row": {
            "kind": "model",
            "train_device": "cpu (2 threads)",
            "sample_device": "NVIDIA H200",
        },
    }
    assert _hardware(methods) == [
        "Wall times of the models:",
        "",
        "- trained before records named the device: old row",
        "- sampled before records named the device: old row",
        "- trained on NVIDIA H200: gpu row",
        "- sampled on NVIDIA H200: gpu row; cpu row",
        "- trained on cpu (2 threads): cpu row",
        "",
    ]
    same = {k: v for k, v in methods.items() if k == "gpu row"}
    assert _hardware(same)[2:4] == [
        "- trained on NVIDIA H200: every model row",
        "- sampled on NVIDIA H200: every model row",
    ]
    assert _hardware({"analogs": {"kind": "baseline"}}) == []
    assert _hardware({"old row": {"kind": "model"}}) == []  # nothing known: no section
