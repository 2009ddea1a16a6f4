"""StreamingVLM inference and data.

What will live here: the bounded streaming KV cache (attention sink + recent windows, with
contiguous RoPE kept by rotating post-RoPE keys on eviction), the per-second engine, video
sources, the real-time demo and the overlapped-chunk training-data builder. Builds on ``mm``.
"""
