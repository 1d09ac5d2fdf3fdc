"""Sampling: noise schedules, samplers (pure functions sharing one signature) and tiled
inference."""
