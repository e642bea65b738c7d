"""What a careful user writes without ``backfill``: the baselines of the throughput scenario."""
