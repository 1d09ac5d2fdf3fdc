"""Whole-domain MRMS check of the anchors (``python -m bench.skill.radar_full_check``): nearest and
bicubic upsampling of the x8 block-mean coarse field (blocks < 50% covered = 0) on the last 8
frames of the shared 2048 x 4096 file, MAE and RALSD over pixels covered at least once. Writes
outputs/skill/radar_full/anchors_check.json (read by the report). ~15 min on one CPU core."""

import json
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from downscale.evaluation import baselines
from downscale.evaluation.metrics import pixel, spectral


def main() -> dict:
    """Compute and write the whole-domain check; returns it."""
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
    out = {}
    for name, fn in {
        "nearest": lambda: baselines.nearest_upsample(c, grid),
        "bicubic": lambda: baselines.interpolate(c, grid, "cubic"),
    }.items():
        s = fn().astype("float32")
        out[name] = {
            "mae": float(pixel.mae(s, fine, valid)),
            "ralsd": float(spectral.ralsd(s, fine, valid, threshold=0.02)),
        }
        print(name, out[name], time.time() - t0, flush=True)
    path = (
        Path(__file__).resolve().parents[2]
        / "outputs"
        / "skill"
        / "radar_full"
        / "anchors_check.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
