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

Which samples share is the caller's knowledge (the rollout's group of each sample), never
guessed from tokens: two prompts with the same text and image-token count have the same ids but
different images. A row is worth it when the tokens saved outweigh its attention, which grows
with the square of the row (the dense mask also rules out causal-skipping kernels):
:func:`worth_sharing` compares the two layouts' cost estimates per micro-batch.

SDPA and eager attention only: flash-attn's varlen kernels cannot express the mask.
"""

from __future__ import annotations

import torch

from mm.encode import IGNORE, EncodedSample


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


def group_rows(groups: list[int]) -> list[list[int]]:
    """Consecutive samples of one rollout group form a row."""
    rows: list[list[int]] = []
    for i, g in enumerate(groups):
        if rows and groups[rows[-1][0]] == g:
            rows[-1].append(i)
        else:
            rows.append([i])
    return rows


def worth_sharing(lengths: list[int], prompt_lengths: list[int], groups: list[int], pair_cost: float) -> bool:
    """True when shared-prompt rows cost less than padded rows by a FLOP estimate: one unit per
    token (the linear layers) plus ``pair_cost`` per attended (query, key) pair, all pairs of a
    masked row counted. ``pair_cost`` = attention FLOPs per pair / linear FLOPs per token,
    about 2 / (4 * hidden + 3 * intermediate) per layer."""
    padded = len(lengths) * (max(lengths) + pair_cost * max(lengths) ** 2)
    rows = [prompt_lengths[r[0]] + sum(lengths[i] - prompt_lengths[i] for i in r) for r in group_rows(groups)]
    shared = len(rows) * (max(rows) + pair_cost * max(rows) ** 2)
    return shared < padded


def shared_prompt_batch(
    samples: list[EncodedSample], prompt_lengths: list[int], groups: list[int], pad_id: int, merge: int = 4
) -> dict:
    """Model kwargs with one row per group, plus padded ``labels``, the tree indices and
    ``seq_ids`` (each token's sample; a prompt counts for its group's first sample).

    ``groups``: the rollout group of each sample (samples of a group are consecutive and share
    their first ``prompt_lengths`` tokens and images); ``merge``: patches per visual token."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    B, Lp = len(samples), max(len(s) for s in samples)
    labels = torch.full((B, Lp), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        labels[i, : len(s)] = s.labels
    rows = group_rows(groups)
    lengths = [prompt_lengths[r[0]] + sum(len(samples[i]) - prompt_lengths[i] for i in r) for r in rows]
    R, L = len(rows), max(lengths)
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    types = torch.zeros(R, L, dtype=torch.long)
    pos = torch.zeros(3, R, L, dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)
    owner = torch.full((R, L), -1, dtype=torch.long)
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
        owner[r, :P] = members[0]
        off = P
        for k, i in enumerate(members, start=1):
            s = samples[i]
            if prompt_lengths[i] != P or not torch.equal(s.input_ids[:P], first.input_ids[:P]):
                raise ValueError(f"sample {i}: its prompt differs from its group's first sample's")
            if (s.labels[:P] != IGNORE).any():
                raise ValueError(f"sample {i}: labelled tokens inside its prompt; nothing to share")
            n = len(s) - P
            sl = slice(off, off + n)
            ids[r, sl], types[r, sl], pos[:, r, sl], seg[r, sl], owner[r, sl] = (
                s.input_ids[P:],
                s.mm_token_type_ids[P:],
                s.position_ids[:, P:],
                k,
                i,
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
        "seq_ids": owner,
        "use_cache": False,
        "tree_src": torch.cat(src),
        "tree_dst": torch.cat(dst),
        "tree_tgt": torch.cat(tgt),
    }
    if pixels:
        batch["pixel_values"], batch["image_grid_thw"] = torch.cat(pixels), torch.cat(grids)
    return batch
