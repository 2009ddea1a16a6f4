"""One interface for generating the next assistant turn of many conversations at once.

The engine hands a generator a batch of :class:`Context` (token ids so far, their token types,
and the visual tensors of every image in them) and gets back, per row, the new token ids of
one turn: stopped after a stop string (``</tool_call>``, ``</answer>``), an end-of-turn token or
the row's token limit. :class:`HFGenerator` runs ``model.generate`` (batched, KV cache, left
padding) with the M-RoPE positions of mm's rule (``mm.rope``: the ones the trainer scores
with), not the ones ``generate`` would derive itself; :class:`ScriptedGenerator` replays fixed
turns (tests, data building). A vLLM or server-backed generator plugs in by implementing
``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from mm.chat_template import END_OF_TEXT, IM_END, IMAGE_PAD, VISION_END, VISION_START
from mm.image_features import encoder_outputs
from mm.records import RESERVED
from mm.rope import RopeSpec, mrope_positions
from vision_tools.protocol import in_a_loop

STOP_STRINGS = ("</tool_call>", "</answer>")


@dataclass
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    stop: tuple[str, ...] = ()  # stop strings besides STOP_STRINGS
    # end a turn once it is caught in a repetition loop (protocol.in_a_loop; CachedGenerator)
    cut_loops: bool = False


@dataclass
class Context:
    """A conversation so far, as the model reads it."""

    input_ids: list[int]
    types: list[int]  # 0 text, 1 image, 2 video (mm_token_type_ids)
    pixel_values: list[torch.Tensor]  # one [patches, dim] tensor per image, in order
    grids: list[torch.Tensor]  # one [3] (t, h, w) row per image
    key: int = 0  # which conversation (scripted generators replay per conversation)
    # one (pixel_values_videos [patches, dim], grid [3], seconds per temporal patch) per video
    videos: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)
    # the conversation's cache state, kept by the engine between turns (CachedGenerator reads
    # and writes it; None: nothing is kept)
    session: dict | None = None
    # the last ``resumed`` ids are the current turn's tokens so far (a turn a resumable
    # generator stopped after ``steps`` tokens and goes on with)
    resumed: int = 0


class Generator(Protocol):
    def generate(
        self, contexts: list[Context], max_new_tokens: list[int], sampling: Sampling
    ) -> list[list[int]]:
        """New ids of one turn per context (ending at a stop string, end of turn, or the limit)."""
        ...


def context_positions(c: Context, types: torch.Tensor, spec: RopeSpec) -> tuple[torch.Tensor, int]:
    """mm's M-RoPE positions of ``c`` ([3, len]) and the next position (``mm.rope.mrope_positions``)."""
    grids = torch.stack(c.grids) if c.grids else None
    v_grids = torch.stack([v[1] for v in c.videos]) if c.videos else None
    seconds = torch.tensor([v[2] for v in c.videos]) if c.videos else None
    return mrope_positions(types, grids, v_grids, seconds, spec)


def turn_over(tok, new: list[int], limit: int, stops: tuple[str, ...], end_ids, loops: bool = False) -> bool:
    """Whether a turn's ids so far end it: its token limit, an end token, a stop string in its
    last 8 tokens (where one just completed), or (``loops``) a repetition loop that makes the
    turn a ``repetition`` violation whatever follows."""
    if len(new) >= limit or (new and new[-1] in end_ids):
        return True
    if loops and in_a_loop(tok, new):
        return True
    return bool(new) and any(s in tok.decode(new[-8:]) for s in stops)


class _StopCriteria:
    """Per-row stop: a stop string appeared in the new text, or the row's own token limit."""

    def __init__(
        self,
        tokenizer,
        prompt_len: int,
        limits: list[int],
        stops=STOP_STRINGS,
        tail: int = 8,
        cancelled=None,
        keys=(),
    ):
        self.tok, self.prompt_len, self.stops, self.tail = tokenizer, prompt_len, stops, tail
        self.limits = torch.tensor(limits)
        self.cancelled, self.keys = cancelled, keys  # key -> True: stop that row now

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        n_new = input_ids.shape[1] - self.prompt_len
        done = (n_new >= self.limits).to(input_ids.device)
        tails = self.tok.batch_decode(input_ids[:, -min(self.tail, n_new) :])
        hit = torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)
        if self.cancelled is not None:
            hit |= torch.tensor(
                [self.cancelled(k) for k in self.keys], dtype=torch.bool, device=input_ids.device
            )
        return done | hit


