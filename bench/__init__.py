"""Benchmarks: ``python -m bench.NAME`` from the repository root writes
bench/results/NAME.json (``bench.common`` is their shared harness)."""
