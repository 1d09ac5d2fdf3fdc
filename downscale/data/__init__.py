"""Data: the synthetic default, dataset stores, scalers, datasets and the DataModule."""
