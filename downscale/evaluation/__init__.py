"""Evaluation: metrics over xarray, baselines, plots, reports and the runner."""
