"""Datasets of the one data format, with per-line error reporting.

``RecordDataset`` parses a file of any format ``mm.formats`` reads up front (cheap: no pixels
decoded) and encodes samples lazily. With ``on_error="raise"`` the first bad record raises ``DataError`` naming
``file:line``; with ``"skip"`` bad records are dropped, counted in ``skipped`` and reported.
"""

from __future__ import annotations

import logging
import os

from torch.utils.data import Dataset

from mm.encode import ConversationEncoder, EncodedSample
from mm.formats import data_root, open_records
from mm.jsonl import DataError, Problem, iter_jsonl, json_lines
from mm.records import Record, RecordError, SFTRecord
from mm.visual import VisualError

log = logging.getLogger(__name__)


class RecordDataset(Dataset):
    """Records of one JSONL file; ``__getitem__`` returns the encoded first conversation.

    For SFT records that is the whole conversation; for RL records the prompt (with a generation
    prompt appended); preference records are encoded by the DPO trainer itself.
    """

    def __init__(
        self,
        path: str,
        encoder: ConversationEncoder,
        on_error: str = "raise",
        transform=None,
        format: str = "auto",
    ):
        """``transform(messages) -> messages`` (optional) rewrites each conversation before encoding;
        ``format`` names the file's format (``mm.formats``; "auto" tells it from the columns)."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path, self.encoder, self.on_error, self.transform = path, encoder, on_error, transform
        self.base_dir = data_root(path)
        self.records: list[Record] = []
        self.lines: list[int] = []  # where each record is: JSONL line, or row of other files
        self.problems: list[Problem] = []
        for n, rec in open_records(path, format):
            if isinstance(rec, SFTRecord) and not any(m.role == "assistant" for m in rec.messages):
                rec = Problem(  # a VLA record (actions, no assistant turn): no token would be trained
                    path,
                    n,
                    "no_assistant",
                    "record has 'actions' but no assistant turn, so SFT would train nothing on it",
                    "train VLA records with algorithm: vla, or add the target answer as an assistant turn",
                )
            if isinstance(rec, Problem):
                self._fail(rec)
            else:
                self.records.append(rec)
                self.lines.append(n)
        if self.problems:
            log.warning("%s: skipped %d bad record(s); first: %s", path, len(self.problems), self.problems[0])

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def _fail(self, problem: Problem) -> None:
        if self.on_error == "raise":
            raise DataError(problem)
        self.problems.append(problem)

    def __len__(self) -> int:
        return len(self.records)

    def conversation(self, i: int) -> list:
        """The messages of record ``i`` that are encoded (after ``transform``)."""
        conv = self.records[i].conversations()[0]
        return self.transform(conv) if self.transform else conv

    def __getitem__(self, i: int) -> EncodedSample | None:
        """The encoded sample, or None for a record that fails to encode under on_error=skip."""
        rec = self.records[i]
        try:
            return self.encoder.encode(
                self.conversation(i),
                self.base_dir,
                add_generation_prompt=rec.kind == "rl",
                sample_id=rec.id,
            )
        except (RecordError, VisualError) as e:
            self._fail(Problem(self.path, self.lines[i], e.code, e.message, e.hint))
            return None

    def lengths(self, progress: bool = True) -> list[int]:
        """Token count of every record from file headers (for packing); unencodable records count 0."""
        from tqdm import tqdm

        out = []
        for i, rec in enumerate(
            tqdm(self.records, desc="measuring", disable=not progress or len(self) < 500)
        ):
            try:
                out.append(
                    self.encoder.count_tokens(self.conversation(i), self.base_dir, rec.kind == "rl")[0]
                )
            except (RecordError, VisualError) as e:
                self._fail(Problem(self.path, self.lines[i], e.code, e.message, e.hint))
                out.append(0)
        return out


def rebase_images(messages: list[dict], src: str, dst: str) -> list[dict]:
    """``messages`` with relative image paths re-pointed from the folder of ``src`` to that of
    ``dst`` (a derived JSONL written elsewhere keeps finding its images)."""
    a, b = os.path.dirname(os.path.abspath(src)), os.path.dirname(os.path.abspath(dst))
    if a == b:
        return messages
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            items = []
            for c in m["content"]:
                ref = c.get("image")
                if isinstance(ref, str) and not ref.startswith("data:") and not os.path.isabs(ref):
                    c = {**c, "image": os.path.relpath(os.path.join(a, ref), b)}
                items.append(c)
            m = {**m, "content": items}
        out.append(m)
    return out


__all__ = ["DataError", "Problem", "RecordDataset", "iter_jsonl", "json_lines"]
