"""Rows that hold a prompt once and its completions after it: the layout of a GRPO group.

The G rollouts of one prompt start with the same tokens (and images). Padded rows repeat that
prompt G times in every log-prob and training pass; here one row holds the prompt once, then each
completion (everything after the prompt: generated turns and tool results), and a 4-D mask lets
a completion's tokens attend to the prompt and to their own completion's earlier tokens only.
Every token keeps its trajectory's own M-RoPE position (each completion continues from the
prompt's end), so it sees exactly what it sees in its own padded row: the log-probs are the
padded batch's, with the prompt's tokens and images computed once per group instead of G times.

A completion's first token is predicted from the prompt's last position, not from the token
before it in the row, so the batch carries per labelled token where its predictor sits
(``tree_src``, a flat index into the rows), its id (``tree_tgt``) and where its log-prob goes in
the padded ``[B, L - 1]`` layout (``tree_dst``); ``labels`` stay padded ``[B, L]``.

SDPA and eager attention only: flash-attn's varlen kernels cannot express the mask.
"""

from __future__ import annotations

import torch

from mm.encode import IGNORE, EncodedSample

TREE_KEYS = ("tree_src", "tree_dst", "tree_tgt")


def _image_tokens(sample: EncodedSample, merge: int) -> list[int]:
    if sample.image_grid_thw is None:
        return []
    return (sample.image_grid_thw.prod(-1) // merge).tolist()


def _split_images(sample: EncodedSample, prompt_length: int, merge: int) -> int:
    """How many of the sample's images lie inside its first ``prompt_length`` tokens."""
    inside = int((sample.mm_token_type_ids[:prompt_length] == 1).sum())
    n, seen = 0, 0
    for t in _image_tokens(sample, merge):
        if seen + t > inside:
            break
        seen, n = seen + t, n + 1
    if seen != inside:
        raise ValueError("a prompt ends inside an image; share_prompt needs prompts of whole turns")
    return n


def _same_prompt(a: EncodedSample, b: EncodedSample, n: int) -> bool:
    return (
        len(a) >= n
        and len(b) >= n
        and torch.equal(a.input_ids[:n], b.input_ids[:n])
        and torch.equal(a.mm_token_type_ids[:n], b.mm_token_type_ids[:n])
    )


def group_rows(samples: list[EncodedSample], prompt_lengths: list[int]) -> list[list[int]]:
    """Consecutive samples that share their prompt (same length, ids and token types) form a row."""
    rows: list[list[int]] = []
    for i, s in enumerate(samples):
        if rows:
            j = rows[-1][0]
            if prompt_lengths[i] == prompt_lengths[j] and _same_prompt(samples[j], s, prompt_lengths[j]):
                rows[-1].append(i)
                continue
        rows.append([i])
    return rows


def shared_prompt_batch(
    samples: list[EncodedSample], prompt_lengths: list[int], pad_id: int, merge: int = 4
) -> dict:
    """Model kwargs with one row per shared prompt, plus padded ``labels`` and the tree indices.

    ``merge``: patches per visual token (Qwen2.5-VL merges 2 x 2)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    B, Lp = len(samples), max(len(s) for s in samples)
    labels = torch.full((B, Lp), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        labels[i, : len(s)] = s.labels
    rows = group_rows(samples, prompt_lengths)
    lengths = [prompt_lengths[r[0]] + sum(len(samples[i]) - prompt_lengths[i] for i in r) for r in rows]
    R, L = len(rows), max(lengths)
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    types = torch.zeros(R, L, dtype=torch.long)
    pos = torch.zeros(3, R, L, dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)
    pixels, grids, src, dst, tgt = [], [], [], [], []
    for r, members in enumerate(rows):
        first, P = samples[members[0]], prompt_lengths[members[0]]
        ids[r, :P], types[r, :P], pos[:, r, :P], seg[r, :P] = (
            first.input_ids[:P],
            first.mm_token_type_ids[:P],
            first.position_ids[:, :P],
            0,
        )
        n_img = _split_images(first, P, merge)
        patches = first.image_grid_thw.prod(-1).tolist() if first.image_grid_thw is not None else []
        if n_img:
            pixels.append(first.pixel_values[: sum(patches[:n_img])])
            grids.append(first.image_grid_thw[:n_img])
        off = P
        for k, i in enumerate(members, start=1):
            s = samples[i]
            if (s.labels[:P] != IGNORE).any():
                raise ValueError(f"sample {i}: labelled tokens inside its prompt; nothing to share")
            n = len(s) - P
            sl = slice(off, off + n)
            ids[r, sl], types[r, sl], pos[:, r, sl], seg[r, sl] = (
                s.input_ids[P:],
                s.mm_token_type_ids[P:],
                s.position_ids[:, P:],
                k,
            )
            own = s.image_grid_thw.prod(-1).tolist() if s.image_grid_thw is not None else []
            if len(own) > n_img:  # tool results: the images after the prompt's
                pixels.append(s.pixel_values[sum(own[:n_img]) :])
                grids.append(s.image_grid_thw[n_img:])
            p = torch.nonzero(s.labels[P:] != IGNORE)[:, 0] + P  # labelled positions in the sample
            before = torch.where(p == P, torch.full_like(p, P - 1), p - 1 - P + off)  # predictor in the row
            src.append(r * L + before)
            dst.append(i * (Lp - 1) + p - 1)
            tgt.append(s.labels[p])
            off += n
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    visible = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)
    mask = causal & visible & (seg >= 0)[:, :, None]
    mask |= torch.eye(L, dtype=torch.bool) & (seg < 0)[:, :, None]  # padding attends to itself
    batch = {
        "input_ids": ids,
        "attention_mask": mask[:, None],
        "position_ids": pos,
        "mm_token_type_ids": types,
        "labels": labels,
        "use_cache": False,
        "tree_src": torch.cat(src),
        "tree_dst": torch.cat(dst),
        "tree_tgt": torch.cat(tgt),
    }
    if pixels:
        batch["pixel_values"], batch["image_grid_thw"] = torch.cat(pixels), torch.cat(grids)
    return batch
