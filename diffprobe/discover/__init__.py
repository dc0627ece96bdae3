"""Label-free concept discovery: sparse dictionaries of a UNet's features per (layer, t)."""
