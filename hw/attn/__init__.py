"""hw/attn package."""
