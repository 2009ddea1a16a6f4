"""``ScriptedGenerator``: replays fixed assistant turns (tests, data building: the CRUX builder
runs its trajectories through the same engine that serves and rolls out)."""

from __future__ import annotations

from mm.chat_template import IM_END
from vision_tools.generation.base import Context, Generator, Sampling


class ScriptedGenerator(Generator):
    """Replays fixed assistant turns: ``turns[row][k]`` is the text of conversation row's k-th
    attempt (resamples count as attempts). Tokenised canonically, ``<|im_end|>`` appended."""

    def __init__(self, processor, turns: list[list[str]], end_turn: bool = True):
        self.tok, self.turns, self.end_turn = processor.tokenizer, turns, end_turn
        self.calls = [0] * len(turns)

    def generate(
        self, contexts: list[Context], max_new_tokens: list[int], sampling: Sampling, steps: None = None
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
