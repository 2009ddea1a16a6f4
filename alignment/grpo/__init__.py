"""GRPO / DAPO (``algorithm: grpo``): ``config`` (the YAML's sections), ``rollout`` (prompts ->
G sampled completions -> rewards -> advantages), ``batch`` (the per-sequence record and the
micro-batch), ``shared_prompt`` (a group's prompt once per row), ``module`` (log-probs and the
policy loss), ``trainer`` (the loop's hooks), ``held_out`` (greedy held-out rewards)."""

from alignment.grpo.batch import GRPOBatch, Sequence
from alignment.grpo.config import GRPOConfig
from alignment.grpo.module import GRPOModule, sequence_logprobs
from alignment.grpo.rollout import Group, PromptPlanner, Rollouts, declare, read_rl_records
from alignment.grpo.trainer import GRPOState, GRPOTrainer

__all__ = [
    "GRPOBatch",
    "GRPOConfig",
    "GRPOModule",
    "GRPOState",
    "GRPOTrainer",
    "Group",
    "PromptPlanner",
    "Rollouts",
    "Sequence",
    "declare",
    "read_rl_records",
    "sequence_logprobs",
]
