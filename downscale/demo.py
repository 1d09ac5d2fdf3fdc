"""``make demo``: train, sample and evaluate on the embedded synthetic data, then print where the
report is. Everything goes below ``outputs/demo/<date>_<time>/``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from downscale.utils.errors import report_user_errors

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(name: str, overrides: list[str]):
    """Compose a primary config from conf/ with overrides (no Hydra run-dir handling)."""

    with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR), job_name="demo"):
        return compose(config_name=name, overrides=overrides)


@report_user_errors
def main(argv: list[str] | None = None) -> dict:
    from downscale import sample, train
    from downscale.utils.malloc import tune_malloc

    tune_malloc()
    os.environ.setdefault("WANDB_MODE", "offline")
    root = Path("outputs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    extra = list(argv if argv is not None else sys.argv[1:])
    train_cfg = compose_config(
        "train", [f"paths.output_dir={root / 'train'}", "experiment=demo", *extra]
    )
    trained = train.run(train_cfg)
    sample_cfg = compose_config(
        "sample",
        [
            f"paths.output_dir={root / 'sample'}",
            f"run_dir={trained['run_dir']}",
            # the best sampler at <= 10 NFE with the schedule on the trained noise range
            # (docs/sampling.md): CRPS 0.99 against dpm2_heun 10 steps' 1.22 on the demo model
            "sampler=dpmpp_2m",
            "sampler.steps=10",
            "schedule.sigma_min=0.02",
            "evaluation=default",
        ],
    )
    sampled = sample.run(sample_cfg)
    print("\nDemo finished.")
    print(f"  checkpoint: {trained['last_ckpt']}")
    print(f"  samples:    {sampled['path']}")
    print(f"  metrics:    {sampled['metrics_path']}")
    print(f"  figures:    {sampled['metrics_path'].parent / 'figures'}")
    print(f"  report:     {sampled['metrics_path'].parent / 'report.html'}")
    return {"train": trained, "sample": sampled}


if __name__ == "__main__":
    main()
