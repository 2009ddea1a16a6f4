"""mm: the shared multimodal layer of mmpost.

Model and processor loading (``load_model``), the record schema (``parse_record``), other data
formats read as records (``open_records``), visual
inputs under a per-sample token budget (``VisualConfig``), conversation -> model inputs
(``ConversationEncoder``), M-RoPE positions (``mrope_positions``), the pad/pack collators and
log-probs at labelled positions (``labelled_logprobs``).
Names are imported lazily so that ``mmpost --help`` does not pay for torch.
"""

import importlib

_EXPORTS = {
    "mm.collate": ["pack_batch", "pad_batch", "per_sample_nll", "plan_packs"],
    "mm.dataset": ["DataError", "Problem", "RecordDataset", "iter_jsonl"],
    "mm.encode": ["IGNORE", "ConversationEncoder", "EncodedSample"],
    "mm.formats": ["open_records"],
    "mm.loading": ["ModelConfig", "load_for_training", "load_model"],
    "mm.logprobs": ["labelled_logprobs"],
    "mm.records": ["Message", "PreferenceRecord", "RecordError", "RLRecord", "SFTRecord", "parse_record"],
    "mm.rope": ["RopeSpec", "mrope_positions"],
    "mm.visual": ["VisualConfig", "VisualError"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mm' has no attribute {name!r}")
