"""SPECS preference pairs (``mmpost data specs-pairs``): self-distilled, format-only differences.

    mmpost data specs-pairs --zero runs/specs/grpo_zero/final --base /models/Qwen2.5-VL-7B-Instruct \\
        --prompts data/specs/prompts.jsonl --out data/specs/pairs.jsonl --n 8

For each verifiable prompt (an RL record: prompt + answer) N responses are sampled from the zero
model (GRPO from the base model) and N from the base model (batched generation with KV cache):

* chosen: a zero-model response that the shared turn parser (``vision_tools.protocol``) reads as
  one well-formed ``<think>...</think><answer>...</answer>`` turn, whose answer is correct, and
  that an optional judge finds consistent (reasoning supports the answer);
* rejected ("decoupled", the default): a base-model response with the correct answer whose
  format is broken by one of the five corruptions below, drawn at random among those that change
  it (recorded in ``meta.corruption``). "coupled" (the ablation): a base response with a WRONG
  answer, corrupted the same way, so format and correctness both differ.

Written in the preference variant of the data format; the counts of what was kept and why the
rest was dropped are printed and saved next to the output (``OUT.counts.json``).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from evaluation.answers import answers_match, extract_answer
from evaluation.judge import JudgeUnavailable
from mm.config import ConfigError, opt
from mm.dataset import DataError, Problem, iter_jsonl, rebase_images
from vision_tools.protocol import parse_turn

# ----------------------------------------------------------------------------- corruptions


def _drop(text: str, tags: str) -> str:
    """``text`` without the tags matching ``tags``; a run of dropped tags becomes one space."""
    return re.sub(rf"(?:\s*(?:{tags})\s*)+", " ", text).strip()


def remove_all_tags(text: str) -> str:
    """(1) every ``<think>``/``<answer>`` tag removed: reasoning and answer run together."""
    return _drop(text, r"</?think>|</?answer>")


def remove_answer_tags(text: str) -> str:
    """(2) the ``<answer>`` tags removed; the think block stays."""
    return _drop(text, r"</?answer>")


def remove_think_tags(text: str) -> str:
    """(3) the ``<think>`` tags removed; the answer block stays."""
    return _drop(text, r"</?think>")


def answer_inside_think(text: str) -> str:
    """(4) the answer tags removed and ``</think>`` moved to the end: the answer ends up inside
    the reasoning. Needs an answer block (unchanged otherwise)."""
    if "<answer>" not in text:
        return text
    return _drop(text, r"</think>|</?answer>") + "</think>"


def answer_prefix(text: str) -> str:
    """(5) ``<answer>X</answer>`` written as ``Answer: X``."""
    return re.sub(r"<answer>\s*(.*?)\s*</answer>", r"Answer: \1", text, flags=re.S)


CORRUPTIONS: dict[str, Callable[[str], str]] = {
    "remove_all_tags": remove_all_tags,
    "remove_answer_tags": remove_answer_tags,
    "remove_think_tags": remove_think_tags,
    "answer_inside_think": answer_inside_think,
    "answer_prefix": answer_prefix,
}


def well_formed(text: str) -> bool:
    """One ``<think>`` block then one ``<answer>`` block, by the shared turn parser."""
    turn = parse_turn(text)
    return turn.ok and turn.kind == "answer"


def corrupt(text: str, rng: random.Random) -> tuple[str, str] | None:
    """(name, corrupted text) with a corruption drawn among those that change ``text`` and leave
    it malformed; None if none does (a response with no tags to break)."""
    options = []
    for name, fn in CORRUPTIONS.items():
        out = fn(text)
        if out != text and not well_formed(out):
            options.append((name, out))
    return rng.choice(options) if options else None


# ----------------------------------------------------------------------------- selection


@dataclass
class PairsConfig:
    zero: str = opt("", "the zero model (GRPO from base): folder or 'tiny'; in a pipeline, a stage name")
    base: str = opt("", "the base model: folder or 'tiny'; in a pipeline, a stage name")
    prompts: str = opt("", "verifiable prompts: RL records (prompt + answer)")
    n: int = opt(8, "responses sampled per prompt from each model")
    mode: Literal["decoupled", "coupled"] = opt(
        "decoupled", "decoupled: both sides correct, only the format differs; coupled: rejected also wrong"
    )
    pairs_per_prompt: int = opt(
        1, "pairs kept per prompt at most; repeated samples count once (zero_/base_duplicate)"
    )
    max_new_tokens: int = opt(1024, "new tokens per response")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(0, "top-k sampling (0: off)")
    batch_size: int = opt(16, "prompts sampled together (x n sequences)")
    seed: int = opt(0, "seed of sampling and of the random choices (responses, corruption)")
    judge_threshold: float = opt(0.5, "with a judge: chosen needs a consistency score >= this")


# SPECS's judge question: does the reasoning agree with the final answer (not: is it correct)
CONSISTENCY_PROMPT = (
    "Is the reasoning in the response below consistent with its final answer, i.e. does the "
    "reasoning actually lead to that answer? Score from 0 (inconsistent: the answer does not follow "
    "from the reasoning) to 10 (fully consistent). Reply with the number only.\n\n"
    "Question: {question}\n\nReference answer: {reference}\n\nResponse: {response}"
)


def http_judge(url: str, model: str, api_key: str = ""):
    """The consistency judge of specs-pairs: an OpenAI-compatible endpoint asked
    ``CONSISTENCY_PROMPT``; when it fails the response is counted (``zero_judge_failed``), never
    scored by a fallback rule."""
    from evaluation.judge import HTTPJudge

    return HTTPJudge(url, model, api_key, prompt=CONSISTENCY_PROMPT, fallback=False)


def choose_chosen(texts: list[str], answer, question: str = "", judge=None, threshold: float = 0.5):
    """Indices of usable chosen responses, and a Counter of why the others are not (a judge
    that raises ``JudgeUnavailable`` counts as ``zero_judge_failed``: not kept)."""
    keep, why = [], Counter()
    for i, t in enumerate(texts):
        turn = parse_turn(t)
        if not (turn.ok and turn.kind == "answer"):
            why["zero_bad_format"] += 1
            continue
        if not answers_match(turn.answer, answer):
            why["zero_wrong_answer"] += 1
            continue
        if judge is not None:
            try:
                score = judge.score(question, t, str(answer))
            except JudgeUnavailable:
                why["zero_judge_failed"] += 1
                continue
            if score < threshold:
                why["zero_judge_inconsistent"] += 1
                continue
        keep.append(i)
    return keep, why


def choose_rejected(texts: list[str], answer, mode: str, rng: random.Random):
    """[(index, corruption, corrupted text, extracted answer)] of usable base responses, and why
    the others are not."""
    keep, why = [], Counter()
    for i, t in enumerate(texts):
        pred = extract_answer(t)
        if pred is None:
            why["base_no_answer"] += 1
            continue
        ok = answers_match(pred, answer)
        if mode == "decoupled" and not ok:
            why["base_wrong_answer"] += 1
            continue
        if mode == "coupled" and ok:
            why["base_right_answer"] += 1  # coupled pairs need a wrong rejected answer
            continue
        c = corrupt(t, rng)
        if c is None:
            why["base_nothing_to_corrupt"] += 1
            continue
        keep.append((i, c[0], c[1], pred))
    return keep, why


def _distinct(items: list, texts: list[str], reason: str, counts: Counter) -> list:
    """``items`` without those whose text repeats an earlier one's (counted as ``reason``)."""
    seen, out = set(), []
    for it, t in zip(items, texts):
        if t in seen:
            counts[reason] += 1
        else:
            seen.add(t)
            out.append(it)
    return out


