"""The options of ``mmpost serve`` (one dataclass; the CLI builds its flags from the help texts)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mm.config import opt
from vision_tools.engine import EngineConfig
from vision_tools.generation.vllm import VLLMConfig


@dataclass
class ServeConfig:
    image_dirs: list[str] = opt(factory=list, help="folders requests may name images in")
    max_turns: int = opt(16, "turns per conversation: the default and the most a request may ask")
    max_turn_tokens: int = opt(1024, "new tokens per turn: the default and the most a request may ask")
    max_images: int = opt(8, "images per request (prompt images and tool results sent back)")
    max_n: int = opt(8, "the most trajectories one request may ask for (n)")
    max_body_bytes: int = opt(32 * 2**20, "largest request body; larger is answered 413")
    max_image_bytes: int = opt(16 * 2**20, "largest image file")
    max_image_pixels: int = opt(8192 * 8192, "refuse larger images (decompression bombs)")
    max_json_depth: int = opt(64, "deepest JSON nesting a request may use; deeper is answered 400")
    max_batch: int = opt(
        16,
        "conversations generated together; a finished one frees its slot (memory: each holds its KV "
        "cache, up to max_total_tokens)",
    )
    chunk_tokens: int = opt(
        0,
        "0: a round is one whole turn of every running conversation; N: a round decodes at least N "
        "tokens and ends as soon as a waiting request fits or a quarter of its conversations ended their "
        "turns, which then move on (their tools run) without waiting for the batch's longest turn "
        "(cached generator; on a 2-core CPU about as fast as whole turns, see docs/performance.md)",
    )
    prefix_cache: int = opt(
        8,
        "keep the keys and values of the text before the first image (the system prompt) of the last N "
        "distinct prompts, so requests sharing it prefill it once (cached generator; 0: off)",
    )
    batch_wait_ms: float = opt(20.0, "how long an idle server waits for more requests to batch (ms)")
    max_queue: int = opt(256, "conversations waiting for a slot; more are answered 429")
    request_timeout: float = opt(600.0, "seconds a request may take before it is answered 504 (0: none)")
    shutdown_timeout: float = opt(3.0, "seconds SIGTERM/SIGINT wait for in-flight replies to be sent")
    engine: EngineConfig = opt(
        factory=lambda: EngineConfig(generator="cached", cut_loops=True),
        help="generation defaults of every request (max_turns, max_turn_tokens: the bounds above)",
    )
    vllm: VLLMConfig = opt(
        factory=VLLMConfig,
        help="engine.generator vllm (`--engine vllm`): where vLLM runs and its limits; continuous "
        "batching and paged KV come from vLLM",
    )

    def __post_init__(self):
        for name in ("max_turns", "max_turn_tokens", "max_images", "max_n", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_body_bytes <= 0 or self.max_image_bytes <= 0 or self.request_timeout < 0:
            raise ValueError("ServeConfig: max_body_bytes, max_image_bytes must be > 0, request_timeout >= 0")
        if self.chunk_tokens < 0:
            raise ValueError(
                f"ServeConfig.chunk_tokens must be >= 0 (0: whole turns), got {self.chunk_tokens}"
            )

    def base_engine(self) -> EngineConfig:
        """The engine options a request starts from: ``engine`` with the server's turn limits,
        generating every running conversation in one batch."""
        return replace(
            self.engine,
            max_turns=self.max_turns,
            max_turn_tokens=self.max_turn_tokens,
            batch_size=self.max_batch,
        )
