"""Aggregating finetuning results into the paper's Tables 3, 5 and 6."""
