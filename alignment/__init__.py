"""Training algorithms on one DeepSpeed loop.

- ``loop`` (the shared ``Trainer``), ``data`` (step plans and micro-batches), ``losses`` (pure loss
  functions), ``rewards`` (verifiable rewards and judges), ``train`` (config -> trainer, pipelines);
- one trainer per algorithm beside its config: ``sft``, ``dpo`` (SPECS), ``grpo`` (GRPO/DAPO for
  CLS-RL and ViRC strategic RL), ``vla/`` (action heads + Spatial Forcing from ``spatial/``);
- ``builders/`` (recipe data), ``evaluation/`` (accuracy, GF), ``infra/`` (distributed, DeepSpeed
  setup, checkpoints, metrics, schedule, HF export).

Builds on ``mm`` (and on ``vision_tools`` for tool rollouts).
"""
