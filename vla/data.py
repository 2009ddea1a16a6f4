"""VLA samples: views + instruction -> Qwen2.5-VL tokens, then one proprio slot and K action slots.

A record is an ordinary ``messages`` record plus ``actions`` (chunk x dims) and ``proprio``::

    {"id": "vla-00001",
     "messages": [{"role": "user", "content": [{"type": "image", "image": "images/00001_front.png"},
                                              {"type": "image", "image": "images/00001_wrist.png"},
                                              {"type": "text", "text": "move to the red ball"}]}],
     "actions": [[dx, dy, dz, droll, dpitch, dyaw, grip], ...],   # K steps
     "proprio": [x, y, z, grip]}

Every image of the record is one camera view, in order (assistant turns, if any, are ignored).
The sequence is the rendered user turn and the assistant header, followed by slot tokens whose
embeddings the model replaces: ``[proprio] [a_1] ... [a_K]`` (``slot_ids`` 0, 1..K; -1 elsewhere).

Actions and proprio are normalised per dimension to [-1, 1] with the 1st and 99th percentiles of
the training set (OpenVLA's q01/q99 rule, values clipped); ``norm_stats.json`` holds them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from mm.collate import pad_batch
from mm.dataset import DataError, Problem, iter_jsonl
from mm.encode import IGNORE, ConversationEncoder, EncodedSample
from mm.records import Message, RecordError, SFTRecord, is_video
from mm.visual import VisualError, open_image

NORM_STATS = "norm_stats.json"


@dataclass
class NormStats:
    """Per-dimension q01/q99 of actions (over all chunk steps) and proprio: x -> 2 (x - q01) / (q99 - q01) - 1."""

    action_q01: list[float]
    action_q99: list[float]
    proprio_q01: list[float] = field(default_factory=list)
    proprio_q99: list[float] = field(default_factory=list)

    @classmethod
    def from_arrays(cls, actions: np.ndarray, proprio: np.ndarray | None) -> NormStats:
        a = actions.reshape(-1, actions.shape[-1])
        p = proprio if proprio is not None and proprio.size else np.zeros((1, 0))
        return cls(
            np.quantile(a, 0.01, axis=0).tolist(),
            np.quantile(a, 0.99, axis=0).tolist(),
            np.quantile(p, 0.01, axis=0).tolist(),
            np.quantile(p, 0.99, axis=0).tolist(),
        )

    @staticmethod
    def _norm(x, lo, hi) -> np.ndarray:
        lo, hi = np.asarray(lo), np.asarray(hi)
        span = hi - lo
        y = np.where(span > 1e-8, 2 * (np.asarray(x) - lo) / np.where(span > 1e-8, span, 1) - 1, 0.0)
        return np.clip(y, -1, 1).astype(np.float32)

    def normalize_actions(self, a) -> np.ndarray:
        return self._norm(a, self.action_q01, self.action_q99)

    def normalize_proprio(self, p) -> np.ndarray:
        return self._norm(p, self.proprio_q01, self.proprio_q99)

    def denormalize_actions(self, y) -> np.ndarray:
        lo, hi = np.asarray(self.action_q01), np.asarray(self.action_q99)
        return ((np.asarray(y) + 1) / 2 * (hi - lo) + lo).astype(np.float32)

    def save(self, folder: str) -> str:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, NORM_STATS)
        with open(path, "w") as f:
            json.dump({"rule": "q01_q99", **self.__dict__}, f, indent=1)
        return path

    @classmethod
    def load(cls, folder: str) -> NormStats:
        path = os.path.join(folder, NORM_STATS)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: a VLA model folder holds the normalisation statistics"
            )
        with open(path) as f:
            d = json.load(f)
        d.pop("rule", None)
        return cls(**d)


@dataclass
class VLASample:
    encoded: EncodedSample  # user turn + assistant header + slots
    slot_ids: torch.Tensor  # [L] -1 text/visual, 0 proprio, 1..K action queries
    proprio: torch.Tensor  # [P] normalised
    views: list  # PIL images of the present views (the teacher's input)
    actions: torch.Tensor | None = None  # [K, D] normalised
    index: int = -1
    id: str | None = None


def view_messages(images: list, instruction: str) -> list[dict]:
    """The prompt of a VLA sample: one user turn, every view an image item, then the instruction."""
    return [
        {
            "role": "user",
            "content": [
                *({"type": "image", "image": im} for im in images),
                {"type": "text", "text": instruction},
            ],
        }
    ]


class VLAEncoder:
    """Encodes the prompt of a sample and appends its slot tokens (training and ``predict_actions``)."""

    def __init__(self, encoder: ConversationEncoder, chunk: int, proprio_dim: int):
        self.encoder, self.chunk, self.proprio_dim = encoder, chunk, proprio_dim
        self.slot_id = encoder.tok.pad_token_id  # any non-visual id: its embedding is replaced

    def encode(self, messages: list, base_dir: str | None, proprio: np.ndarray, sample_id=None) -> tuple:
        prompt = [m for m in messages if (m.role if isinstance(m, Message) else m["role"]) != "assistant"]
        s = self.encoder.encode(prompt, base_dir, add_generation_prompt=True, sample_id=sample_id)
        slots = ([0] if self.proprio_dim else []) + list(range(1, self.chunk + 1))
        n = len(slots)
        pos = torch.arange(s.next_position, s.next_position + n).expand(3, n)
        enc = EncodedSample(
            torch.cat([s.input_ids, torch.full((n,), self.slot_id)]),
            torch.full((len(s) + n,), IGNORE),
            torch.cat([s.mm_token_type_ids, torch.zeros(n, dtype=s.mm_token_type_ids.dtype)]),
            torch.cat([s.position_ids, pos], dim=1),
            pixel_values=s.pixel_values,
            image_grid_thw=s.image_grid_thw,
            next_position=s.next_position + n,
            id=sample_id,
            plans=s.plans,
        )
        slot_ids = torch.cat([torch.full((len(s),), -1), torch.tensor(slots)])
        views = [open_image(p.source, decode=True) for p in s.plans if p.kind == "image"]
        return enc, slot_ids, torch.as_tensor(np.asarray(proprio, np.float32)[: self.proprio_dim]), views


def _first_action_dims(path: str) -> int:
    """D of the first record with a non-empty ``actions`` list (0 when none: the checks then report)."""
    for _, rec in iter_jsonl(path):
        actions = getattr(rec, "actions", None)
        if actions and isinstance(actions[0], list | tuple):
            return len(actions[0])
    return 0


class VLADataset(torch.utils.data.Dataset):
    """VLA records of one JSONL file, checked up front (actions shape, proprio, views) with file:line errors."""

    def __init__(
        self,
        path: str,
        encoder: ConversationEncoder,
        chunk: int,
        dims: int,
        max_views: int,
        use_proprio: bool = True,
        on_error: str = "raise",
        stats: NormStats | None = None,
        cache: bool = False,
    ):
        self.path, self.on_error = path, on_error
        if not dims:  # the action space comes from the data: the first record's width
            dims = _first_action_dims(path)
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.records: list[SFTRecord] = []
        self.lines: list[int] = []
        self.rows: list[int] = []  # position of each record among the file's records (feature files)
        self.problems: list[Problem] = []
        for row, (line, rec) in enumerate(iter_jsonl(path)):
            if isinstance(rec, Problem) and rec.code == "no_assistant":  # a messages record without actions
                rec = Problem(
                    path,
                    line,
                    "missing_actions",
                    "record has no 'actions'",
                    f"add 'actions': {chunk} steps x {dims} numbers",
                )
            problem = rec if isinstance(rec, Problem) else self._check(rec, line, chunk, dims, max_views)
            if problem is None:
                self.records.append(rec)
                self.lines.append(line)
                self.rows.append(row)
            elif on_error == "raise":
                raise DataError(problem)
            else:
                self.problems.append(problem)
        if not self.records:
            raise DataError(f"{path}: no usable VLA records")
        p_dims = {len(r.proprio or []) for r in self.records}
        if len(p_dims) > 1:
            raise DataError(
                Problem(
                    path,
                    0,
                    "bad_proprio",
                    f"records have proprio of lengths {sorted(p_dims)}",
                    "every record needs the same proprio vector",
                )
            )
        self.proprio_dim = p_dims.pop() if use_proprio else 0
        self.dims = dims
        self.actions = np.asarray([r.actions for r in self.records], np.float32)  # [N, K, D]
        self.proprio = np.asarray([(r.proprio or [])[: self.proprio_dim] for r in self.records], np.float32)
        self.stats = stats or NormStats.from_arrays(self.actions, self.proprio if self.proprio_dim else None)
        self.vla = VLAEncoder(encoder, chunk, self.proprio_dim)
        self.cache: dict[int, VLASample] | None = {} if cache else None

    def _check(self, rec, line: int, chunk: int, dims: int, max_views: int) -> Problem | None:
        def bad(code, msg, hint):
            return Problem(self.path, line, code, msg, hint)

        if rec.kind != "sft":
            return bad(
                "not_vla", f"a {rec.kind} record is not a VLA record", "VLA records have messages + actions"
            )
        if rec.actions is None:
            return bad(
                "missing_actions", "record has no 'actions'", f"add 'actions': {chunk} steps x {dims} numbers"
            )
        k, d = len(rec.actions), len(rec.actions[0])
        if (k, d) != (chunk, dims):
            return bad(
                "bad_actions",
                f"actions are {k} x {d}, the config wants {chunk} x {dims}",
                "fix the record or set action.chunk / action.dims",
            )
        items = [it for m in rec.messages if m.role != "assistant" for it in m.visual_items()]
        if any(is_video(it) for it in items):
            return bad(
                "bad_views",
                "record has a video item; a VLA view is one image",
                "one image item per camera view (a frame of the video, not the video)",
            )
        n = len(items)
        if not 1 <= n <= max_views:
            return bad(
                "bad_views",
                f"record has {n} image(s); a VLA sample has 1..{max_views} views",
                "one image item per camera view, or raise data.max_views",
            )
        return None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> VLASample | None:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rec = self.records[i]
        try:
            enc, slots, proprio, views = self.vla.encode(
                rec.messages, self.base_dir, self.stats.normalize_proprio(self.proprio[i]), rec.id
            )
        except (RecordError, VisualError) as e:
            problem = Problem(self.path, self.lines[i], e.code, e.message, e.hint)
            if self.on_error == "raise":
                raise DataError(problem) from e
            self.problems.append(problem)
            return None
        actions = torch.from_numpy(self.stats.normalize_actions(self.actions[i]))
        sample = VLASample(enc, slots, proprio, views, actions, self.rows[i], rec.id)
        if self.cache is not None:
            self.cache[i] = sample
        return sample


def collate(
    samples: list[VLASample], pad_id: int, max_views: int, teacher_size: int = 0, features=None
) -> dict:
    """Pad samples into a batch; adds slot_ids, proprio, actions, view_mask and the teacher's input:
    ``teacher_images`` [B, V, 3, S, S] (live) or ``teacher_feats`` [B, V, h, w, d] (precomputed)."""
    from vla.spatial.teacher import teacher_images

    batch = pad_batch([s.encoded for s in samples], pad_id)
    B, L = batch["input_ids"].shape
    slot_ids = torch.full((B, L), -1, dtype=torch.long)
    view_mask = torch.zeros(B, max_views, dtype=torch.bool)
    for b, s in enumerate(samples):
        slot_ids[b, : len(s.slot_ids)] = s.slot_ids
        view_mask[b, : len(s.views)] = True
    batch.update(slot_ids=slot_ids, proprio=torch.stack([s.proprio for s in samples]), view_mask=view_mask)
    if samples[0].actions is not None:
        batch["actions"] = torch.stack([s.actions for s in samples])
    if features is not None:
        feats = [features.get(s.index, s.id) for s in samples]  # [V_i, h, w, d]
        out = feats[0].new_zeros(B, max_views, *feats[0].shape[1:])
        for b, f in enumerate(feats):
            out[b, : len(f)] = f
        batch["teacher_feats"] = out
    elif teacher_size:
        imgs = torch.zeros(B, max_views, 3, teacher_size, teacher_size)
        for b, s in enumerate(samples):
            imgs[b, : len(s.views)] = teacher_images(s.views, teacher_size)
        batch["teacher_images"] = imgs
    return batch
