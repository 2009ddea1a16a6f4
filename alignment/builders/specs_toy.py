"""The toy SPECS task the tiny model can run end to end (``mmpost data specs-toy data/specs``).

A random 0.2M-parameter model never writes ``<think>...</think><answer>...</answer>`` with the
right answer, so nothing in SPECS would have anything to select. The toy task is the letter task
of the GRPO quickstart (data/letters: "write the letter x", answer ``x``) with SPECS' format
instruction, and four files:

* ``prompts.jsonl``: verifiable prompts (RL records) for GRPO and the pair builder;
* ``base_sft.jsonl``: a short SFT set that turns the tiny model into a stand-in for an instruct
  model (2 in 3 answers well formed, the rest without think tags), the pipeline's ``base`` stage;
* ``pairs.jsonl``: ready-made decoupled pairs (formatted vs corrupted, both answering ``x``) so
  the DPO config runs on its own;
* ``eval_id.jsonl`` / ``eval_ood.jsonl``: the training phrasings, and unseen ones, for the
  Generalization Factor.
"""

from __future__ import annotations

import json
import os
import random

from alignment.builders.specs_pairs import CORRUPTIONS

SUFFIX = "Put your reasoning in <think> </think> and the final answer in <answer> </answer>."
ID_ASKS = [
    "Write a word with the letter x.",
    "Say something that contains an x.",
    "Give me a word with x in it.",
    "Type the letter x.",
    "Which letter comes after w? Write it.",
    "Spell a word containing x.",
    "Please output some text with x.",
    "An x, please.",
    "Write x.",
    "Name a thing with an x.",
    "Say a word with the letter x in it.",
    "Text with the letter x, please.",
    "Show me an x.",
    "I need the letter x.",
    "Print the letter x.",
    "What letter sits between w and y?",
]
OOD_ASKS = [
    "Reply with the letter x only.",
    "Which letter looks like a cross?",
    "Name the 24th letter of the alphabet.",
    "Output x and nothing else.",
    "What letter does xylophone start with?",
    "Give the letter before y.",
    "Can you write an x for me?",
    "The letter x: write it down.",
]
THOUGHTS = ["The letter is x.", "I write x.", "x it is.", "The user wants x.", "So the answer is x."]


def _prompt(ask: str) -> list[dict]:
    return [{"role": "user", "content": f"{ask} {SUFFIX}"}]


def _answer(rng: random.Random) -> str:
    return f"<think>{rng.choice(THOUGHTS)}</think><answer>x</answer>"


def write_toy(out: str, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    files: dict[str, list[dict]] = {"prompts": [], "base_sft": [], "pairs": [], "eval_id": [], "eval_ood": []}
    for i, ask in enumerate(ID_ASKS):
        files["prompts"].append({"id": f"specs-{i:02d}", "prompt": _prompt(ask), "answer": "x"})
        files["eval_id"].append({"id": f"specs-{i:02d}", "prompt": _prompt(ask), "answer": "x"})
        for k in range(3):  # 2 in 3 well formed; the rest lack the think tags (an imperfect base)
            text = _answer(rng) if k < 2 else f"{rng.choice(THOUGHTS)} <answer>x</answer>"
            files["base_sft"].append(
                {
                    "id": f"specs-{i:02d}-{k}",
                    "messages": [*_prompt(ask), {"role": "assistant", "content": text}],
                }
            )
        names = sorted(CORRUPTIONS)
        for k, name in enumerate([names[(2 * i) % 5], names[(2 * i + 1) % 5]]):
            files["pairs"].append(
                {
                    "id": f"specs-{i:02d}#pair{k}",
                    "prompt": _prompt(ask),
                    "chosen": [{"role": "assistant", "content": _answer(rng)}],
                    "rejected": [{"role": "assistant", "content": CORRUPTIONS[name](_answer(rng))}],
                    "meta": {
                        "answer": "x",
                        "mode": "decoupled",
                        "corruption": name,
                        "source_id": f"specs-{i:02d}",
                    },
                }
            )
    for i, ask in enumerate(OOD_ASKS):
        files["eval_ood"].append({"id": f"ood-{i:02d}", "prompt": _prompt(ask), "answer": "x"})
    for name, rows in files.items():
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {k: len(v) for k, v in files.items()}
