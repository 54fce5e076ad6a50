"""cocotb testbenches: shared stream drivers/monitors and scoreboard, one sub-package per core."""
