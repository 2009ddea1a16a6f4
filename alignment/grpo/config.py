"""Configuration of GRPO / DAPO (``mmpost train`` with ``algorithm: grpo``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignment.loop_config import OptimConfig, TrainConfig
from alignment.rewards import reward_weights
from evaluation.judge import JudgeConfig
from mm.config import ConfigError, opt
from mm.loading import ModelConfig
from mm.plugins import is_ref, locate
from mm.visual import VisualConfig
from vision_tools.generation.vllm import VLLMConfig


@dataclass
class RLDataConfig:
    train: str = opt("", "RL records: prompt messages + answer (+ meta) per line")
    eval: str | None = opt(
        None, "held-out RL prompts: greedy rollouts every train.eval_every steps (and for `mmpost eval`)"
    )
    format: Literal["auto", "mmpost", "sharegpt", "alpaca", "openai", "trl", "rl", "llamafactory_v1"] = opt(
        "auto", "format of data.train / data.eval (auto: told by the columns; docs/data.md lists them)"
    )
    prompts_per_step: int = opt(
        4, "prompts per rollout batch over all ranks (the papers' batch; each rank rolls out 1/world of them)"
    )
    micro_batch_size: int = opt(8, "sequences per forward/backward micro-batch")
    share_prompt: bool = opt(
        True,
        "score a group's prompt once per micro-batch: one row holds the prompt, then its completions, "
        "each masked to see the prompt and itself (the padded rows' log-probs; SDPA/eager only; "
        "used for a micro-batch when a FLOP estimate says it is cheaper)",
    )
    visual: VisualConfig = opt(
        factory=VisualConfig, help="pixel limits and the per-sample visual-token budget"
    )


@dataclass
class RolloutConfig:
    num_generations: int = opt(8, "G: completions sampled per prompt")
    temperature: float = opt(1.0, "sampling temperature (0: greedy)")
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(0, "top-k sampling (0: off)")
    max_completion_length: int = opt(512, "new tokens per turn")
    max_turns: int = opt(1, "assistant turns per rollout (> 1: tool calls run through vision_tools)")
    tools: bool | list[str] = opt(
        False,
        "true: declare (in the system prompt) and execute the ViRC tools in multi-turn rollouts; a "
        "list: those tools, each a built-in's name (crop_image, ...) or path/to/file.py:function "
        "(a typed function with a docstring, see vision_tools.tools); false: the data's own prompts",
    )
    coords: Literal["dynamic", "fixed"] = opt(
        "dynamic",
        "how tool coordinates are meant, in rollouts and in virc_turn: pixels of the image as shown, "
        "or ViRC's fixed 0..999 grid (the data's prompts must announce 1000 x 1000 images then)",
    )
    generator: str = opt(
        "cached",
        "decoding backend (vision_tools.generation.GENERATORS): cached: one prefill per prompt group, "
        "KV cache kept across tool turns; hf: model.generate over every full context (same greedy ids; "
        "ZeRO-3 on several ranks always uses hf's loop); vllm: vLLM (rollout.vllm), the policy's "
        "weights pushed into it before every rollout that follows an update",
    )
    vllm: VLLMConfig = opt(
        factory=VLLMConfig,
        help="the vllm generator: placement (server: its own process and environment, colocate), "
        "the vLLM environment's python, KV cache, devices (docs/rl.md)",
    )
    image_cache: bool = opt(
        True,
        "encode each distinct image once per rollout batch and reuse its features in generation and "
        "the no-grad log-prob passes, and in the training pass when the vision tower and merger are "
        "frozen (off by itself under ZeRO-3 on several ranks)",
    )

    def __post_init__(self):
        from vision_tools.generation import GENERATORS

        if self.generator not in GENERATORS:
            raise ConfigError(f"rollout.generator={self.generator!r}: use one of {', '.join(GENERATORS)}")
        if isinstance(self.tools, list):  # users' files pinned to absolute paths, found from anywhere
            self.tools = [
                locate(t, f"rollout.tools[{i}]") if is_ref(t) else t for i, t in enumerate(self.tools)
            ]
        self.toolset()  # a bad tool reference fails when the config loads

    def toolset(self) -> list | None:
        """The tools rollouts declare and execute (``vision_tools.tools.Tool``), or None (false)."""
        from vision_tools.tools import resolve_tools

        return resolve_tools(self.tools, "rollout.tools")


@dataclass
class GRPOLossConfig:
    kind: str = opt(
        "grpo",
        "the policy loss (alignment.losses.RL_LOSSES): grpo, the clipped surrogate of GRPO / DAPO / "
        "Dr.GRPO (aggregation picks which)",
    )
    options: dict[str, float] = opt(
        factory=dict, help="extra keyword arguments of a registered policy loss (its own hyperparameters)"
    )
    clip_low: float = opt(0.2, "ratio clip below 1")
    clip_high: float = opt(0.28, "ratio clip above 1 (DAPO clip-higher; 0.2 = symmetric GRPO)")
    aggregation: Literal["token_mean", "sequence_mean", "fixed_length"] = opt(
        "token_mean", "token_mean (DAPO), sequence_mean (GRPO) or fixed_length (Dr.GRPO)"
    )
    advantage_scale: Literal["group", "batch", "none"] = opt(
        "group", "divide by the group's std (GRPO), the batch's std, or not at all (Dr.GRPO)"
    )
    beta: float = opt(0.0, "KL coefficient to the frozen reference (k3); 0 = no reference model")
    tis_cap: float = opt(
        0.0,
        "truncated importance sampling (TRL's vllm_importance_sampling_cap, verl's TIS): each "
        "token's policy loss times min(exp(old log-prob - the rollout engine's log-prob), tis_cap), "
        "correcting for the sampler not being the trainer (vllm; TRL and verl use 2); 0: off",
    )
    mu: int = opt(
        1,
        "optimizer steps per rollout batch (old log-probs stored when > 1); an epoch scores each prompt once",
    )
    dynamic_sampling: bool = opt(
        False,
        "DAPO dynamic sampling: train only on groups whose rewards differ, drawing fresh prompts "
        "until the rank has its prompts_per_step share of them (or max_refills rounds are spent: "
        "the step then holds fewer groups, never zero-advantage ones)",
    )
    max_refills: int = opt(2, "dynamic sampling: extra rollout rounds per step at most")
    overlong_filter: bool = opt(
        False,
        "DAPO overlong filtering: completions cut at the length limit get no loss (their rewards "
        "still shape their group's advantages)",
    )
    overlong_cache: int = opt(
        0,
        "DAPO soft overlong punishment: L_cache, the last tokens before the length limit L_max = "
        "rollout.max_completion_length x max_turns over which a penalty grows linearly to -1 "
        "(added to the reward; 0: off; DAPO: 4096 of 20480)",
    )

    def __post_init__(self):
        from alignment.losses import RL_LOSSES

        if self.kind not in RL_LOSSES:
            raise ConfigError(f"loss.kind={self.kind!r}: use one of {', '.join(RL_LOSSES)}")
        if self.tis_cap < 0:
            raise ConfigError(f"loss.tis_cap must be >= 0 (0: off), got {self.tis_cap}")


@dataclass
class RewardWeight:
    name: str = opt("", "a built-in reward's name, or path/to/file.py:function (a user's reward)")
    weight: float = opt(1.0, "its weight in the summed reward")


@dataclass
class GRPOConfig:
    algorithm: str = opt("grpo", "which trainer runs this config")
    init_from: str | None = opt(None, "start from a previous run's output_dir (its final/ model)")
    model: ModelConfig = opt(
        factory=ModelConfig, help="model loading: checkpoint, dtype, attention, freezing, LoRA"
    )
    data: RLDataConfig = opt(factory=RLDataConfig, help="prompts and batching")
    rollout: RolloutConfig = opt(factory=RolloutConfig, help="sampling")
    loss: GRPOLossConfig = opt(factory=GRPOLossConfig, help="clipping, aggregation, advantages, KL")
    rewards: dict[str, float] | list[RewardWeight] = opt(
        factory=lambda: {"format_think_answer": 0.5, "accuracy": 1.0},
        help="reward -> weight ({name: weight}, or a list of {name, weight}); a name is a built-in "
        "reward or path/to/file.py:function, a user's (completions, **sample) -> list[float]",
    )
    rewards_by_source: dict[str, dict[str, float]] = opt(
        factory=dict,
        help="data_source -> rewards ({name: weight}, as `rewards`) for the rows of that source "
        "(EasyR1/verl `data_source`, in a record's meta); other rows use `rewards`",
    )
    judge: JudgeConfig = opt(
        factory=JudgeConfig,
        help="who scores a turn's reasoning for virc_turn: rule fallback or an HTTP judge",
    )
    optim: OptimConfig = opt(factory=OptimConfig, help="AdamW and schedule")
    train: TrainConfig = opt(factory=TrainConfig, help="steps, DeepSpeed, checkpoints, logging")

    def __post_init__(self):
        self.rewards = reward_weights(self.rewards)  # the list form becomes {name: weight}
        for src, weights in self.rewards_by_source.items():
            if not isinstance(weights, dict):
                raise ConfigError(
                    f"rewards_by_source.{src}: expected a mapping {{reward name: weight}}, got {weights!r}"
                )
            self.rewards_by_source[src] = reward_weights(weights, f"rewards_by_source.{src}")

    def rewards_for(self, meta: dict | None) -> dict[str, float]:
        """The rewards of a record with ``meta``: its data_source's in rewards_by_source, else rewards."""
        return self.rewards_by_source.get((meta or {}).get("data_source"), self.rewards)
