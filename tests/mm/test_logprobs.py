"""mm.logprobs against a naive full-softmax computation on random tensors (fp32)."""

import pytest
import torch

from mm.encode import IGNORE
from mm.logprobs import labelled_logprobs, target_logprobs

V, D = 11, 8


def naive(hidden, head, labels):
    """Full [B, L-1, V] log-softmax and entropy, the slow way."""
    full = torch.log_softmax(head(hidden)[:, :-1].float(), -1)
    tgt = labels[:, 1:]
    logp = full.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    return logp, -(full.exp() * full).sum(-1), tgt != IGNORE


@pytest.fixture
def data():
    torch.manual_seed(0)
    head = torch.nn.Linear(D, V, bias=False)
    hidden = torch.randn(3, 7, D)
    labels = torch.randint(0, V, (3, 7))
    labels[torch.rand(3, 7) < 0.4] = IGNORE
    labels[2] = IGNORE  # a row with nothing labelled
    return hidden, head, labels


@pytest.mark.parametrize("chunk", [1, 2, 4096])
def test_token_logprobs_and_entropy_match_a_full_softmax(data, chunk):
    hidden, head, labels = data
    want, want_ent, valid = naive(hidden, head, labels)
    lp = labelled_logprobs(hidden, head, labels, chunk=chunk, entropy=True)
    assert torch.equal(lp.valid, valid) and int(lp.count) == int(valid.sum()) > 0
    torch.testing.assert_close(lp.values, want[valid], atol=1e-6, rtol=0)
    dense = lp.dense()
    torch.testing.assert_close(dense[valid], want[valid], atol=1e-6, rtol=0)
    assert (dense[~valid] == 0).all()
    torch.testing.assert_close(lp.entropy, want_ent[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(lp.mean_entropy(), want_ent[valid].mean(), atol=1e-6, rtol=0)


def test_the_summed_nll_and_its_gradient_match_cross_entropy(data):
    """The SFT loss: -sum of log-probs equals cross-entropy over full logits, gradients included."""
    hidden, head, labels = data
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    lp = labelled_logprobs(h1, head, labels, chunk=2)
    (-lp.values.sum()).backward()
    ref = torch.nn.functional.cross_entropy(
        head(h2)[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=IGNORE
    )
    ref.backward()
    torch.testing.assert_close(-lp.values.sum(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-6, rtol=0)


def test_per_row_sums_match_a_loop_over_rows(data):
    hidden, head, labels = data
    want, _, valid = naive(hidden, head, labels)
    total, count = labelled_logprobs(hidden, head, labels).per_sample()
    for b in range(hidden.shape[0]):
        torch.testing.assert_close(total[b], want[b][valid[b]].sum(), atol=1e-6, rtol=0)
        assert count[b] == valid[b].sum()
    assert total[2] == 0 and count[2] == 0


def test_packed_sums_by_seq_id_match_each_sample_alone():
    """Samples packed into rows (seq ids, -1 on padding) sum to what each gives in its own row."""
    torch.manual_seed(1)
    head = torch.nn.Linear(D, V, bias=False)
    lengths = [4, 6, 3, 5]
    hid = [torch.randn(n, D) for n in lengths]
    lab = [torch.randint(0, V, (n,)) for n in lengths]
    for y in lab:
        y[0] = IGNORE  # a sample's first token is never predicted from the previous sample
        y[1] = IGNORE
    rows = [[0, 1], [2, 3]]  # sample ids packed per row
    L = max(sum(lengths[i] for i in r) for r in rows) + 2  # padding at the end of every row
    hidden = torch.randn(len(rows), L, D)
    labels = torch.full((len(rows), L), IGNORE)
    seq_ids = torch.full((len(rows), L), -1)
    for b, r in enumerate(rows):
        off = 0
        for i in r:
            n = lengths[i]
            hidden[b, off : off + n], labels[b, off : off + n], seq_ids[b, off : off + n] = hid[i], lab[i], i
            off += n
    total, count = labelled_logprobs(hidden, head, labels, chunk=3).per_sample(seq_ids)
    assert total.shape == (len(lengths),)
    for i in range(len(lengths)):
        alone, _, ok = naive(hid[i][None], head, lab[i][None])
        torch.testing.assert_close(total[i], alone[ok].sum(), atol=1e-6, rtol=0)
        assert count[i] == ok.sum()


def test_logits_directly_and_no_positions():
    """``lm_head=None`` reads the input as logits; no labelled position gives empty results."""
    torch.manual_seed(2)
    logits = torch.randn(5, V)
    y = torch.randint(0, V, (5,))
    lp, ent = target_logprobs(logits, y, None, chunk=2)
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[torch.arange(5), y], atol=1e-6, rtol=0)
    assert ent is None
    none = labelled_logprobs(torch.randn(2, 4, V), None, torch.full((2, 4), IGNORE), entropy=True)
    assert none.values.shape == (0,) and float(none.mean_entropy()) == 0.0
    assert none.per_sample()[1].tolist() == [0.0, 0.0]
