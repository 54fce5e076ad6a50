"""Benchmarks of the golden model (GPU latency on the device machine)."""
