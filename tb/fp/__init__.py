"""Testbenches of the low-bit FP cores (hw/fp)."""
