"""``mmpost eval MODEL --benchmark NAME --data PATH``: one benchmark, its own protocol, end to end.

Greedy batched generation on the benchmark's prompts (``evaluation.evaluate.answer_prompts``;
with ``tools=True`` single-image questions run through the tool loop with the ViRC tool system
prompt and question format, as a model trained with tools expects), then the benchmark's answer
extraction (the HTTP judge first where the benchmark extracts with a model and a judge is given,
its rules otherwise or when the judge fails) and scoring. Writes ``predictions.jsonl`` (one row
per sample: prompt, completion, extraction and how it was made, answer, score, categories) and
``scores.json`` (overall and per category) to the output folder and prints the scores as a
markdown table.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from evaluation.benchmarks import get_benchmark
from evaluation.benchmarks.base import Benchmark, Sample, markdown_table, summarize
from mm.dataset import DataError
from mm.records import Message
from vision_tools.generation import DEFAULT


def messages_of(bench: Benchmark, sample: Sample, tools: bool) -> list[Message]:
    """The conversation a sample is asked as: the images then the prompt, or with ``tools`` (one
    image) the tool-declaring system prompt and ViRC's question turn."""
    text = bench.prompt(sample)
    if tools and len(sample.images) == 1:
        from vision_tools.protocol import question_text, system_prompt

        image = sample.images[0]
        content = [
            {"type": "image", "image": image},
            {"type": "text", "text": question_text(text, image.size)},
        ]
        return [Message("system", system_prompt()), Message("user", content)]
    images = [{"type": "image", "image": im} for im in sample.images]
    return [Message("user", [*images, {"type": "text", "text": text}])]


def extract(bench: Benchmark, sample: Sample, completion: str, judge=None):
    """(extraction, "rules" | "judge"): the benchmark's quick rules, then the judge where the
    benchmark extracts with a model, then its rule extractor (also when the judge fails)."""
    from evaluation.judge import JudgeUnavailable

    if judge is not None and bench.judge_prompt:
        quick = bench.quick(sample, completion)
        if quick is not None:
            return quick, "rules"
        try:
            content = bench.judge_prompt.format(question=bench.prompt(sample), response=completion)
            return judge.complete(content).strip(), "judge"
        except JudgeUnavailable as e:
            warnings.warn(f"{e}; {sample.id}: using {bench.name}'s rule extractor", stacklevel=2)
    return bench.extract(sample, completion), "rules"


def score_samples(bench: Benchmark, samples: list[Sample], completions: list[str], judge=None) -> list[dict]:
    """One row per sample: extraction, score (0-1) and categories."""
    rows = []
    for s, completion in zip(samples, completions):
        pred, how = extract(bench, s, completion, judge)
        rows.append(
            {
                "id": s.id,
                "completion": completion,
                "extracted": pred,
                "extracted_by": how,
                "answer": s.answer,
                "score": bench.score(s, pred),
                "categories": s.categories,
            }
        )
    return rows


def complete(
    model, processor, encoder, prompts, base_dir: str, max_new_tokens: int, max_turns: int, generator
):
    """Completions of one batch: the tool loop for prompts that declare tools, one turn otherwise."""
    from evaluation.evaluate import answer_prompts

    runs = answer_prompts(model, processor, encoder, prompts, base_dir, max_new_tokens, max_turns, generator)
    return [text for text, _, _ in runs]


def evaluate_benchmark(
    model_name: str,
    benchmark: str,
    data: str,
    out_dir: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    limit: int = 0,
    tools: bool = False,
    max_turns: int = 8,
    judge=None,
    generator: str = DEFAULT,
) -> dict:
    """Evaluate one model (a folder or a preset) on one benchmark (see the module docstring);
    ``generator`` names the decoding backend. Returns the scores."""
    import torch
    from tqdm import tqdm

    from mm.encode import ConversationEncoder
    from mm.loading import load_model
    from mm.rope import RopeSpec
    from vision_tools.generation import make_generator

    bench = get_benchmark(benchmark)
    samples = bench.load(data)
    if limit:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"{data}: no {benchmark} samples found")
    path = model_name
    model, processor = load_model(path, device="cuda" if torch.cuda.is_available() else None)
    model.eval()
    encoder = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    gen = make_generator(generator, model, processor)
    base_dir = os.path.dirname(os.path.abspath(data))
    completions: list[str] = []
    with tqdm(total=len(samples), desc=benchmark, file=sys.stderr) as bar:
        for k in range(0, len(samples), batch_size):
            chunk = samples[k : k + batch_size]
            prompts = [messages_of(bench, s, tools) for s in chunk]
            completions += complete(
                model, processor, encoder, prompts, base_dir, max_new_tokens, max_turns, gen
            )
            bar.update(len(chunk))
    rows = score_samples(bench, samples, completions, judge)
    scores = summarize(benchmark, rows)
    scores.update(model=path, data=os.path.abspath(data), protocol=bench.source)
    if out_dir is None:
        out_dir = os.path.join(path if os.path.isdir(path) else ".", f"bench_{benchmark}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
        for s, r in zip(samples, rows):
            f.write(json.dumps({"prompt": bench.prompt(s), **r}, default=str) + "\n")
    with open(os.path.join(out_dir, "scores.json"), "w") as f:
        json.dump(scores, f, indent=2)
    print(markdown_table(scores))
    print(
        f"\nscores: {os.path.join(out_dir, 'scores.json')}\npredictions: {os.path.join(out_dir, 'predictions.jsonl')}"
    )
    return scores
