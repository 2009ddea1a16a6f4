"""Log-probs of the labelled next tokens: the one implementation every loss and score uses.

SFT (the summed NLL), GRPO (per-token log-probs and entropy), DPO (per-sample sums) and
``mm.per_sample_nll`` all start here. Logits are computed only at labelled positions and
``chunk`` positions at a time, so the full ``[B, L, V]`` tensor is never materialised (with a
152k vocabulary it would dominate memory); each chunk is ``[chunk, V]`` in fp32.

    lp = labelled_logprobs(hidden, model.lm_head, labels)   # hidden [B, L, D], labels [B, L]
    lp.values                   # [N] log p(labels[b, t+1] | ... t) at the N labelled positions
    lp.dense()                  # [B, L-1], 0 where not labelled
    lp.per_sample(seq_ids)      # ([S], [S]) summed log-prob and token count per packed sample
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mm.encode import IGNORE

CHUNK = 4096  # positions per vocabulary projection


def target_logprobs(
    h: torch.Tensor, y: torch.Tensor, lm_head=None, chunk: int = CHUNK, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N] (fp32) of tokens ``y`` [N] given rows ``h`` [N, D], and with ``entropy`` each
    row's entropy [N] (detached). ``lm_head`` projects to the vocabulary (None: ``h`` are logits)."""
    out, ent = [], []
    for k in range(0, h.shape[0], chunk):
        rows = h[k : k + chunk]
        lp = F.log_softmax((rows if lm_head is None else lm_head(rows)).float(), dim=-1)  # [n, V]
        out.append(lp.gather(1, y[k : k + chunk, None])[:, 0])
        if entropy:
            with torch.no_grad():
                ent.append(-(lp.exp() * lp).sum(-1))
    empty = h.new_zeros(0, dtype=torch.float32)
    return (torch.cat(out) if out else empty), ((torch.cat(ent) if ent else empty) if entropy else None)


@dataclass
class LabelledLogprobs:
    """Log-probs at the labelled positions of a batch (target position t + 1 predicted at t)."""

    values: torch.Tensor  # [N] fp32, in row-major order of ``valid``
    valid: torch.Tensor  # [B, L-1] bool: labels[:, 1:] != IGNORE
    entropy: torch.Tensor | None = None  # [N] detached, when asked for

    @property
    def count(self) -> torch.Tensor:
        """The number of labelled positions (a 0-d tensor)."""
        return self.valid.sum()

    def dense(self) -> torch.Tensor:
        """[B, L-1] log-probs, 0 where not labelled."""
        out = torch.zeros(self.valid.shape, dtype=torch.float32, device=self.values.device)
        out[self.valid] = self.values
        return out

    def mean_entropy(self) -> torch.Tensor:
        """Mean entropy over the labelled positions (0 when there are none)."""
        if self.entropy is None:
            raise ValueError("entropy was not computed: call labelled_logprobs(..., entropy=True)")
        return self.entropy.sum() / self.count.clamp(min=1)

    def per_sample(self, seq_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-prob and labelled-token count per sample: ``([S], [S])`` fp32.

        With ``seq_ids`` [B, L] (packed rows; -1 on padding) a sample is a seq id and
        S = max id + 1; without, a sample is a row (S = B). A token belongs to the sample of its
        target position; tokens whose target is padding (seq id < 0) count for none.
        """
        if seq_ids is None:
            rows = torch.arange(self.valid.shape[0], device=self.valid.device)
            sid, n = rows[:, None].expand_as(self.valid)[self.valid], self.valid.shape[0]
        else:
            sid, n = seq_ids[:, 1:][self.valid], int(seq_ids.max()) + 1
        keep = sid >= 0
        values, sid = self.values[keep], sid[keep]
        total = torch.zeros(n, dtype=torch.float32, device=values.device).index_add(0, sid, values)
        count = torch.zeros(n, dtype=torch.float32, device=values.device).index_add(
            0, sid, torch.ones_like(values)
        )
        return total, count


def labelled_logprobs(
    hidden: torch.Tensor, lm_head, labels: torch.Tensor, chunk: int = CHUNK, entropy: bool = False
) -> LabelledLogprobs:
    """Log-probs of ``labels`` [B, L] (IGNORE where not trained) from the final hidden states
    ``hidden`` [B, L, D] (or logits [B, L, V] with ``lm_head=None``)."""
    tgt = labels[:, 1:]
    valid = tgt != IGNORE  # [B, L-1]
    values, ent = target_logprobs(hidden[:, :-1][valid], tgt[valid], lm_head, chunk, entropy)
    return LabelledLogprobs(values, valid, ent)
