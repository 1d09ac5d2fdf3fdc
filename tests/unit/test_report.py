"""HTML reports (single evaluation and sweep) and W&B logging."""

from __future__ import annotations

import base64
import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from downscale.evaluation.report import write_report, write_sweep_report  # noqa: E402
from downscale.logging.wandb_logging import log_to_wandb  # noqa: E402


def _figure(path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)


def test_report_embeds_figures_and_scorecard(tmp_path):
    figs = tmp_path / "figures"
    figs.mkdir()
    _figure(figs / "spectra.png")
    metrics = {"crps": 0.5, "mae": 1.25, "ralsd": float("nan")}
    scorecard = {"model": metrics, "bilinear": {"crps": 0.9, "mae": 1.5}}
    out = write_report(metrics, scorecard, figs, tmp_path / "report.html", skipped={"rl": "short"})
    html = out.read_text()
    data = base64.b64encode((figs / "spectra.png").read_bytes()).decode()
    assert data in html  # self-contained
    assert "<th>bilinear</th>" in html and "0.9" in html and "1.25" in html
    assert html.index(">crps<") < html.index(">mae<")  # headline order
    assert "short" in html and "src='figures" not in html


def test_sweep_report_highlights_best(tmp_path):
    rows = [
        {"sampler": "euler", "steps": 10, "crps": 0.6, "bias": -0.3, "spread_skill": 0.7},
        {"sampler": "heun", "steps": 20, "crps": 0.4, "bias": 0.1, "spread_skill": 1.4},
        {"sampler": "dpm2", "steps": 20, "crps": 0.5, "bias": 0.2, "spread_skill": 0.95},
    ]
    html = write_sweep_report(rows, tmp_path).read_text()
    assert (tmp_path / "report.html").exists() and "3 runs" in html
    assert "<td class='best'>0.4</td>" in html  # lowest crps
    assert "<td class='best'>0.1</td>" in html  # bias closest to 0
    assert "<td class='best'>0.95</td>" in html  # spread-skill closest to 1
    assert "<td>heun</td>" in html


def test_log_to_wandb_is_a_noop_without_a_run(tmp_path):
    assert log_to_wandb({"crps": 1.0}, tmp_path, {"model": {"crps": 1.0}}) is False


@pytest.mark.slow
def test_log_to_wandb_offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _figure(tmp_path / "spectra.png")
    run = wandb.init(project="test", dir=str(tmp_path), mode="offline")
    try:
        metrics = {"crps": 0.5, "ralsd": math.nan}
        assert log_to_wandb(metrics, tmp_path, {"model": metrics, "nearest": {"crps": 1.0}})
        assert run.summary["eval/crps"] == 0.5
    finally:
        run.finish()
