"""Vision-language-action models and their world: the VLA (a Qwen2.5-VL backbone, views +
instruction + proprio -> a chunk of K x D actions; ``model``) with Spatial Forcing's projector,
teachers and precomputed features (``spatial/``), its data (JSONL records and LeRobot v3.0
folders: ``data``, ``lerobot``, ``lerobot_write``, ``datasets``, ``synth``), the MetaWorld
simulator with scripted demonstrations and closed-loop evaluation (``metaworld``, ``demos``,
``closed_loop``), and ``VLAPolicy``, which runs an exported model. Training is
``alignment.vla``."""

from vla.policy import VLAPolicy

__all__ = ["VLAPolicy"]
