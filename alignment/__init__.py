"""Training algorithms on one DeepSpeed loop.

What will live here: the shared training loop (checkpoints, resume, logging), and per
algorithm a config dataclass beside its trainer: SFT, DPO (SPECS), GRPO/DAPO (CLS-RL, ViRC
strategic RL) and spatial alignment (Spatial Forcing); pure loss functions and reward
functions. Builds on ``mm`` (and on ``vision_tools`` for tool rollouts).
"""