class HFGenerator:
    """``model.generate`` over a left-padded batch; positions come from the model's rope rule."""

    # conversation key -> bool, checked at every token: a True row stops at once (a server
    # cancelling the work of a client that went away); None: never
    cancelled = None

    def __init__(self, model, processor, synced_gpus: bool = False, features=None):
        """``synced_gpus``: keep stepping until every rank is done (ZeRO-3 over several ranks
        gathers parameters in every forward, so a rank that stopped early would hang the rest).
        ``features``: an :class:`mm.image_features.ImageFeatures` cache, so an image shared by
        several rows or turns is encoded once (valid while the vision weights do not change)."""
        if features is not None and synced_gpus:  # a rank finding every image cached skips a gather
            raise ValueError(
                "an image-feature cache cannot be used with synced_gpus (ZeRO-3 on several ranks)"
            )
        self.model, self.tok, self.synced_gpus = model, processor.tokenizer, synced_gpus
        self.features = features
        self.rope = RopeSpec.from_config(model.config)
        ids = self.tok.convert_tokens_to_ids
        self.end_ids = [ids(IM_END), ids(END_OF_TEXT)]
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.end_ids[1]
        # control tokens a turn must never contain (an <|image_pad|> without pixels breaks the model)
        self.suppress = [ids(t) for t in RESERVED if ids(t) not in self.end_ids]

    def agree(self, n: int) -> int:
        """The largest ``n`` over ranks when synced, else ``n``: the engine asks how many
        generate calls to make, so that every rank makes the same ones."""
        if not self.synced_gpus or not torch.distributed.is_initialized():
            return n
        t = torch.tensor([n], device=self.model.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t[0])

    def _dummy(self, image: bool) -> Context:
        """A one-token text context, or one with a 28x28 image (one visual token): a synced rank
        with nothing (or no image) to generate still runs every module the other ranks run."""
        if not image:
            return Context([self.pad_id], [0], [], [])
        ids = self.tok.convert_tokens_to_ids
        v = self.model.config.vision_config
        dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
        grid = torch.tensor([1, 2, 2])
        tokens = [ids(VISION_START), ids(IMAGE_PAD), ids(VISION_END)]
        return Context(tokens, [0, 1, 0], [torch.zeros(4, dim)], [grid])

    @torch.no_grad()
    def generate(
        self, contexts: list[Context], max_new_tokens: list[int], sampling: Sampling
    ) -> list[list[int]]:
        from transformers import StoppingCriteriaList

        real = len(contexts)
        if self.synced_gpus:  # every rank has a row to run, and runs the vision tower if one does
            has_image = any(c.pixel_values for c in contexts)
            any_image = bool(self.agree(int(has_image)))
            if not contexts or (any_image and not has_image):
                contexts, max_new_tokens = [*contexts, self._dummy(any_image)], [*max_new_tokens, 1]
        B, L = len(contexts), max(len(c.input_ids) for c in contexts)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.long)
        types = torch.zeros(B, L, dtype=torch.long)
        pos = torch.zeros(3, B, L, dtype=torch.long)  # [3, B, L]; padding keeps 0 (masked)
        for i, c in enumerate(contexts):
            n = len(c.input_ids)
            ids[i, L - n :], mask[i, L - n :], types[i, L - n :] = (
                torch.tensor(c.input_ids),
                1,
                torch.tensor(c.types),
            )
            pos[:, i, L - n :] = context_positions(c, types[i, L - n :], self.rope)[0]
        # given positions, generate goes on from the last one + 1 (the prompt ends with text)
        batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types, "position_ids": pos}
        batch = self._with_visuals(
            batch,
            [v for c in contexts for v in c.videos],
            [p for c in contexts for p in c.pixel_values],
            [g for c in contexts for g in c.grids],
        )
        kwargs = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        stops = STOP_STRINGS + tuple(sampling.stop)
        keys = [c.key for c in contexts]
        criteria = _StopCriteria(self.tok, L, max_new_tokens, stops, cancelled=self.cancelled, keys=keys)
        out = self.model.generate(
            **batch,
            max_new_tokens=max(max_new_tokens),
            eos_token_id=self.end_ids,
            pad_token_id=self.pad_id,
            suppress_tokens=self.suppress,
            synced_gpus=self.synced_gpus,
            stopping_criteria=StoppingCriteriaList([criteria]),
            **kwargs,
        )
        rows = zip(out.cpu()[:real], max_new_tokens[:real])
        return [self._trim(row[L:].tolist(), limit, stops) for row, limit in rows]

    def _with_visuals(self, batch: dict, videos: list, pixels: list, grids: list) -> dict:
        """``batch`` with the rows' videos and images (in order) added, on the model's device; the
        images as cached encoder outputs when the generator has an image-feature cache."""
        if videos:
            batch["pixel_values_videos"] = torch.cat([v[0] for v in videos])
            batch["video_grid_thw"] = torch.stack([v[1] for v in videos])
            batch["second_per_grid_ts"] = torch.tensor([v[2] for v in videos])
        if pixels:
            batch["image_grid_thw"] = torch.stack(grids)
            if self.features is None:
                batch["pixel_values"] = torch.cat(pixels)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        if pixels and self.features is not None:
            batch["mm_encoder_outputs"] = encoder_outputs(torch.cat(self.features(pixels, grids)))
        return batch

    def _trim(self, new: list[int], limit: int, stops=STOP_STRINGS) -> list[int]:
        """Drop the padding after a finished row: keep up to the first end token or stop string
        (whichever comes first: a row stopped by a string is padded with ``<|endoftext|>``)."""
        new = new[:limit]
        end = next((j + 1 for j, t in enumerate(new) if t in self.end_ids), len(new))
        if not any(s in self.tok.decode(new[:end]) for s in stops):
            return new[:end]
        for j in range(1, end + 1):  # the step at which a stop string completed
            if any(s in self.tok.decode(new[max(0, j - 8) : j]) for s in stops):
                return new[:j]
        return new[:end]


