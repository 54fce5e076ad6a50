"""hw/sort package."""
