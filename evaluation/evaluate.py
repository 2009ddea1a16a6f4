"""``mmpost eval``: batched greedy generation on prompts with reference answers, and accuracy.

Prompts whose system prompt declares tools (``<tools>``) run through the vision_tools engine
(multi-turn: tool calls are executed and their images inserted); others get one turn.
Per-sample results (prompt id, completion, extracted answer, reference, correct, and for tool
runs the turns and violations) go to a JSONL file; the summary prints accuracy and how many
completions had a well-formed answer.

Grading follows the record: a record whose ``meta`` carries a class ``label`` (what
``mmpost data cls-fewshot`` writes) is graded as CLS-RL's released evaluation does
(``answers.class_answer`` / ``class_matches``: the ``<answer>`` block or the whole completion,
label as a substring); every other record by ``extract_answer`` / ``answers_match``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from evaluation.answers import answers_match, class_answer, class_matches, extract_answer
from mm.dataset import DataError, Problem
from mm.formats import open_records
from vision_tools.engine import EngineConfig, ToolEngine
from vision_tools.generation import DEFAULT, Context, Generator, Sampling, make_generator


def prompts_of(path: str, format: str = "auto") -> tuple[list[tuple[str, list, str, str]], int]:
    """(id, prompt messages, reference answer, grading rule) for RL records and answer-carrying
    SFT records (of a data file in any format ``mm.formats`` reads); the rule is "class" for records with ``meta.label``, else "answer"."""
    items, skipped = [], 0
    for line, rec in open_records(path, format):
        if isinstance(rec, Problem) or getattr(rec, "answer", None) is None:
            skipped += 1
            continue
        if rec.kind == "rl":
            msgs = rec.prompt
        elif rec.kind == "sft":
            first = next(i for i, m in enumerate(rec.messages) if m.role == "assistant")
            msgs = rec.messages[:first]
        else:
            skipped += 1
            continue
        rule = "class" if (rec.meta or {}).get("label") is not None else "answer"
        items.append((rec.id or f"line-{line}", msgs, str(rec.answer), rule))
    return items, skipped


def backend(generator: str | Generator, model, processor) -> Generator:
    """``generator`` itself, or the decoding backend it names (``vision_tools.generation``)."""
    return generator if isinstance(generator, Generator) else make_generator(generator, model, processor)


@torch.no_grad()
def generate(
    model,
    processor,
    encoder,
    prompts: list[list],
    base_dir: str,
    max_new_tokens: int,
    generator: str | Generator = DEFAULT,
) -> list[str]:
    """One greedy turn per prompt (ids up to a stop string or the end of turn, decoded without
    special tokens), through a decoding backend of ``vision_tools.generation`` as rollouts are:
    the same suppressed control tokens, stop strings and M-RoPE positions (the encoder's)."""
    gen = backend(generator, model, processor)
    contexts = [
        Context.of(encoder.encode(p, base_dir, add_generation_prompt=True), key=i)
        for i, p in enumerate(prompts)
    ]
    ids = gen.generate(contexts, [max_new_tokens] * len(contexts), Sampling())
    return processor.tokenizer.batch_decode(ids, skip_special_tokens=True)


def uses_tools(messages: list) -> bool:
    return any(m.role == "system" and "<tools>" in m.text() for m in messages)


def tool_rollouts(
    model,
    processor,
    prompts: list[list],
    base_dir: str,
    max_new_tokens: int,
    max_turns: int,
    generator: str | Generator = DEFAULT,
) -> list:
    """Greedy multi-turn runs through the tool engine: (completion text, answer, record extras)."""
    cfg = EngineConfig(
        max_turns=max_turns, max_turn_tokens=max_new_tokens, max_resamples=0, batch_size=len(prompts)
    )
    gen = backend(generator, model, processor)
    out = []
    for t in ToolEngine(model, processor, config=cfg, generator=gen).run(
        [[m.to_dict() for m in p] for p in prompts], base_dir
    ):
        extra = {
            "turns": [r.text for r in t.turns],
            "violations": t.violations,
            "finish_reason": t.finish_reason,
        }
        out.append((t.turns[-1].text if t.turns else "", t.answer, extra))
    return out


def answer_prompts(
    model,
    processor,
    encoder,
    prompts: list[list],
    base_dir: str,
    max_new_tokens: int,
    max_turns: int,
    generator: str | Generator = DEFAULT,
) -> list[tuple[str, str | None, dict]]:
    """(completion, answer, extras) per prompt, greedy: prompts whose system turn declares tools
    run the tool loop (the engine's parsed answer), the others one turn (``extract_answer``)."""
    gen = backend(generator, model, processor)
    out: list = [None] * len(prompts)
    tools = [i for i, p in enumerate(prompts) if uses_tools(p)]
    plain = [i for i in range(len(prompts)) if i not in tools]
    if tools:
        runs = tool_rollouts(
            model, processor, [prompts[i] for i in tools], base_dir, max_new_tokens, max_turns, gen
        )
        for i, r in zip(tools, runs):
            out[i] = r
    if plain:
        texts = generate(
            model, processor, encoder, [prompts[i] for i in plain], base_dir, max_new_tokens, gen
        )
        for i, text in zip(plain, texts):
            out[i] = (text, extract_answer(text), {})
    return out


def run_eval(
    model_name: str,
    data: str,
    out: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    limit: int = 0,
    max_turns: int = 8,
    generator: str = DEFAULT,
) -> int:
    evaluate(model_name, data, out, batch_size, max_new_tokens, limit, max_turns, generator)
    return 0


def evaluate(
    model_name: str,
    data: str,
    out: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    limit: int = 0,
    max_turns: int = 8,
    generator: str = DEFAULT,
) -> float:
    """Evaluate one model (a folder or a preset) on one file (see the module docstring);
    ``generator`` names the decoding backend. Returns the accuracy (0-1)."""
    from tqdm import tqdm

    from mm.encode import ConversationEncoder
    from mm.loading import load_model
    from mm.rope import RopeSpec

    path = model_name
    device = "cuda" if torch.cuda.is_available() else None
    model, processor = load_model(path, device=device)
    model.eval()
    encoder = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    gen = make_generator(generator, model, processor)
    items, skipped = prompts_of(data)
    if limit:
        items = items[:limit]
    if not items:
        raise DataError(f"{data}: no records with a prompt and an answer to evaluate")
    base_dir = os.path.dirname(os.path.abspath(data))
    if out is None:
        folder = path if os.path.isdir(path) else "."
        out = os.path.join(folder, f"eval_{os.path.splitext(os.path.basename(data))[0]}.jsonl")
    correct = formatted = 0
    with open(out, "w") as f:
        for k in tqdm(
            range(0, len(items), batch_size), desc="eval", file=sys.stderr, disable=len(items) <= batch_size
        ):
            chunk = items[k : k + batch_size]
            prompts = [msgs for _, msgs, _, _ in chunk]
            results = answer_prompts(
                model, processor, encoder, prompts, base_dir, max_new_tokens, max_turns, gen
            )
            for (rid, _, gold, rule), (text, pred, extra) in zip(chunk, results):
                formatted += pred is not None
                if rule == "class":
                    pred = class_answer(text)
                    ok = class_matches(pred, gold)
                else:
                    ok = answers_match(pred, gold)
                correct += ok
                row = {
                    "id": rid,
                    "completion": text,
                    "answer": pred,
                    "reference": gold,
                    "correct": ok,
                    **extra,
                }
                f.write(json.dumps(row) + "\n")
    n = len(items)
    print(
        f"{path} on {data}: accuracy {correct / n:.3f} ({correct}/{n}), answer block in {formatted}/{n}"
        + (f", {skipped} record(s) without prompt/answer skipped" if skipped else "")
    )
    print(f"per-sample results: {out}")
    return correct / n


def model_label(model: str) -> str:
    """A short name for a model in file names: its folder (the run's, for ``.../final``)."""
    parts = os.path.normpath(model).split(os.sep)
    return parts[-2] if parts[-1] == "final" and len(parts) > 1 else parts[-1]


def run_gf(
    models: list[str],
    base: str,
    data: str,
    ood: str | list[str],
    beta: float = 2.0,
    out_dir: str | None = None,
    ood_weights: list[float] | None = None,
    **kw,
) -> list[dict]:
    """Accuracy of ``base`` and every model on the ID set and the OOD set(s), gains over base and
    the Generalization Factor (``evaluation.gf``), printed as a table; returns the rows.
    With several OOD sets the OOD accuracy is their mean (``gf.ood_accuracy``: equal weights
    unless ``ood_weights``) and each row also lists the per-set accuracies (``acc_ood_sets``)."""
    from evaluation.gf import format_table, gf_rows, ood_accuracy

    oods = [ood] if isinstance(ood, str) else list(ood)
    if ood_weights is not None and len(ood_weights) != len(oods):
        from mm.config import ConfigError

        raise ConfigError(
            f"--ood-weights: {len(ood_weights)} weight(s) for {len(oods)} --ood file(s); give one each"
        )

    def acc(model: str, path: str, tag: str) -> float:
        out = None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            out = os.path.join(out_dir, f"{len(seen)}_{model_label(model)}_{tag}.jsonl")
        seen.append(model)
        return 100 * evaluate(model, path, out, **kw)

    def accs(model: str) -> tuple[float, list[float]]:
        a_id = acc(model, data, "id")
        tags = ["ood"] if len(oods) == 1 else [f"ood{i}" for i in range(len(oods))]
        return a_id, [acc(model, path, tag) for path, tag in zip(oods, tags)]

    seen: list[str] = []
    per_set = [(m, accs(m)) for m in [base, *models]]  # base first
    combined = [(m, (a_id, ood_accuracy(a, ood_weights))) for m, (a_id, a) in per_set]
    rows = gf_rows(combined[0][1], combined[1:], beta)
    for r, (_, (_, a)) in zip(rows, per_set):
        r["acc_ood_sets"] = a
    print(f"\nGeneralization Factor: ID {data}, OOD {', '.join(oods)}, base {base}")
    if len(oods) > 1:
        weights = ood_weights or [1.0] * len(oods)
        print(
            "OOD accuracy = weighted mean over the sets (weights "
            + ", ".join(f"{w:g}" for w in weights)
            + ")"
        )
        for r in rows:
            print(f"  {r['model']}: " + ", ".join(f"{a:.2f}" for a in r["acc_ood_sets"]))
    print(format_table(rows, beta))
    return rows
