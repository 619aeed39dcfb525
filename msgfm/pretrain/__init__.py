"""msGFM pretraining: cross-sensor SimMIM over heterogeneous multi-source batches."""
