"""golden/model package."""
