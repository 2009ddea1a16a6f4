"""StreamingVLM inference and data: a bounded KV cache with contiguous RoPE kept by rotation,
the per-second engine, video sources, the terminal and browser demo (``mmpost stream``) and
the overlapped-chunk SFT data builder (``mmpost data stream-chunks``). See docs/streaming.md.
"""

from streaming.cache import CacheConfig, StreamingKVCache, rotate_keys
from streaming.engine import SILENCE, Segment, StreamConfig, StreamingEngine
from streaming.sources import Second, Source, open_source

__all__ = [
    "SILENCE",
    "CacheConfig",
    "Second",
    "Segment",
    "Source",
    "StreamConfig",
    "StreamingEngine",
    "StreamingKVCache",
    "open_source",
    "rotate_keys",
]