def make_pairs(
    records: list,
    zero_texts: list[list[str]],
    base_texts: list[list[str]],
    cfg: PairsConfig,
    judge=None,
    models: tuple[str, str] = ("", ""),
) -> tuple[list[dict], Counter]:
    """Preference records from sampled responses (``*_texts[j]``: the N responses to record j)."""
    if cfg.mode not in ("decoupled", "coupled"):
        raise ConfigError(f"mode must be 'decoupled' or 'coupled', got {cfg.mode!r}")
    rng = random.Random(cfg.seed)
    out, counts = [], Counter()
    for rec, zs, bs in zip(records, zero_texts, base_texts):
        counts["prompts"] += 1
        question = " ".join(m.text() for m in rec.prompt if m.role == "user")
        good, why_z = choose_chosen(zs, rec.answer, question, judge, cfg.judge_threshold)
        bad, why_b = choose_rejected(bs, rec.answer, cfg.mode, rng)
        counts.update(why_z)
        counts.update(why_b)
        if not good:
            counts["dropped_no_chosen"] += 1
            continue
        if not bad:
            counts["dropped_no_rejected"] += 1
            continue
        # identical samples would make identical pairs (pairs_per_prompt > 1): keep the first of each
        good = _distinct(good, [zs[i] for i in good], "zero_duplicate", counts)
        bad = _distinct(bad, [bs[b[0]] for b in bad], "base_duplicate", counts)
        rng.shuffle(good)
        rng.shuffle(bad)
        for k in range(min(cfg.pairs_per_prompt, len(good), len(bad))):
            ci, (ri, name, text, pred) = good[k], bad[k]
            counts[f"corruption/{name}"] += 1
            out.append(
                {
                    "id": f"{rec.id or 'prompt'}#pair{k}",
                    "prompt": [m.to_dict() for m in rec.prompt],
                    "chosen": [{"role": "assistant", "content": zs[ci]}],
                    "rejected": [{"role": "assistant", "content": text}],
                    "meta": {
                        "source_id": rec.id,
                        "answer": rec.answer,
                        "mode": cfg.mode,
                        "corruption": name,
                        "rejected_answer": pred,
                        "zero_model": models[0],
                        "base_model": models[1],
                        "chosen_sample": ci,
                        "rejected_sample": ri,
                    },
                }
            )
    counts["pairs"] = len(out)
    return out, counts


