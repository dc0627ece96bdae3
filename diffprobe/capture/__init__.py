"""Context managers that OBSERVE a UNet and always restore it (hooks removed, outputs unchanged)."""

from diffprobe.capture.activations import DEFAULT_POOL, capture_features, capture_maps, pool_features
from diffprobe.capture.attention import attention_modules, query_indices, record_attention
from diffprobe.capture.eager import eager, eval_mode
from diffprobe.capture.layers import block_layers, check_layers, default_layers, find_layers

__all__ = [
    "DEFAULT_POOL",
    "attention_modules",
    "block_layers",
    "capture_features",
    "capture_maps",
    "check_layers",
    "default_layers",
    "eager",
    "eval_mode",
    "find_layers",
    "pool_features",
    "query_indices",
    "record_attention",
]
