"""Logging helpers: W&B set-up and image panels."""
