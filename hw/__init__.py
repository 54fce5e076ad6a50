"""Amaranth RTL of the varaccel cores, one sub-package per core."""
