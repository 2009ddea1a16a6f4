"""``mmpost data validate``, ``stats`` and ``convert``: check, describe and convert a data file
of any format ``mm.formats`` reads (``fmt`` names it; "auto" tells it from the columns).

validate: every line is parsed, every image decoded and every video probed, and the
visual-token budget applied; each problem is printed as ``FILE:LINE: [code] message`` with a
fix hint, then a summary. Exit status 1 if anything is wrong, never a traceback.
stats: counts, token lengths and visual tokens as a table (progress bar on large files).
"""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field

from mm.dataset import Problem
from mm.formats import data_root, open_records
from mm.records import Record, is_video
from mm.visual import VisualConfig, VisualError, open_image, plan_item, probe_video, resolve


@dataclass
class Report:
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    shrunk: int = 0  # records over budget that the shrink policy will scale down

    @property
    def bad_lines(self) -> int:
        return len({p.line for p in self.problems})


def check_visuals(rec: Record, cfg: VisualConfig, base_dir: str) -> tuple[list[tuple[str, str, str]], bool]:
    """Decode every visual of a record and apply the budget: ([(code, message, hint)], shrunk?)."""
    found, shrunk = [], False
    for conv in rec.conversations():
        plans = []
        for m in conv:
            for item in m.visual_items():
                try:
                    if is_video(item):
                        src = resolve(item.get("video"), base_dir)
                        if isinstance(src, str):
                            probe_video(src)
                    else:
                        open_image(resolve(item.get("image", item.get("image_url")), base_dir), decode=True)
                    plans.append(plan_item(item, cfg, base_dir))
                except VisualError as e:
                    found.append((e.code, e.message, e.hint))
        total = sum(p.tokens for p in plans)
        if not found and total > cfg.max_visual_tokens:
            if cfg.budget_policy == "reject":
                found.append(
                    (
                        "over_budget",
                        f"{total} visual tokens exceed max_visual_tokens={cfg.max_visual_tokens}",
                        "raise --max-visual-tokens, lower max_pixels, or train with budget_policy=shrink",
                    )
                )
            else:
                shrunk = True
        if rec.kind == "preference":
            break  # chosen and rejected share the prompt's visuals; checking once is enough
    return found, shrunk


def validate(path: str, cfg: VisualConfig, fmt: str = "auto") -> Report:
    report = Report()
    base_dir = data_root(path)
    for line, rec in open_records(path, fmt):
        report.records += 1
        if isinstance(rec, Problem):
            report.problems.append(rec)
            continue
        found, shrunk = check_visuals(rec, cfg, base_dir)
        report.shrunk += shrunk
        report.problems += [Problem(path, line, c, m, h) for c, m, h in found]
    return report


def run_validate(path: str, cfg: VisualConfig, out=None, fmt: str = "auto") -> int:
    out = out or sys.stdout
    report = validate(path, cfg, fmt)
    for p in report.problems:
        print(p, file=out)
    codes = collections.Counter(p.code for p in report.problems)
    ok = report.records - report.bad_lines
    summary = f"{path}: {report.records} record(s), {ok} ok, {report.bad_lines} with problems"
    if codes:
        summary += " (" + ", ".join(f"{c}: {n}" for c, n in codes.most_common()) + ")"
    if report.shrunk:
        summary += f"; {report.shrunk} over the visual-token budget will be shrunk"
    print(summary, file=out)
    return 1 if report.problems else 0


def _quantiles(xs: list[int]) -> list[str]:
    if not xs:
        return ["-"] * 5
    s = sorted(xs)

    def q(f):
        return s[min(len(s) - 1, int(f * (len(s) - 1) + 0.5))]

    return [str(s[0]), str(q(0.5)), str(q(0.95)), str(s[-1]), f"{sum(s) / len(s):.1f}"]


def print_table(table: list[list[str]], out=None) -> None:
    """Rows of cells, the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))), file=out)


def run_stats(path: str, processor, cfg: VisualConfig, out=None, fmt: str = "auto") -> int:
    out = out or sys.stdout
    from tqdm import tqdm

    from mm.encode import ConversationEncoder

    enc = ConversationEncoder(processor, cfg)
    base_dir = data_root(path)
    kinds, n_images, n_videos, bad = collections.Counter(), 0, 0, 0
    total, visual, text, turns = [], [], [], []
    rows = list(open_records(path, fmt))
    for _line, rec in tqdm(rows, desc="stats", disable=len(rows) < 500, file=sys.stderr):
        if isinstance(rec, Problem):
            bad += 1
            continue
        kinds[rec.kind] += 1
        conv = rec.conversations()[0]
        items = [it for m in conv for it in m.visual_items()]
        videos = sum(1 for it in items if is_video(it))
        n_videos += videos
        n_images += len(items) - videos
        turns.append(len(conv))
        try:
            t, v = enc.count_tokens(conv, base_dir, add_generation_prompt=rec.kind == "rl")
        except VisualError:
            bad += 1
            continue
        total.append(t)
        visual.append(v)
        text.append(t - v)
    print(
        f"{path}: {sum(kinds.values())} record(s) ({', '.join(f'{k}: {n}' for k, n in kinds.items()) or 'none'}), "
        f"{n_images} image(s), {n_videos} video(s), {bad} unreadable (run `mmpost data validate`)",
        file=out,
    )
    table = [
        ["", "min", "median", "p95", "max", "mean"],
        ["messages", *_quantiles(turns)],
        ["text tokens", *_quantiles(text)],
        ["visual tokens", *_quantiles(visual)],
        ["total tokens", *_quantiles(total)],
    ]
    print_table(table, out)
    return 0


def run_convert(src: str, out_path: str, fmt: str = "auto", out=None) -> int:
    """Write ``src`` as mmpost JSONL; print each unreadable row (exit status 1 if any)."""
    from mm.formats.convert import convert

    out = out or sys.stdout
    problems = list(convert(src, out_path, fmt))
    for p in problems:
        print(p, file=out)
    with open(out_path, encoding="utf-8") as f:
        written = sum(1 for _ in f)
    print(f"{src} -> {out_path}: {written} record(s) written, {len(problems)} row(s) with problems", file=out)
    return 1 if problems else 0
