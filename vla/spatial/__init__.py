"""Spatial Forcing: frozen 3-D/2-D teachers, the alignment targets, projector and loss, and
precomputed teacher features."""

from vla.spatial.align import (
    AlignProjector,
    alignment_targets,
    cosine_align_loss,
    resample_grid,
    vggt_position_embedding,
    vggt_uv_grid,
)
from vla.spatial.teacher import build_teacher

__all__ = [
    "AlignProjector",
    "alignment_targets",
    "build_teacher",
    "cosine_align_loss",
    "resample_grid",
    "vggt_position_embedding",
    "vggt_uv_grid",
]
