"""Benchmarks of backfill: ``scripts/bench`` (``python -m bench``) runs one module per scenario."""
