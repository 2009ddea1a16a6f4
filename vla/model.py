"""The VLA: Qwen2.5-VL backbone + proprio token + K parallel action queries + an L1 action head,
and (training only) the Spatial Forcing projector on one decoder layer's visual tokens.

Forward (``VLAModel``), per sample::

    embeddings of [system/user turn with V views + instruction][assistant header][p][q_1 .. q_K]
        p   = proprio_proj(proprio)                   one token, MLP to the LLM width
        q_k = action_queries[k]                       learned embeddings
    -> backbone (causal; every query sees all views, the instruction and the proprio token)
    -> action_head(h(q_k)) = a_k                      [K, D] in one pass (OpenVLA-OFT style;
                                                      head "mlp", or "mlp_resnet" as OFT's)
    L_action = mean |a - a*|                          per sample, normalised actions
    L_align  = 1 - cos(projector(h_l(visual tokens)), teacher targets)   (vla.spatial.align;
               with shift_student, h_l one position after each visual token, as released)
    L        = L_action + alpha * L_align

The module returns per-sample sums and the number of samples, so the shared loop averages over
samples exactly, however they are split into micro-batches and ranks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from vla.spatial.align import AlignProjector, alignment_targets, cosine_align_loss

# an exported VLA: the backbone in Hugging Face format plus these two files
HEADS = "vla_heads.safetensors"  # proprio projector, action queries, action head
VLA_JSON = "vla.json"  # the heads' sizes, max_views and the visual limits


def _mlp(d_in: int, hidden: int, d_out: int, norm: bool = False) -> torch.nn.Sequential:
    layers = [torch.nn.LayerNorm(d_in)] if norm else []
    return torch.nn.Sequential(
        *layers, torch.nn.Linear(d_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d_out)
    )


class MLPResNet(torch.nn.Module):
    """OpenVLA-OFT's action head: LayerNorm -> Linear -> ReLU, ``blocks`` pre-norm residual blocks
    ``x + ReLU(Linear(LayerNorm(x)))``, then LayerNorm -> Linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int, blocks: int = 2):
        super().__init__()
        self.inp = torch.nn.Sequential(
            torch.nn.LayerNorm(d_in), torch.nn.Linear(d_in, hidden), torch.nn.ReLU()
        )
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
            for _ in range(blocks)
        )
        self.out = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class VLAHeads(torch.nn.Module):
    """What the exported model keeps beside the backbone: proprio projector, action queries, action head."""

    def __init__(
        self,
        d_llm: int,
        chunk: int,
        dims: int,
        proprio_dim: int,
        hidden: int = 0,
        head: Literal["mlp", "mlp_resnet"] = "mlp",
        head_blocks: int = 2,
    ):
        super().__init__()
        hidden = hidden or d_llm
        self.chunk, self.dims, self.proprio_dim, self.hidden = chunk, dims, proprio_dim, hidden
        self.head, self.head_blocks = head, head_blocks
        self.proprio_proj = _mlp(proprio_dim, hidden, d_llm) if proprio_dim else None
        self.action_queries = torch.nn.Parameter(torch.randn(chunk, d_llm) * 0.02)
        if head == "mlp":
            self.action_head = _mlp(d_llm, hidden, dims, norm=True)
        elif head == "mlp_resnet":
            self.action_head = MLPResNet(d_llm, hidden, dims, head_blocks)
        else:
            raise ValueError(f"action.head must be 'mlp' or 'mlp_resnet', got {head!r}")

    def config(self) -> dict:
        return {
            "chunk": self.chunk,
            "dims": self.dims,
            "proprio_dim": self.proprio_dim,
            "hidden": self.hidden,
            "head": self.head,
            "head_blocks": self.head_blocks,
        }

    def slot_embeddings(self, proprio: torch.Tensor) -> torch.Tensor:
        """[B, P] -> the slot embeddings [B, (1 +) K, d] in slot order."""
        B = proprio.shape[0]
        q = self.action_queries[None].expand(B, -1, -1)
        if self.proprio_proj is None:
            return q
        return torch.cat([self.proprio_proj(proprio.to(q.dtype))[:, None], q], dim=1)


def resolve_layer(layer: int, n_layers: int) -> int:
    """``align.layer`` -> 0-based index into the decoder layers (see AlignConfig.layer)."""
    if layer == 0:
        layer = max(1, int(0.75 * n_layers))
    idx = layer - 1 if layer > 0 else n_layers + layer
    if not 0 <= idx < n_layers:
        raise ValueError(f"align.layer={layer} is outside the model's {n_layers} decoder layers")
    return idx


