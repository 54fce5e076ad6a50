"""cocotb testbenches of the attention core (hw/attn)."""