class ScriptedGenerator:
    """Replays fixed assistant turns: ``turns[row][k]`` is the text of conversation row's k-th
    attempt (resamples count as attempts). Tokenised canonically, ``<|im_end|>`` appended."""

    def __init__(self, processor, turns: list[list[str]], end_turn: bool = True):
        self.tok, self.turns, self.end_turn = processor.tokenizer, turns, end_turn
        self.calls = [0] * len(turns)

    def generate(
        self, contexts: list[Context], max_new_tokens: list[int], sampling: Sampling
    ) -> list[list[int]]:
        out = []
        for c, limit in zip(contexts, max_new_tokens):
            i = c.key
            k = self.calls[i]
            self.calls[i] += 1
            text = self.turns[i][k] if k < len(self.turns[i]) else "<think></think><answer>?</answer>"
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            if self.end_turn:
                ids = ids + [self.tok.convert_tokens_to_ids(IM_END)]
            out.append(ids[:limit])
        return out


GENERATORS = ("cached", "hf")


def make_generator(
    kind: str, model, processor, synced_gpus: bool = False, features=None, prefixes: int = 0
) -> HFGenerator:
    """The generator named by a config (``EngineConfig.generator``, ``RolloutConfig.generator``);
    ``prefixes``: text prefixes kept across prompts (``cached`` only; for fixed weights)."""
    if kind == "hf":
        return HFGenerator(model, processor, synced_gpus, features)
    if kind == "cached":
        from vision_tools.cached_generation import CachedGenerator

        return CachedGenerator(model, processor, synced_gpus, features, prefixes)
    raise ValueError(f"generator={kind!r}: use one of {', '.join(GENERATORS)}")