# ----------------------------------------------------------------------------- sampling


def read_prompts(path: str) -> list:
    recs = []
    for line, rec in iter_jsonl(path):
        if isinstance(rec, Problem):
            raise DataError(rec)
        if rec.kind != "rl":
            raise DataError(
                f"{path}:{line}: specs-pairs needs verifiable prompts (RL records: prompt + answer), "
                f"got a {rec.kind} record"
            )
        recs.append(rec)
    if not recs:
        raise DataError(f"{path}: no prompts")
    return recs


def sample_responses(
    model_name: str, records: list, base_dir: str, cfg: PairsConfig, desc: str
) -> list[list[str]]:
    """N sampled single-turn responses per record (batched, KV cache), with a progress bar."""
    import torch
    from tqdm import tqdm

    from mm.loading import load_model
    from vision_tools.engine import EngineConfig, ToolEngine

    device = "cuda" if torch.cuda.is_available() else None
    model, processor = load_model(model_name, device=device)
    model.eval()
    engine = ToolEngine(
        model,
        processor,
        config=EngineConfig(
            max_turns=1,
            max_turn_tokens=cfg.max_new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_resamples=0,
            batch_size=cfg.batch_size * cfg.n,
        ),
    )
    torch.manual_seed(cfg.seed)
    out = []
    for k in tqdm(range(0, len(records), cfg.batch_size), desc=desc, file=sys.stderr):
        chunk = records[k : k + cfg.batch_size]
        prompts = [[m.to_dict() for m in r.prompt] for r in chunk for _ in range(cfg.n)]
        trajs = engine.run(prompts, base_dir)
        texts = [t.turns[-1].text if t.turns else "" for t in trajs]
        out += [texts[j * cfg.n : (j + 1) * cfg.n] for j in range(len(chunk))]
    del model
    return out


def build_pairs(cfg: PairsConfig, out: str, judge=None) -> Counter:
    """Sample, select and write the pairs; returns the counts (also in ``OUT.counts.json``)."""
    zero, base, prompts = cfg.zero, cfg.base, cfg.prompts
    if not (zero and base and prompts):
        raise ConfigError("specs-pairs needs the zero model, the base model and the prompts file")
    records = read_prompts(prompts)
    base_dir = os.path.dirname(os.path.abspath(prompts))
    zero_texts = sample_responses(zero, records, base_dir, cfg, "sampling zero model")
    base_texts = sample_responses(base, records, base_dir, cfg, "sampling base model")
    pairs, counts = make_pairs(records, zero_texts, base_texts, cfg, judge, (zero, base))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        for p in pairs:
            p["prompt"] = rebase_images(p["prompt"], prompts, out)
            f.write(json.dumps(p) + "\n")
    os.replace(tmp, out)
    with open(out + ".counts.json", "w") as f:
        json.dump(dict(counts), f, indent=1)
    print(summary(counts, out))
    return counts


def summary(counts: Counter, out: str) -> str:
    kept = counts["pairs"]
    dropped = {k: v for k, v in counts.items() if k.startswith("dropped_")}
    reasons = {k: v for k, v in counts.items() if k.startswith(("zero_", "base_"))}
    corr = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith("corruption/")}
    lines = [
        f"{out}: {kept} pair(s) from {counts['prompts']} prompt(s)",
        "  prompts dropped: " + (", ".join(f"{k[8:]}: {v}" for k, v in dropped.items()) or "none"),
        "  responses not usable: " + (", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"),
        "  corruptions: " + (", ".join(f"{k}: {v}" for k, v in sorted(corr.items())) or "none"),
    ]
    return "\n".join(lines)