class VLAModel(torch.nn.Module):
    model_attr = "backbone"  # where the trained VLM lives (the HF export keeps only its weights)

    def __init__(
        self,
        backbone,
        heads: VLAHeads,
        projector: AlignProjector | None = None,
        layer: int = 0,
        alpha: float = 0.0,
        pos_scale: float = 0.1,
        shift_student: bool = False,
    ):
        super().__init__()
        self.backbone, self.heads, self.projector = backbone, heads, projector
        self.alpha, self.pos_scale, self.shift_student = alpha, pos_scale, shift_student
        base = self.base
        self.image_id = base.config.image_token_id
        self.merge = base.config.vision_config.spatial_merge_size
        # the decoder layers are read from the base model when needed, never registered here a
        # second time (a second name for the same weights breaks the ZeRO-3 export)
        self.layer_idx = resolve_layer(layer, len(base.model.language_model.layers))

    @property
    def base(self):
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def encode(self, input_ids, slot_ids, proprio, capture: bool = False, **inputs):
        """Backbone pass with the slots filled: (last hidden [B, L, d], layer-l hidden or None)."""
        base = self.base
        emb = base.model.get_input_embeddings()(input_ids)  # [B, L, d]
        slots = self.heads.slot_embeddings(proprio).to(emb.dtype)  # [B, S, d]
        emb = emb.masked_scatter((slot_ids >= 0)[..., None], slots)
        captured = []
        hook = None
        if capture:
            hook = base.model.language_model.layers[self.layer_idx].register_forward_hook(
                lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
            )
        try:
            out = base.model(input_ids=input_ids, inputs_embeds=emb, **inputs)
        finally:
            if hook is not None:
                hook.remove()
        return out.last_hidden_state, (captured[0] if captured else None)

    def predict(self, input_ids, slot_ids, proprio, **inputs) -> torch.Tensor:
        """Normalised action chunks [B, K, D]."""
        h, _ = self.encode(input_ids, slot_ids, proprio, **inputs)
        q = h[slot_ids >= 1].view(h.shape[0], self.heads.chunk, -1)  # [B, K, d]
        return self.heads.action_head(q).float()

    def forward(
        self,
        input_ids,
        slot_ids,
        proprio,
        actions,
        view_mask,
        teacher_feats=None,
        mm_token_type_ids=None,
        labels=None,
        **inputs,
    ):
        align = self.alpha > 0 and self.projector is not None and teacher_feats is not None
        h, h_l = self.encode(input_ids, slot_ids, proprio, capture=align, **inputs)
        B = h.shape[0]
        pred = self.heads.action_head(h[slot_ids >= 1].view(B, self.heads.chunk, -1)).float()  # [B, K, D]
        l1 = (pred - actions.float()).abs().mean(dim=(1, 2))  # [B]
        total = l1
        stats = {"action_l1": l1.detach().sum()}
        if align:
            l_align, n_tok = self.align_loss(
                h_l, input_ids, inputs["image_grid_thw"], view_mask, teacher_feats
            )
            total = total + self.alpha * l_align
            stats["align"] = l_align.detach().sum()
            stats["align_tokens"] = n_tok.sum()
        return total.sum(), torch.tensor(B), stats

    def align_loss(self, h_l, input_ids, image_grid_thw, view_mask, teacher_feats):
        """Per-sample L_align [B] and the number of aligned tokens [B].

        The k-th image of the batch is view v of sample b in order (views fill ``view_mask`` from
        the left); its merged grid is (h / m, w / m) of ``image_grid_thw``. With ``shift_student``
        the student of a visual token is the hidden state one position later (the released
        ``gain_feat_1move``; a view's last one is its ``<|vision_end|>``).
        """
        at = input_ids == self.image_id  # [B, L]
        if self.shift_student:
            at = F.pad(at[:, :-1], (1, 0))
        vis = self.projector(h_l[at])  # [N_visual, d_t]
        grids = [(int(h) // self.merge, int(w) // self.merge) for _, h, w in image_grid_thw.tolist()]
        per_image = vis.split([gh * gw for gh, gw in grids])
        owners = view_mask.nonzero().tolist()  # [(b, v)] in image order
        if len(owners) != len(grids):
            raise RuntimeError(f"{len(grids)} images in the batch for {len(owners)} present views")
        B, d_t = view_mask.shape[0], vis.shape[-1]
        by_sample: list[list] = [[] for _ in range(B)]
        for (b, v), grid, p in zip(owners, grids, per_image):
            by_sample[b].append((p, alignment_targets(teacher_feats[b, v], grid, self.pos_scale)))
        T = max(1, max(sum(len(p) for p, _ in s) for s in by_sample))
        pred = vis.new_zeros(B, T, d_t, dtype=torch.float32)
        target = torch.zeros_like(pred)
        mask = torch.zeros(B, T, dtype=torch.bool, device=vis.device)
        for b, pairs in enumerate(by_sample):
            if pairs:
                p = torch.cat([x for x, _ in pairs])
                pred[b, : len(p)], target[b, : len(p)], mask[b, : len(p)] = (
                    p.float(),
                    torch.cat([t for _, t in pairs]),
                    True,
                )
        return cosine_align_loss(pred, target, mask)
