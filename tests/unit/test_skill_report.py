"""docs/results.md pieces of the skill benchmark (bench/skill/report.py)."""

from __future__ import annotations

from bench.skill.report import _goals, _hardware


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
        "- trained on NVIDIA H200: gpu row",
        "- trained on cpu (2 threads): cpu row",
        "- sampled before records named the device: old row",
        "- sampled on NVIDIA H200: gpu row; cpu row",
        "",
    ]
    same = {k: v for k, v in methods.items() if k == "gpu row"}
    assert _hardware(same)[2:4] == [
        "- trained on NVIDIA H200: every model row",
        "- sampled on NVIDIA H200: every model row",
    ]
    assert _hardware({"analogs": {"kind": "baseline"}}) == []
    assert _hardware({"old row": {"kind": "model"}}) == []  # nothing known: no section


def test_goal_lines_check_each_goal_and_name_a_missing_regression_row():
    row = {"kind": "model", "crps": 0.078, "ralsd": 2.97, "q99_rel_bias": -1.9}
    methods = {
        "analogs 8": {"kind": "baseline", "crps": 0.124},
        "RainFARM 8": {"kind": "baseline", "crps": 0.081},
        "RainFARM 2": {"kind": "baseline", "crps": 0.109},
        "residual EDM, 2 members": {**row, "spread_skill": 1.21},
        "residual EDM, ablation": {**row, "spread_skill": 1.0},
    }
    lines = "\n".join(_goals("radar_gpu", methods, ablations=["residual EDM, ablation"]))
    assert "residual EDM, ablation" not in lines
    assert (
        "CRPS 0.078 <= 0.06: no; RALSD 2.97 <= 2.0: no; |q99 bias| 1.9% <= 10%: yes; "
        "spread/skill 1.21 in [0.9, 1.1]: no; "
        "CRPS ahead of 3/3 regression/analogs/RainFARM rows (none of regression)"
    ) in lines
    methods["regression UNet"] = {"kind": "model", "crps": 0.07}
    lines = _goals("radar_gpu", methods, ablations=["residual EDM, ablation"])
    assert lines[0].endswith("CRPS ahead of 3/4 regression/analogs/RainFARM rows")
