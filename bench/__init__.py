"""Benchmarks: `make bench-preload` and `make bench-operator`."""
