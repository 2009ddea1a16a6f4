"""Plumbing every trainer shares: ranks and collectives, the DeepSpeed engine config and parameter
groups, atomic checkpoints, metrics logs, the learning-rate schedule and the Hugging Face export."""
