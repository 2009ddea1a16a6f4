"""Which reader a VLA data path takes: a LeRobot v3.0 dataset folder or a JSONL file of records."""

from __future__ import annotations

from vla.data import VLADataset
from vla.lerobot import LeRobotVLADataset, is_lerobot


def open_vla_dataset(path: str, fmt: str = "auto", *args, **kwargs):
    """The VLA samples of ``path``: a LeRobot v3.0 dataset folder (``fmt`` "lerobot", or "auto" and the
    folder holds meta/info.json) or a JSONL file; the arguments are VLADataset's."""
    if fmt == "lerobot" or (fmt == "auto" and is_lerobot(path)):
        return LeRobotVLADataset(path, *args, **kwargs)
    return VLADataset(path, *args, **kwargs)
