"""Worker of test_engine_zero3 (run by torchrun on 2 CPU ranks): the tool engine on a ZeRO-3
sharded tiny model, with rank 0's conversations making two crop calls and rank 1's answering at
once, so rank 1 has no work in rounds 2 and 3 and rank 0 has text-only contexts in none.

Writes OUT/rank<r>.json: the turns of each trajectory and the ids the model generated."""

import json
import os
import sys

import torch

from alignment.infra import distributed as dist
from alignment.infra.deepspeed_setup import deepspeed_config
from mm.loading import load_model
from tests.conftest import solid
from vision_tools.api import build_prompt
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation.hf import HFGenerator

CROP = '<think>look</think><tool_call>{"name": "crop_image", "arguments": {"bbox_2d": [0, 0, 56, 56], "image_index": 0}}</tool_call>'
ANSWER = "<think>done</think><answer>1</answer>"


class Forced(HFGenerator):
    """Runs the real, synced generation (every forward gathers the sharded weights), then replaces
    the text: rank 0 calls the crop tool twice before answering, rank 1 answers at once."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.turn: dict[int, int] = {}
        self.sampled: list[list[int]] = []

    def generate(self, contexts, max_new_tokens, sampling, steps=None):
        news = super().generate(contexts, max_new_tokens, sampling, steps)
        self.sampled += news
        out = []
        for c in contexts:
            k = self.turn.get(c.key, 0)
            self.turn[c.key] = k + 1
            text = CROP if dist.rank() == 0 and k < 2 else ANSWER
            out.append(self.tok(text, add_special_tokens=False)["input_ids"] + [self.end_ids[0]])
        return out


def main(out: str) -> None:
    dist.init("cpu")
    torch.manual_seed(0)
    model, processor = load_model("tiny")
    import deepspeed

    cfg = deepspeed_config("zero3", 1, 1, 1.0, False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    model.eval()
    gen = Forced(model, processor, synced_gpus=True)
    tools = ToolEngine(model, processor, config=EngineConfig(max_turns=4, max_turn_tokens=8), generator=gen)
    prompts = [build_prompt(solid(112 + 28 * i, 112), f"How many? {i}") for i in range(2 + dist.rank())]
    trajs = tools.run(prompts)
    with open(os.path.join(out, f"rank{dist.rank()}.json"), "w") as f:
        json.dump(
            {
                "turns": [len(t.turns) for t in trajs],
                "answers": [t.answer for t in trajs],
                "sampled": len(gen.sampled),
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1])
