"""A Qwen2.5-VL-based VLA (views + instruction + proprio -> a chunk of K x D actions, L1) trained
with optional Spatial Forcing alignment; ``VLAPolicy`` runs an exported model."""

from alignment.vla.policy import VLAPolicy

__all__ = ["VLAPolicy"]
