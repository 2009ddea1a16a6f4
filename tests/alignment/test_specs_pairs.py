"""SPECS pairs: the five corruptions, the pair builder's invariants, and the Generalization Factor."""

import io
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request

import pytest

from alignment.builders.specs_pairs import (
    CONSISTENCY_PROMPT,
    CORRUPTIONS,
    PairsConfig,
    corrupt,
    http_judge,
    make_pairs,
    well_formed,
)
from alignment.rewards.builtin import accuracy, format_think_answer
from evaluation.answers import answers_match, extract_answer
from evaluation.gf import format_table, generalization_factor, gf_rows
from mm.records import parse_record
from tests.alignment.conftest import ROOT

GOOD = "<think>Two plus two is four.</think>\n<answer>4</answer>"


def final_word(text: str) -> str:
    """The last word of a response once tags and an "Answer:" prefix are blanked out."""
    return re.sub(r"</?(?:think|answer)>|Answer:", " ", text).split()[-1]


@pytest.mark.parametrize(
    "name, want",
    [
        ("remove_all_tags", "Two plus two is four. 4"),
        ("remove_answer_tags", "<think>Two plus two is four.</think> 4"),
        ("remove_think_tags", "Two plus two is four. <answer>4</answer>"),
        ("answer_inside_think", "<think>Two plus two is four. 4</think>"),
        ("answer_prefix", "<think>Two plus two is four.</think>\nAnswer: 4"),
    ],
)
def test_corruptions(name, want):
    out = CORRUPTIONS[name](GOOD)
    assert out == want
    assert not well_formed(out) and format_think_answer([out]) == [0.0]
    # SPECS: the rejected side keeps the correct answer, only its format is broken. It is still
    # the final word of the text in all five; the <answer> rule still reads it where the answer
    # block survives (remove_think_tags), and "Answer: 4" carries it after the prefix
    assert answers_match(final_word(out), "4")
    assert (extract_answer(out) == "4") == (name == "remove_think_tags")
    if name == "answer_prefix":
        assert answers_match(out.split("Answer:")[1], "4")


def test_corrupt_picks_only_corruptions_that_change_the_text():
    rng = random.Random(0)
    names = {corrupt(GOOD, rng)[0] for _ in range(200)}
    assert names == set(CORRUPTIONS)
    # no think tags: removing them would change nothing, so that corruption is never drawn
    no_think = "Four. <answer>4</answer>"
    assert "remove_think_tags" not in {corrupt(no_think, rng)[0] for _ in range(100)}
    assert corrupt("just 4", rng) is None  # nothing to break


def rl(i, answer):
    return parse_record({"id": f"q{i}", "prompt": [{"role": "user", "content": f"q{i}?"}], "answer": answer})


def test_decoupled_pairs_both_correct_only_the_format_differs():
    recs = [rl(0, "4"), rl(1, "7"), rl(2, "9"), rl(3, "1")]
    zero = [
        [GOOD, "<think>hm</think><answer>5</answer>"],  # one usable chosen
        ["<think>7</think><answer>7</answer>", "7"],
        ["9", "<answer>9</answer>"],  # never well formed: no chosen
        ["<think>one</think><answer>1</answer>"] * 2,
    ]
    base = [
        ["<think>It is 4.</think><answer>4</answer>", "<think>x</think><answer>3</answer>"],
        ["<think>seven</think><answer>7</answer>"],
        ["<think>nine</think><answer>9</answer>"],
        ["<think>two</think><answer>2</answer>", "1"],  # wrong, or no answer block: no rejected
    ]
    pairs, counts = make_pairs(recs, zero, base, PairsConfig(n=2), models=("Z", "B"))
    assert [p["meta"]["source_id"] for p in pairs] == ["q0", "q1"]
    assert counts["pairs"] == 2 and counts["prompts"] == 4
    assert counts["dropped_no_chosen"] == 1 and counts["dropped_no_rejected"] == 1
    assert counts["zero_wrong_answer"] == 1 and counts["zero_bad_format"] == 3
    assert counts["base_wrong_answer"] == 2 and counts["base_no_answer"] == 1
    for p, rec in zip(pairs, recs):
        rec_check = parse_record(p)  # the preference variant of the one format
        assert rec_check.kind == "preference"
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        # both answers correct, only the format differs
        assert accuracy([chosen], answer=rec.answer) == [1.0] and well_formed(chosen)
        assert p["meta"]["rejected_answer"] == rec.answer and not well_formed(rejected)
        assert answers_match(final_word(rejected), rec.answer)  # the corruption kept the answer
        assert p["meta"]["corruption"] in CORRUPTIONS and p["meta"]["mode"] == "decoupled"
        assert (p["meta"]["zero_model"], p["meta"]["base_model"]) == ("Z", "B")
        assert p["id"] == f"{rec.id}#pair0" and p["meta"]["chosen_sample"] in (0, 1)
    assert sum(v for k, v in counts.items() if k.startswith("corruption/")) == 2


