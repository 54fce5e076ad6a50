"""golden/accel package."""
