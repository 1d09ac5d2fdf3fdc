"""Logging helpers: W&B set-up, W&B evaluation logging, and image panels."""
