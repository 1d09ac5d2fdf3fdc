"""Write docs/results.md from the collected skill results (bench/results/skill.json)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from downscale.utils.atomic import write_text

NOTES = Path(__file__).resolve().parent / "notes.md"
COLUMNS = (
    ("crps", "CRPS", "{:.3f}"),
    ("mae_ensmean", "MAE ens. mean", "{:.3f}"),
    ("ralsd", "RALSD dB", "{:.2f}"),
    ("fss", "FSS", "{:.3f}"),
    ("spread_skill", "spread/skill", "{:.2f}"),
    ("rank_flatness", "rank flatness", "{:.2f}"),
    ("q99", "q99", "{:.2f}"),
    ("q99_rel_bias", "q99 bias %", "{:+.1f}"),
    ("n_members", "members", "{:d}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("sample_seconds_per_member_day", "sample s / member / day", "{:.4f}"),
)
GOALS = {
    "iberia": {"crps": 0.80},
    "iberia_gpu": {"crps": 0.80},
    "radar": {"crps": 0.060, "ralsd": 2.0},
    "radar_gpu": {"crps": 0.060, "ralsd": 2.0},  # the goals are for this domain
}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if spec.endswith("d}"):
        return spec.format(int(value))
    return spec.format(float(value))


def _table(methods: dict[str, dict[str, Any]], ablations: list[str]) -> list[str]:
    lines = [
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for name, row in methods.items():
        # a one-member forecast has no spread and its rank histogram only says "above or below"
        single = {"spread_skill", "rank_flatness"} if row.get("n_members") == 1 else set()
        cells = ["-" if key in single else _fmt(row.get(key), spec) for key, _, spec in COLUMNS]
        label = f"{name} *(ablation)*" if name in ablations else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _hardware(methods: dict[str, dict[str, Any]]) -> list[str]:
    """Where the models' wall times were measured, one line per device, the training devices
    first (row names hold commas, so a line joins them with semicolons)."""
    models = [name for name, row in methods.items() if row.get("kind") == "model"]
    keys = ("train_device", "sample_device")
    if not any(methods[name].get(key) for name in models for key in keys):
        return []
    devices: dict[str, list[str]] = {}
    for name in models:
        for key, what in zip(keys, ("trained", "sampled"), strict=True):
            device = methods[name].get(key)
            where = f"{what} on {device}" if device else f"{what} before records named the device"
            devices.setdefault(where, []).append(name)
    lines = [
        f"- {where}: {'every model row' if names == models else '; '.join(names)}"
        for where, names in sorted(devices.items(), key=lambda item: item[0].startswith("sampled"))
    ]
    return ["Wall times of the models:", "", *lines, ""]


def _anchors(suite: dict[str, Any]) -> list[str]:
    lines = ["| method | metric | anchor | this run |", "| --- | --- | ---: | ---: |"]
    methods = suite["scores"]["methods"]
    for name, values in suite["anchors"].items():
        for key, anchor in values.items():
            ours = (
                suite["scores"].get("q99_obs")
                if key == "q99_obs"
                else methods.get(name, {}).get(key)
            )
            lines.append(f"| {name} | {key} | {anchor} | {_fmt(ours, '{:.3f}')} |")
    return lines


def _goals(name: str, methods: dict[str, dict[str, Any]], ablations: list[str]) -> list[str]:
    lines = []
    for method, row in methods.items():
        diffusion = method.startswith(("EDM", "residual EDM"))
        if row.get("kind") != "model" or not diffusion or method in ablations:
            continue
        checks = [
            f"CRPS {row['crps']:.3f} <= {goal}: {'yes' if row['crps'] <= goal else 'no'}"
            for key, goal in GOALS.get(name, {}).items()
            if key == "crps"
        ]
        if "ralsd" in GOALS.get(name, {}):
            goal = GOALS[name]["ralsd"]
            checks.append(
                f"RALSD {row['ralsd']:.2f} <= {goal}: {'yes' if row['ralsd'] <= goal else 'no'}"
            )
        q = abs(row["q99_rel_bias"])
        checks.append(f"|q99 bias| {q:.1f}% <= 10%: {'yes' if q <= 10 else 'no'}")
        ss = row["spread_skill"]
        checks.append(f"spread/skill {ss:.2f} in [0.9, 1.1]: {'yes' if 0.9 <= ss <= 1.1 else 'no'}")
        rivals = [m for m in methods if m.lower().startswith(("regression", "analogs", "rainfarm"))]
        beaten = [m for m in rivals if row["crps"] < methods[m]["crps"]]
        missing = (
            ""
            if any(m.lower().startswith("regression") for m in rivals)
            else " (none of regression)"
        )
        checks.append(
            f"CRPS ahead of {len(beaten)}/{len(rivals)} regression/analogs/RainFARM rows{missing}"
        )
        ridges = [m for m in methods if m.lower().startswith("ridge")]
        if ridges:  # not a rival the issue names, but the strongest baseline on Iberia
            ahead = [m for m in ridges if row["crps"] < methods[m]["crps"]]
            checks.append(f"ahead of {len(ahead)}/{len(ridges)} ridge rows")
        lines.append(f"- **{method}**: " + "; ".join(checks))
    return lines


def _gcm(gcm: dict[str, Any]) -> list[str]:
    if not gcm:
        return []
    keys = ["mean", "wet_day_frequency", "q50", "q90", "q99", "q99.9", "spectral_rms_db"]
    lines = [
        "",
        "### GCM application (CNRM-CM5 historical predictors, test winters 1998-2002)",
        "",
        f"{gcm['sampling']}: the model trained on NCEP reanalysis applied to the CNRM-CM5 "
        "predictors (scaled with the reanalysis scalers from the checkpoint; "
        f"{gcm.get('n_members', 4)} members{_gcm_dry(gcm)}). GCM days are not observed days, so only "
        "distributions are compared: all valid cells and days (members pooled); wet day >= 1 "
        "mm/day; spectral distance = RMS over wavenumbers of the dB ratio of the time-mean "
        "spectrum to E-OBS's.",
        "",
        "| field | " + " | ".join(keys) + " |",
        "| --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for name, row in gcm["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return lines


def _gcm_dry(gcm: dict[str, Any]) -> str:
    threshold = gcm.get("dry_threshold")
    if threshold is None:
        return ""
    return f"; drizzle threshold {threshold:.3f} mm/day, the one fitted for the reanalysis draw"


def write_results(data: dict[str, Any], path: Path) -> None:
    """docs/results.md: a table per experiment, anchors, goals, commands, commit and machine."""
    lines = [
        "# Skill on real data",
        "",
        "Generated by `make bench-skill` (`python -m bench.skill.run`) from "
        "`bench/results/skill.json`; hand-written notes come from `bench/skill/notes.md`.",
        "",
        f"- commit: `{data['commit']}`" + (" (with uncommitted changes)" if data["dirty"] else ""),
        f"- machine: {data['machine']}",
        "",
    ]
    for name, suite in data["suites"].items():
        scores = suite["scores"]
        lines += [
            f"## {name}",
            "",
            f"Domain: {suite['domain']}. {scores.get('n_test_days')} test times; observed q99 "
            f"{scores.get('q99_obs', float('nan')):.2f}.",
            "",
            *_table(scores["methods"], suite.get("ablations", [])),
            "",
            *([suite["note"], ""] if suite.get("note") else []),
            *_hardware(scores["methods"]),
        ]
        if suite.get("ablations"):
            lines += [
                "*(ablation)*: rows of `--ablations` (REFERENCE's sigma_data 0.5, sigma_data 0.2, "
                "the validation sampler sweep): how the core setting was found; see the notes below.",
                "",
            ]
        fast = suite.get("fast_sampler") or {}
        if fast.get("candidates"):
            lines += [
                "Fast sampler (<= 10 NFE) chosen by CRPS on the validation split (4 members, "
                f"`experiment={suite.get('fast_model')}`; `--ablations`):",
                "",
                "| sampler (overrides) | NFE | val CRPS | val RALSD |",
                "| --- | ---: | ---: | ---: |",
            ]
            for c in fast["candidates"]:
                label = " ".join(c["overrides"])
                lines.append(f"| `{label}` | {c['nfe']} | {c['crps']:.4g} | {c['ralsd']:.2f} |")
            lines.append("")
        if suite.get("anchors"):
            where = suite.get("anchor_domain") or "the same domain"
            lines += [f"Anchors (independent scripts, same split, on {where}):", ""]
            lines += [*_anchors(suite), ""]
            for method, values in (suite.get("anchor_check") or {}).items():
                shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                lines.append(
                    f"- our {method} on that domain (bench/skill/radar_full_check.py): {shown}"
                )
            lines.append("")
        goals = _goals(name, scores["methods"], suite.get("ablations", []))
        if goals:
            lines += ["Goals:", "", *goals, ""]
        lines += _gcm(suite.get("gcm") or {})
        lines += [
            "",
            "Commands (the bench composes these configs through Hydra's compose API):",
            "",
        ]
        lines += ["```", *suite["commands"], "```", ""]
    if NOTES.is_file():
        lines += ["", NOTES.read_text().strip(), ""]
    write_text(path, "\n".join(lines) + "\n")
