"""``HFGenerator``: ``model.generate`` over a left-padded batch of full contexts (KV cache, per-row
stop strings and limits), at mm's M-RoPE positions rather than the ones ``generate`` would
derive itself. Every row is prefilled in full at every call; ``CachedGenerator`` avoids that.
"""

from __future__ import annotations

import torch

from mm.chat_template import END_OF_TEXT, IM_END, IMAGE_PAD, VISION_END, VISION_START
from mm.image_features import encoder_outputs
from mm.records import RESERVED
from mm.rope import RopeSpec
from vision_tools.generation.base import (
    STOP_STRINGS,
    Context,
    Generator,
    Sampling,
    TurnIds,
    context_positions,
    sampled_logprobs,
)


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


class HFGenerator(Generator):
    """``model.generate`` over a left-padded batch; positions come from the model's rope rule.
    With ``Sampling.logprobs`` the log-probs come from generate's raw logits (``output_logits``:
    it keeps every step's ``[B, V]`` logits until the call returns)."""

    supports_logprobs = True

    def __init__(self, model, processor, *, synced_gpus: bool = False, features=None, prefixes: int = 0):
        """``synced_gpus``: keep stepping until every rank is done (ZeRO-3 over several ranks
        gathers parameters in every forward, so a rank that stopped early would hang the rest).
        ``features``: an :class:`mm.image_features.ImageFeatures` cache, so an image shared by
        several rows or turns is encoded once (valid while the vision weights do not change).
        ``prefixes``: kept text prefixes, a ``CachedGenerator`` option (every row is prefilled in
        full here)."""
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
        """The largest ``n`` over ranks when synced, else ``n`` (see :meth:`Generator.agree`)."""
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
        self, contexts: list[Context], max_new_tokens: list[int], sampling: Sampling, steps: None = None
    ) -> list[list[int]]:
        from transformers import StoppingCriteriaList

        if steps is not None or isinstance(sampling, list):
            raise ValueError("HFGenerator runs whole turns with one Sampling (it is not resumable)")

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
        if sampling.logprobs:
            kwargs.update(return_dict_in_generate=True, output_logits=True)
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
        seqs = out.sequences if sampling.logprobs else out
        turns = [
            self._trim(row[L:].tolist(), limit, stops)
            for row, limit in zip(seqs.cpu()[:real], max_new_tokens)
        ]
        if not sampling.logprobs:
            return turns
        new = seqs[:real, L:]  # [B, T]
        steps = [sampled_logprobs(out.logits[t][:real], new[:, t]) for t in range(new.shape[1])]
        lps = torch.stack(steps, 1).tolist() if steps else [[] for _ in turns]  # [B, T]
        return [TurnIds.of(t, lp[: len(t)]) for t, lp in zip(turns, lps)]

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
