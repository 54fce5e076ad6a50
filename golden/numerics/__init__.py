"""Bit-exact integer models of every hardware datapath (one module per core)."""
