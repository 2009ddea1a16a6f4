"""Training algorithms on one DeepSpeed loop.

- ``loop`` (the shared ``Trainer``) and ``loop_config`` (its ``optim:`` / ``train:`` sections),
  ``data`` (step plans and micro-batches), ``units`` (what each loss is a mean over),
  ``evaluator`` (held-out metrics during training, the best model), ``losses/`` (pure loss
  functions and the RL-loss registry), ``rewards/`` (the reward registry, built-in and ViRC
  rewards), ``train`` (config -> trainer, pipelines);
- one trainer per algorithm beside its config, each with its held-out set: ``sft``, ``dpo``
  (SPECS), ``grpo/`` (GRPO/DAPO for CLS-RL and ViRC strategic RL), ``vla`` (action heads with
  Spatial Forcing, the model in the ``vla`` package);
- ``builders/`` (recipe data), ``infra/`` (distributed, DeepSpeed setup, checkpoints, metrics,
  schedule, HF export).

Builds on ``mm``, ``vision_tools`` (tool rollouts), ``evaluation`` (answer matching, judges)
and ``vla``; see docs/extending.md for the layers.
"""
