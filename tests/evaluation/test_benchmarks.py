"""Benchmark protocols: each reads a fixture in its released schema and scores hand-worked replies
by its own rules (MathVista's precision and choice mapping, MMMU's option parsing, ChartQA's 5%,
ScienceQA's letters, MathVerse / MATH-V choice vs free-form, CLS-RL's substring match)."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from evaluation.benchmarks import BENCHMARKS, get_benchmark
from evaluation.benchmarks.base import edit_distance, markdown_table, seeded_choice, summarize
from evaluation.benchmarks.chartqa import relaxed_correct
from evaluation.benchmarks.fixtures import write_fixture
from evaluation.benchmarks.mmmu import parse_multi_choice, parse_open
from evaluation.benchmarks.run import score_samples
from evaluation.judge import HTTPJudge
from tests.conftest import reply_chat


def load(name, tmp_path):
    bench = get_benchmark(name)
    return bench, {s.id: s for s in bench.load(write_fixture(name, str(tmp_path)))}


def scores(bench, sample, replies):
    return [bench.score(sample, bench.extract(sample, r)) for r in replies]


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_fixture_loads_with_images_prompts_and_categories(name, tmp_path):
    bench, samples = load(name, tmp_path)
    assert samples and bench.source
    for s in samples.values():
        assert s.images and all(im.size == (56, 56) for im in s.images)
        assert bench.prompt(s).strip() and s.categories


def test_mathvista_official_normalisation(tmp_path):
    bench, s = load("mathvista", tmp_path)
    integer, choice, number = s["1"], s["2"], s["3"]  # answers "3", "5 cm" (B), "1.45" (cm, precision 2)
    # integer: a bare integer is taken as it is; else the last number, int(float(x))
    assert scores(bench, integer, ["3", "There are 3.0 red objects.", "<answer>4</answer>", "three"]) == [
        1,
        1,
        0,
        0,
    ]
    # float: the unit is stripped and the value rounded to `precision` decimals before the string compare
    replies = ["The width is 1.4499 cm.", 'The answer is "1.453".', "1.44 cm", "<answer>1,45</answer>"]
    assert scores(bench, number, replies) == [1, 1, 0, 0]
    assert bench.normalize(number, "1.4") == "1.4"  # str(round(1.4, 2)): no padding to "1.40"
    # multiple choice: "(B)" / "B" -> the choice's text; other text -> the closest choice by edit distance
    assert scores(
        bench, choice, ["(B) 5 cm", "B", "5cm", "<answer>5 cm</answer>", "7 cm", "The answer is (A)."]
    ) == [
        1,
        1,
        1,
        1,
        0,
        0,
    ]
    assert bench.normalize(choice, "x cm") == "3 cm"  # a tie (distance 1 to all) -> the first choice
    assert edit_distance("kitten", "sitting") == 3


def test_mathvista_prompt_without_query_field_follows_build_query(tmp_path):
    bench, s = load("mathvista", tmp_path)
    sample = s["3"]
    with_query = bench.prompt(sample)
    sample.fields.pop("query")
    assert bench.prompt(sample) == with_query  # the fixture's query is the official build for this row


def test_mmmu_option_parsing():
    opts = ["Cash", "Revenue", "Equity"]
    assert parse_multi_choice("The answer is (B).", opts, "x") == "B"
    assert parse_multi_choice("B", opts, "x") == "B"
    assert parse_multi_choice("(A) is tempting, but the answer is (C)", opts, "x") == "C"  # the last one
    assert (
        parse_multi_choice("I think the account debited here is Revenue", opts, "x") == "B"
    )  # > 5 words: text
    for key in ("a", "b", "c", "d"):  # <= 5 words: the option text is not looked for; a seeded random letter
        assert parse_multi_choice("Revenue", opts, key) == seeded_choice(["A", "B", "C"], key)
    picks = {parse_multi_choice("no idea", opts, "validation_Accounting_1") for _ in range(3)}
    assert len(picks) == 1 and picks <= {"A", "B", "C"}  # random, but seeded by the id
    # open: tails after the key words plus their numbers, numbers rounded to 2 decimals
    cands = parse_open("Revenue minus costs. So the net income is 1,200 dollars.")
    assert 1200.0 in cands and "1,200 dollars" in cands and 200.0 in cands


def test_mmmu_scores(tmp_path):
    bench, s = load("mmmu", tmp_path)
    mc, open_q = s["validation_Accounting_1"], s["validation_Accounting_2"]
    assert scores(bench, mc, ["The answer is (B).", "(A)", "<answer>B</answer>"]) == [1, 0, 1]
    assert scores(
        bench, open_q, ["So the net income is 1,200 dollars.", "the answer is 1200.004", "It is 120."]
    ) == [
        1,
        1,
        0,
    ]
    assert (mc.categories, s["validation_Math_1"].categories["discipline"]) == (
        {"subject": "Accounting", "discipline": "Business"},
        "Science",
    )


def test_chartqa_relaxed_accuracy_boundary():
    assert relaxed_correct("40", "42") and relaxed_correct("40", "38")  # exactly 5%: correct
    assert not relaxed_correct("40", "42.1") and not relaxed_correct("40", "37.9")
    assert relaxed_correct("12%", "0.12") and relaxed_correct("12%", "12.5%")  # % reads as /100
    assert relaxed_correct("Peru", "peru") and not relaxed_correct("Peru", "Peru.")
    assert not relaxed_correct("0", "0.0")  # a label of 0 is compared as text (the metric's rule)


def test_chartqa_splits(tmp_path):
    bench, s = load("chartqa", tmp_path)
    rows = score_samples(bench, list(s.values()), ["<answer>12</answer>", "41.9", "Chile"])
    assert [r["score"] for r in rows] == [1.0, 1.0, 0.0]  # 12 vs 12.5 is 4% off
    cats = summarize("chartqa", rows)["categories"]["split"]
    assert cats == {
        "augmented": {"score": 100.0, "correct": 1.0, "total": 1},
        "human": {"score": 50.0, "correct": 1.0, "total": 2},
    }


def test_scienceqa_img_subset_and_letters(tmp_path):
    bench, s = load("scienceqa", tmp_path)
    assert sorted(s) == ["5", "9"]  # test split only, with an image (12 has none; 20 is train)
    state, lion = s["5"], s["9"]  # answers: index 1 (Utah), index 0 (lion)
    assert scores(bench, state, ["The answer is B.", "B", "(B) Utah", "utah", "The answer is A."]) == [
        1,
        1,
        1,
        1,
        0,
    ]
    assert bench.prompt(lion).startswith("Context: Lions eat other animals.\n")
    assert lion.categories == {"subject": "NAT", "grade": "G7-12", "context": "image+text"}
    first = bench.extract(state, "no letter here")
    assert first == bench.extract(state, "no letter here") and first in (0, 1, 2)


def test_mathverse_choice_and_free_form(tmp_path):
    bench, s = load("mathverse", tmp_path)
    assert scores(bench, s["1"], ["Therefore, the answer is A.", "(A) 40°", "<answer>B</answer>"]) == [
        1,
        1,
        0,
    ]
    assert scores(bench, s["3"], ["<answer>14</answer>", "The answer is 14.0", "The answer is 15."]) == [
        1,
        1,
        0,
    ]
    assert s["2"].categories == {"problem_version": "Vision Only", "subject": "Plane Geometry"}
    assert bench.prompt(s["3"]).startswith("Please first conduct reasoning")


def test_mathvision_boxed_and_options(tmp_path):
    bench, s = load("mathvision", tmp_path)
    digits, colour, room = s["4"], s["39"], s["91"]  # 6; A = "red"; C
    assert scores(
        bench,
        digits,
        ["so \\boxed{6}", "\\boxed{\\frac{12}{2}}", "x = 6.001", "The answer is 6.", "\\boxed{7}"],
    ) == [
        1,
        1,
        1,
        1,
        0,
    ]
    assert scores(bench, colour, ["\\boxed{A}", "\\boxed{Red}", "It must be (B)."]) == [1, 1, 0]
    assert scores(bench, room, ["The room is 12 m long, so the answer is (C).", "\\boxed{C}"]) == [1, 1]
    assert colour.categories == {"subject": "logic", "level": "level 3"}


def test_cls_rl_substring_rule(tmp_path):
    bench, s = load("cls_rl", tmp_path)
    tulip, rose = s["flowers102_test-0"], s["flowers102_test-1"]
    assert scores(
        bench, tulip, ["<think>petals</think><answer>It is a Tulip.</answer>", "this is a tulip"]
    ) == [1, 1]
    assert scores(bench, tulip, ["<answer>rose</answer> tulip"]) == [0]  # the answer block wins
    assert scores(bench, rose, ["<answer>primrose</answer>"]) == [1]  # substring: lenient, as released


def test_summary_counts_a_sample_once_per_skill():
    rows = [
        {"score": 1.0, "categories": {"task": "a", "skills": ["x", "y"]}},
        {"score": 0.0, "categories": {"task": "a", "skills": ["y"]}},
        {"score": 1.0, "categories": {"task": "b", "skills": []}},
    ]
    out = summarize("t", rows)
    assert out["overall"] == {"score": 66.67, "correct": 2.0, "total": 3}
    assert out["categories"]["skills"]["y"] == {"score": 50.0, "correct": 1.0, "total": 2}
    assert out["categories"]["task"]["b"]["score"] == 100.0
    table = markdown_table(out).splitlines()
    assert table[2] == "| overall | | 66.67 | 2/3 |" and "| skills | x | 100.00 | 1/1 |" in table


class Extractor(BaseHTTPRequestHandler):
    prompts: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Extractor.prompts.append(body["messages"][0]["content"])
        reply_chat(self, " 5 cm\n")

    def log_message(self, *a):
        pass


def test_judge_extracts_where_the_benchmark_uses_a_model_with_rule_fallback(tmp_path):
    bench, s = load("mathvista", tmp_path)
    samples = [s["2"], s["1"]]
    server = HTTPServer(("127.0.0.1", 0), Extractor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = HTTPJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge", timeout=5, retries=1)
        rows = score_samples(bench, samples, ["I would go with the second one", "3"], judge)
    finally:
        server.shutdown()
    assert [(r["extracted"], r["extracted_by"], r["score"]) for r in rows] == [
        ("5 cm", "judge", 1.0),
        ("3", "rules", 1.0),
    ]
    assert (
        len(Extractor.prompts) == 1 and "(B) 5 cm" in Extractor.prompts[0]
    )  # "3" was settled by the quick rule
    dead = HTTPJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge", timeout=0.5, retries=1)
    with pytest.warns(UserWarning, match="rule extractor"):
        rows = score_samples(bench, samples[:1], ["The answer is (B)."], dead)
    assert (rows[0]["extracted_by"], rows[0]["score"]) == ("rules", 1.0)


def test_hugging_face_parquet_layouts_load_like_the_github_files(tmp_path):
    """MathVista's data/testmini-*.parquet (image bytes in decoded_image) and ScienceQA's
    test-*.parquet (image bytes inline, only the IMG questions kept) give the same samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def image_struct(path):
        return {"bytes": open(path, "rb").read(), "path": os.path.basename(path)}

    bench, github = load("mathvista", tmp_path / "gh")
    rows = json.load(open(tmp_path / "gh" / "testmini.json")).values()
    rows = [{**r, "decoded_image": image_struct(tmp_path / "gh" / r["image"])} for r in rows]
    (tmp_path / "hf" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "data" / "testmini-00000-of-00001.parquet")
    hf = {s.id: s for s in bench.load(str(tmp_path / "hf"))}
    assert hf.keys() == github.keys()
    for k, s in hf.items():
        assert (s.answer, s.categories, bench.prompt(s)) == (
            github[k].answer,
            github[k].categories,
            bench.prompt(github[k]),
        )
        assert s.images[0].getpixel((0, 0)) == github[k].images[0].getpixel((0, 0))

    bench, github = load("scienceqa", tmp_path / "sqa")
    problems = json.load(open(tmp_path / "sqa" / "problems.json"))
    test = [(pid, p) for pid, p in problems.items() if p["split"] == "test"]
    rows = [
        {
            **p,
            "image": image_struct(tmp_path / "sqa" / "images" / "test" / pid / p["image"])
            if p["image"]
            else None,
        }
        for pid, p in test
    ]
    (tmp_path / "sqa_hf" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sqa_hf" / "data" / "test-00000-of-00001.parquet")
    hf = bench.load(str(tmp_path / "sqa_hf"))
    assert [(s.answer, s.categories) for s in hf] == [
        (github[pid].answer, github[pid].categories) for pid in ("5", "9")
    ]
