"""Context managers that OBSERVE a UNet and always restore it (hooks removed, outputs unchanged)."""

from diffprobe.capture.activations import DEFAULT_POOL, capture_features, default_layers, pool_features
from diffprobe.capture.eager import eager

__all__ = ["DEFAULT_POOL", "capture_features", "default_layers", "eager", "pool_features"]
