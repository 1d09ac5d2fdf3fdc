"""Self-contained HTML reports: one evaluation (figures embedded base64 + scorecard) and a sweep."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from downscale.utils.atomic import write_text

HEADLINE = (
    "crps",
    "crps_fair",
    "mae",
    "rmse",
    "bias",
    "rel_bias",
    "ralsd",
    "spectral_crps",
    "spread_skill",
    "rank_flatness",
    "ece",
    "brier",
)
"""Keys listed first in scorecards, in this order; the rest follow alphabetically."""

_STYLE = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#eee}td:first-child{text-align:left}
td.best{font-weight:bold;background:#e6f4e6}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.skip{color:#a60}
"""


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _order(keys: Sequence[str]) -> list[str]:
    head = [k for k in HEADLINE if k in keys]
    return head + sorted(k for k in keys if k not in head)


def scorecard_html(scorecard: Mapping[str, Mapping[str, float]]) -> str:
    """Table: one row per metric, one column per model/baseline."""
    columns = list(scorecard)
    keys = _order(list(dict.fromkeys(k for row in scorecard.values() for k in row)))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for key in keys:
        cells = "".join(f"<td>{_number(scorecard[c].get(key))}</td>" for c in columns)
        rows.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _figures_html(figures_dir: Path) -> str:
    parts = []
    for png in sorted(Path(figures_dir).glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        title = html.escape(png.stem.replace("_", " "))
        parts.append(f"<h3>{title}</h3><img alt='{title}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts)


def write_report(
    metrics: Mapping[str, float],
    scorecard: Mapping[str, Mapping[str, float]],
    figures_dir: str | Path,
    out_path: str | Path,
    *,
    skipped: Mapping[str, str] | None = None,
    title: str = "downscale evaluation",
) -> Path:
    """Write ``report.html``: headline metrics, the scorecard, skipped metrics and every figure."""
    head = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_number(metrics[k])}</td></tr>"
        for k in HEADLINE
        if k in metrics
    )
    skip = "".join(
        f"<li class='skip'><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in (skipped or {}).items()
    )
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>Headline</h2><table><tr><th>metric</th><th>value</th></tr>{head}</table>"
        f"<h2>Scorecard</h2>{scorecard_html(scorecard)}"
        + (f"<h2>Skipped</h2><ul>{skip}</ul>" if skip else "")
        + f"<h2>Figures</h2>{_figures_html(Path(figures_dir))}"
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
    out = Path(out_path)
    write_text(out, page)
    return out


def write_sweep_report(rows: list[dict], out_dir: str | Path, *, title: str = "sweep") -> Path:
    """Write ``<out_dir>/report.html``: one table row per sweep point (parameters then metrics),
    the best value of each headline metric highlighted (lowest, except |bias| and ratios near 1)."""
    out_dir = Path(out_dir)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    params = [k for k in keys if k not in HEADLINE and not _is_metric(rows, k)]
    metric_keys = _order([k for k in keys if k not in params])
    best = {k: _best_index(rows, k) for k in metric_keys}
    head = "".join(f"<th>{html.escape(k)}</th>" for k in params + metric_keys)
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td>{_number(row.get(k))}</td>" for k in params]
        cells += [
            f"<td class='best'>{_number(row.get(k))}</td>"
            if best[k] == i
            else f"<td>{_number(row.get(k))}</td>"
            for k in metric_keys
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(rows)} runs</p><table><tr>{head}</tr>{''.join(body)}</table></body></html>\n"
    )
    out = out_dir / "report.html"
    write_text(out, page)
    return out


def _is_metric(rows: list[dict], key: str) -> bool:
    """Metric columns are float-valued; parameters are strings, ints or mixed."""
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return bool(values) and all(isinstance(v, float) for v in values)


_NEAR_ONE = ("spread_skill", "rank_flatness")
_NEAR_ZERO = ("bias", "rel_bias")


def _best_index(rows: list[dict], key: str) -> int | None:
    scored = []
    for i, row in enumerate(rows):
        v = row.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            target = abs(v - 1) if key in _NEAR_ONE else abs(v) if key in _NEAR_ZERO else v
            scored.append((target, i))
    return min(scored)[1] if scored else None
