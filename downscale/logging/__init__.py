"""Logging helpers (Weights & Biases)."""