def test_coupled_pairs_have_a_wrong_rejected_answer():
    recs = [rl(0, "4")]
    zero = [[GOOD]]
    base = [["<think>It is 4.</think><answer>4</answer>", "<think>x</think><answer>3</answer>"]]
    pairs, counts = make_pairs(recs, zero, base, PairsConfig(n=2, mode="coupled"))
    assert len(pairs) == 1 and pairs[0]["meta"]["rejected_answer"] == "3"
    assert counts["base_right_answer"] == 1 and pairs[0]["meta"]["mode"] == "coupled"


def test_judge_hook_filters_chosen():
    class Strict:
        def score(self, question, response, reference=""):
            return 0.0 if "hm" in response else 1.0

    recs = [rl(0, "4")]
    zero = [["<think>hm</think><answer>4</answer>", GOOD]]
    base = [["<think>It is 4.</think><answer>4</answer>"]]
    pairs, counts = make_pairs(recs, zero, base, PairsConfig(), judge=Strict())
    assert pairs[0]["chosen"][0]["content"] == GOOD and counts["zero_judge_inconsistent"] == 1


def test_generalization_factor_by_hand():
    # (1 + 4) * 4 * 2 / (4 * 4 + 2) = 40 / 18;  swapped: 40 / 12 (OOD gains weigh more)
    assert generalization_factor(4, 2) == pytest.approx(40 / 18)
    assert generalization_factor(2, 4) == pytest.approx(40 / 12)
    assert generalization_factor(3, 3) == pytest.approx(3)  # equal gains: GF is that gain
    assert generalization_factor(4, 2, beta=1) == pytest.approx(2 * 8 / 6)  # F1-style
    assert math.isnan(generalization_factor(0, 0))
    assert generalization_factor(0, 3) == 0.0  # no ID gain: 0 / (0 + 3)
    # opposite signs or a denominator <= 0: undefined (the formula would give 5 * -5 / -1 = +25)
    assert math.isnan(generalization_factor(1, -5))
    assert math.isnan(generalization_factor(-1, 5))
    assert math.isnan(generalization_factor(-2, -2))  # both worse: 5 * 4 / -10 would be -2
    assert math.isnan(generalization_factor(0, -3))
    rows = gf_rows((50.0, 40.0), {"dpo": (54.0, 42.0), "grpo": (52.0, 44.0)})
    assert [r["model"] for r in rows] == ["base", "dpo", "grpo"]
    assert (rows[1]["g_id"], rows[1]["g_ood"]) == (4.0, 2.0) and rows[1]["gf"] == pytest.approx(40 / 18)
    assert rows[2]["gf"] == pytest.approx(5 * 2 * 4 / (4 * 2 + 4))
    table = format_table(rows)
    assert "GF (b=2)" in table and "2.22" in table and "+4.00" in table
    worse = format_table(gf_rows((50.0, 40.0), {"mixed": (51.0, 35.0)})).splitlines()
    assert worse[1].split()[-1] == "-" and worse[2].split()[-3:] == ["+1.00", "-5.00", "n/a"]


