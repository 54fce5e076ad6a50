"""cocotb testbenches of the radix sort / top-k core (hw/sort)."""
