"""Context managers that OBSERVE a UNet and always restore it (hooks removed, outputs unchanged)."""

from diffprobe.capture.activations import DEFAULT_POOL, capture_features, default_layers, pool_features
from diffprobe.capture.attention import attention_modules, query_indices, record_attention
from diffprobe.capture.eager import eager

__all__ = [
    "DEFAULT_POOL",
    "attention_modules",
    "capture_features",
    "default_layers",
    "eager",
    "pool_features",
    "query_indices",
    "record_attention",
]
