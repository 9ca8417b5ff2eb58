"""Benchmarks: commands that print measured figures (and write them as JSON)."""
