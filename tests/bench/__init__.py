"""Benchmarks: Outpost's own cost against the raw limit of its parts, in the same run."""
