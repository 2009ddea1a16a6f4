"""mm.packed_attention's pieces against independent computations (its packing is in test_packing.py)."""

import pytest
import torch

from mm.packed_attention import document_block_mask, document_ids


def test_document_ids_hand_worked():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    assert document_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3, 3, 3]]


@pytest.mark.parametrize("lengths", [[300, 130, 500, 60, 257], [128, 128, 5], [1], [130, 1, 300]])
def test_document_block_mask_equals_create_block_mask(lengths):
    """Block structure from document bounds == transformers-style create_block_mask of the same mask_mod."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    doc = torch.cat([doc, doc.flip(1).max() - doc.flip(1)])  # a second row with other boundaries
    L = doc.shape[1]

    def mask_mod(b, h, q, kv):
        return (doc[b, q] == doc[b, kv]) & (q >= kv)

    ours, ref = document_block_mask(doc), create_block_mask(mask_mod, 2, None, L, L, device="cpu")
    for a, b in [(ours.kv_num_blocks, ref.kv_num_blocks), (ours.full_kv_num_blocks, ref.full_kv_num_blocks)]:
        assert torch.equal(a, b)
    n = ours.kv_num_blocks.shape[-1]
    for a, b, cnt in [
        (ours.kv_indices, ref.kv_indices, ours.kv_num_blocks),
        (ours.full_kv_indices, ref.full_kv_indices, ours.full_kv_num_blocks),
    ]:
        for r in range(2):
            for i in range(n):
                c = int(cnt[r, 0, i])
                assert sorted(a[r, 0, i, :c].tolist()) == sorted(b[r, 0, i, :c].tolist())
    assert torch.equal(ours.to_dense(), ref.to_dense())
