"""Whole-domain MRMS check of the anchors (``python -m bench.skill.radar_full_check [method ...]``):
nearest and bicubic upsampling (MAE, RALSD) and RainFARM with 8 members (CRPS, spread-skill, RALSD)
of the x8 block-mean coarse field (blocks < 50% covered = 0) on the last 8 frames of the shared
2048 x 4096 file, over pixels covered at least once. Methods named on the command line (default:
all) are recomputed and merged into outputs/skill/radar_full/anchors_check.json (read by the
report). ~15 min on one CPU core for the interpolations."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from downscale.evaluation import baselines
from downscale.evaluation.metrics import pixel, spectral


def main(methods: list[str] | None = None) -> dict:
    """Compute ``methods`` (default: all), merge them into the check's JSON; returns the JSON."""
    t0 = time.time()
    root = os.environ.get(
        "DOWNSCALE_DATA_ROOT", str(Path(__file__).resolve().parents[3] / "shared" / "data")
    )
    ds = xr.open_dataset(f"{root}/radar/mrms_20190610.nc")
    fine = ds["precip"].isel(time=slice(28, 36)).astype("float32").load().clip(0, 300)
    valid = fine.notnull().mean("time") > 0  # pixels ever covered
    v = fine.values
    nt, ny, nx = v.shape
    blk = v.reshape(nt, ny // 8, 8, nx // 8, 8)
    frac = np.isfinite(blk).mean((2, 4))
    coarse = np.where(frac >= 0.5, np.nanmean(blk, (2, 4)), 0.0)
    c = xr.DataArray(
        coarse,
        dims=("time", "lat_coarse", "lon_coarse"),
        coords={
            "time": fine.time,
            "lat_coarse": fine.lat.values.reshape(-1, 8).mean(1),
            "lon_coarse": fine.lon.values.reshape(-1, 8).mean(1),
        },
    )
    grid = fine.to_dataset(name="precip")
    deterministic = {
        "nearest": lambda: baselines.nearest_upsample(c, grid),
        "bicubic": lambda: baselines.interpolate(c, grid, "cubic"),
    }
    path = (
        Path(__file__).resolve().parents[2]
        / "outputs"
        / "skill"
        / "radar_full"
        / "anchors_check.json"
    )
    out = json.loads(path.read_text()) if path.exists() else {}
    for name in methods or [*deterministic, "RainFARM 8"]:
        if name in deterministic:
            s = deterministic[name]().astype("float32")
            out[name] = {
                "mae": float(pixel.mae(s, fine, valid)),
                "ralsd": float(spectral.ralsd(s, fine, valid, threshold=0.02)),
            }
        else:  # the bench's RainFARM row: 8 members, seed 0, slope fitted to the coarse fields
            out[name] = _rainfarm_scores(c, grid, fine, valid)
        print(name, out[name], time.time() - t0, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def _rainfarm_scores(
    coarse: xr.DataArray, grid: xr.Dataset, fine: xr.DataArray, valid: xr.DataArray
) -> dict[str, float]:
    """CRPS, spread-skill and RALSD of RainFARM, one frame at a time: the 8 x 8 x 2048 x 4096
    ensemble held at once, with the metrics' intermediates, does not fit in 24 GB. The draws are
    those of one call over all frames (one generator per frame); CRPS and the spread-skill sums are
    pooled over valid pixels, RALSD over frames (each frame has the same wavenumbers)."""
    lazy = baselines.rainfarm(
        coarse.assign_attrs(units="mm/h"), grid, n_members=8, seed=0, time_chunk=1
    )
    crps_sum = n = var_sum = err_sum = ralsd2 = 0.0
    m = lazy.sizes["member"]
    for i in range(fine.sizes["time"]):
        obs = fine.isel(time=[i])
        s = lazy.isel(time=[i]).load().where(obs.notnull())
        ok = obs.notnull() & valid
        crps_sum += float(pixel.crps_map(s, obs).where(ok).sum())
        n += int(ok.sum())
        var_sum += float(s.var("member", ddof=1).where(ok).sum())
        err_sum += float(((s.mean("member") - obs) ** 2).where(ok).sum())
        ralsd2 += float(spectral.ralsd(s, obs, valid, threshold=0.02)) ** 2
    return {
        "crps": crps_sum / n,
        "spread_skill": float(np.sqrt((m + 1) / m * var_sum / err_sum)),
        "ralsd": float(np.sqrt(ralsd2 / fine.sizes["time"])),
    }


if __name__ == "__main__":
    main(sys.argv[1:] or None)
