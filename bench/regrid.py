"""Benchmark: our conservative regridding against Debian's ``cdo remapcon`` on the same field.

    python bench/regrid.py                      # quick: 10 x 500 x 500 (0.1 deg) -> 1 deg
    python bench/regrid.py --nt 30 --n 1000     # the full-size run of the issue: 30 x 1000 x 1000

Both sides do the same job, file to file: read a netCDF field on a 0.1 deg grid (10% of it NaN,
a "sea"), remap it conservatively to a 1 deg grid, write netCDF. ``ratio`` = our time / cdo's time
(the goal is <= 1); the table also gives our in-memory time and xarray-regrid's, the max relative
difference to cdo (also on a Gaussian T62 target), and our area-mean conservation error.
Writes bench/results/regrid.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downscale.data import grids  # noqa: E402
from downscale.data.regrid import _griddes, area_mean, regrid_conservative  # noqa: E402


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nt", type=int, default=10)
    ap.add_argument("--n", type=int, default=500, help="source size n x n at 0.1 deg")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "regrid.json"))
    args = ap.parse_args()
    if shutil.which("cdo") is None:  # skip cleanly (make bench runs every benchmark)
        print("skipped: cdo is not installed (apt-get install cdo); nothing to compare against")
        return

    half = args.n * 0.1 / 2
    src = grids.regular(resolution=(0.1, 0.1), box={"lon": [-half, half], "lat": [-half, half]})
    tgt = grids.regular(src, resolution=(1.0, 1.0))
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, 4.0, size=(args.nt, *src.shape)).astype(np.float32)
    x[:, : args.n // 10, :] = np.nan  # 10% "sea"
    da = xr.DataArray(
        x,
        dims=("time", "lat", "lon"),
        coords={"time": np.arange(args.nt, dtype=float), "lat": src.lat, "lon": src.lon},
        name="pr",
    )
    da["time"].attrs["units"] = "days since 2000-01-01"
    da["lat"].attrs["units"] = "degrees_north"
    da["lon"].attrs["units"] = "degrees_east"

    with tempfile.TemporaryDirectory(prefix="bench-regrid-") as tmp:
        fin, gd = Path(tmp, "in.nc"), Path(tmp, "grid.txt")
        da.to_dataset().to_netcdf(fin, encoding={"pr": {"_FillValue": np.float32(1e20)}})
        gd.write_text(_griddes(tgt))
        fcdo, fours = Path(tmp, "cdo.nc"), Path(tmp, "ours.nc")

        def run_cdo() -> None:
            subprocess.run(["cdo", "-s", f"remapcon,{gd}", str(fin), str(fcdo)], check=True)

        def run_ours_files() -> None:
            with xr.open_dataset(fin) as ds:
                out = regrid_conservative(ds["pr"].load(), tgt, min_valid_fraction=0.0)
            out.to_dataset().to_netcdf(fours)

        t_cdo, _ = _best(run_cdo, args.repeat)
        t_files, _ = _best(run_ours_files, args.repeat)
        t_mem, ours = _best(
            lambda: regrid_conservative(da, tgt, min_valid_fraction=0.0), args.repeat
        )
        t_lib, lib = _best(
            lambda: regrid_conservative(da, tgt, min_valid_fraction=0.0, backend="xarray_regrid"),
            args.repeat,
        )
        with xr.open_dataset(fcdo) as r:
            ref = r["pr"].values.astype(np.float64)

    ours_v = np.asarray(ours.values, dtype=np.float64)
    both = np.isfinite(ref) & np.isfinite(ours_v)
    same_mask = bool((np.isfinite(ref) == np.isfinite(ours_v)).all())
    max_rel = float(np.max(np.abs(ours_v[both] - ref[both]) / np.abs(ref[both])))
    lib_rel = float(np.nanmax(np.abs(np.asarray(lib.values, dtype=np.float64) - ref) / np.abs(ref)))
    # accuracy on a Gaussian (T62) target grid, where xarray-regrid's median-spacing latitude
    # weights are approximate: a few time steps, against cdo with the same explicit bounds
    g = grids.gaussian(src, nlat=94)
    sub_da = da.isel(time=slice(0, 2))
    g_ref = regrid_conservative(sub_da, g, min_valid_fraction=0.0, backend="cdo").values
    g_ours = regrid_conservative(sub_da, g, min_valid_fraction=0.0).values
    g_lib = regrid_conservative(sub_da, g, min_valid_fraction=0.0, backend="xarray_regrid").values
    g_rel = float(np.nanmax(np.abs(g_ours - g_ref) / np.abs(g_ref)))
    g_lib_rel = float(np.nanmax(np.abs(g_lib - g_ref) / np.abs(g_ref)))
    # conservation on a gap-free copy (the coarse cells tile the source exactly)
    full = da.fillna(1.0)
    c_ours = regrid_conservative(full, tgt)
    cons = float(np.max(np.abs(area_mean(c_ours, tgt) / area_mean(full, src) - 1)))

    res = {
        "field": f"{args.nt} x {args.n} x {args.n} float32 at 0.1 deg -> 1 deg, 10% NaN",
        "cdo_remapcon_s": t_cdo,
        "ours_file_to_file_s": t_files,
        "ours_in_memory_s": t_mem,
        "xarray_regrid_in_memory_s": t_lib,
        "max_rel_diff_vs_cdo": max_rel,
        "xarray_regrid_max_rel_diff_vs_cdo": lib_rel,
        "same_missing_cells_as_cdo": same_mask,
        "gaussian_t62_max_rel_diff_vs_cdo": g_rel,
        "gaussian_t62_xarray_regrid_max_rel_diff_vs_cdo": g_lib_rel,
        "area_mean_rel_error": cons,
        "ratio": t_files / t_cdo,
        "ratio_in_memory": t_mem / t_cdo,
        "goal": "ratio = our file-to-file time / cdo remapcon time <= 1; max_rel_diff < 1e-5",
        "repeat": args.repeat,
    }
    print(f"{'measure':48s} {'value':>12s}")
    for k, v in res.items():
        if isinstance(v, float | bool):
            print(f"{k:48s} {v!s:>12s}" if isinstance(v, bool) else f"{k:48s} {v:12.4g}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