def test_eval_reports_the_generalization_factor_table(tmp_path, capsys):
    from mmpost import main

    data = os.path.join(ROOT, "data", "specs")
    args = ["eval", "tiny", "tiny", "--base", "tiny", "--data", os.path.join(data, "eval_id.jsonl")]
    args += ["--ood", os.path.join(data, "eval_ood.jsonl"), "--max-new-tokens", "2", "--limit", "2"]
    assert main(args + ["--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("Generalization Factor") :].splitlines()[1:]
    assert table[0].split() == ["model", "acc", "ID", "acc", "OOD", "G_ID", "G_OOD", "GF", "(b=2)"]
    assert [r.split()[0] for r in table[1:]] == ["base", "tiny", "tiny"]
    assert table[1].split()[-3:] == ["+0.00", "+0.00", "-"]  # the base itself
    assert table[2].split()[-3:] == ["+0.00", "+0.00", "n/a"]  # no gain: GF undefined
    assert len(os.listdir(tmp_path)) == 6  # per-sample results: 3 models x (ID, OOD)
    assert main(["eval", "tiny", "--base", "tiny", "--data", os.path.join(data, "eval_id.jsonl")]) == 2
    assert "needs both --base MODEL and --ood FILE" in capsys.readouterr().err


class StubEndpoint:
    """urlopen stand-in: records the prompts sent and answers with ``reply`` (or fails)."""

    def __init__(self, reply=None):
        self.reply, self.prompts = reply, []

    def __call__(self, req, timeout=None):
        self.prompts.append(json.loads(req.data)["messages"][0]["content"])
        if self.reply is None:
            raise urllib.error.URLError("connection refused")
        return io.BytesIO(json.dumps({"choices": [{"message": {"content": self.reply}}]}).encode())


def test_specs_judge_asks_about_consistency_and_counts_failures(monkeypatch):
    recs = [rl(0, "4")]
    zero = [[GOOD]]
    base = [["<think>It is 4.</think><answer>4</answer>"]]
    ok = StubEndpoint("9")
    monkeypatch.setattr(urllib.request, "urlopen", ok)
    pairs, counts = make_pairs(recs, zero, base, PairsConfig(), judge=http_judge("http://judge/v1", "j"))
    assert len(pairs) == 1 and len(ok.prompts) == 1
    sent = ok.prompts[0]
    assert "consistent with its final answer" in sent and "supports a correct next step" not in sent
    assert "Question: q0?" in sent and f"Response: {GOOD}" in sent and "Reference answer: 4" in sent
    # the endpoint down: no silent fallback to the rule judge; the response is counted, not kept
    monkeypatch.setattr(urllib.request, "urlopen", StubEndpoint(None))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    pairs, counts = make_pairs(recs, zero, base, PairsConfig(), judge=http_judge("http://judge/v1", "j"))
    assert pairs == [] and counts["zero_judge_failed"] == 1 and counts["dropped_no_chosen"] == 1


def test_cli_specs_pairs_passes_every_option_and_the_consistency_judge(monkeypatch, tmp_path):
    import alignment.builders.specs_pairs as sp
    from mmpost import main

    seen = {}
    monkeypatch.setattr(
        sp, "build_pairs", lambda cfg, out, judge: seen.update(cfg=cfg, judge=judge) or {"pairs": 1}
    )
    args = ["data", "specs-pairs", "--zero", "Z", "--base", "B", "--prompts", "p.jsonl", "--out", "o.jsonl"]
    args += ["--n", "3", "--pairs-per-prompt", "2", "--top-k", "5", "--judge-url", "http://j/v1"]
    assert main(args) == 0
    want = PairsConfig(zero="Z", base="B", prompts="p.jsonl", n=3, pairs_per_prompt=2, top_k=5)
    assert seen["cfg"] == want
    assert seen["judge"].prompt == CONSISTENCY_PROMPT and seen["judge"].fallback is None


def test_repeated_samples_make_one_pair_not_several():
    other = "<think>Four, since 2 + 2 = 4.</think><answer>4</answer>"
    rejected = "<think>It is 4.</think><answer>4</answer>"
    zero = [[GOOD, GOOD, other, GOOD]]
    base = [[rejected, rejected, rejected]]
    pairs, counts = make_pairs([rl(0, "4")], zero, base, PairsConfig(n=4, pairs_per_prompt=3))
    assert len(pairs) == 1  # one distinct rejected sample: one pair
    assert counts["zero_duplicate"] == 2 and counts["base_duplicate"] == 2
    base = [[rejected, "<think>Four.</think><answer>4</answer>"]]
    pairs, _ = make_pairs([rl(0, "4")], zero, base, PairsConfig(n=4, pairs_per_prompt=3))
    chosen = sorted(p["chosen"][0]["content"] for p in pairs)
    assert chosen == sorted([GOOD, other])  # two distinct chosen, two distinct rejected
    assert len({p["rejected"][0]["content"] for p in pairs}) == 2
