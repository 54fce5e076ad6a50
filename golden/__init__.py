"""PyTorch golden model of the accelerated VAR pipeline: the specification the RTL is checked against."""
