"""hw/fp package."""
