"""The trainers read every format through mm.formats: the same data as mmpost JSONL, as ShareGPT /
EasyR1 / TRL rows in JSON or parquet (images embedded as bytes), gives the same losses step for step."""

import os

import pytest

from alignment.infra.metrics import read_metrics
from alignment.train import train
from tests.alignment.conftest import QUICKSTART, ROOT
from tests.alignment.test_dpo import DPO_CONFIG, write_pairs
from tests.format_rows import (  # noqa: F401 (datasets_cache: a fixture)
    datasets_cache,
    easyr1_rows,
    sharegpt_rows,
    trl_pair_rows,
    write_disk,
    write_json,
    write_parquet,
)

pytest.importorskip("datasets")


def losses(config: str, data: str, out: str, *overrides: str, keys=("loss",)) -> list[tuple]:
    train(
        config, [f"data.train={data}", "train.export=false", "train.save_every=0", *overrides], output_dir=out
    )
    return [tuple(r[k] for k in keys) for r in read_metrics(out)]


@pytest.mark.slow
def test_sft_quickstart_jsonl_sharegpt_and_parquet_agree(tmp_path):
    """Three packed SFT steps on the bundled quickstart set, four ways; the shipped parquet too."""
    jsonl = os.path.join(ROOT, "data", "synth", "train.jsonl")
    files = {
        "jsonl": jsonl,
        "sharegpt": write_json(sharegpt_rows(jsonl), str(tmp_path / "train.json")),
        "parquet": write_parquet(sharegpt_rows(jsonl, embed=True), str(tmp_path / "train.parquet")),
        "shipped": os.path.join(ROOT, "data", "synth", "train.parquet"),
    }
    over = ("train.max_steps=3", "data.eval=null", "train.eval_every=0", "train.save_best=null")
    runs = {k: losses(QUICKSTART, f, str(tmp_path / k), *over) for k, f in files.items()}
    assert len(runs["jsonl"]) == 3 and runs["jsonl"][0] != runs["jsonl"][-1]
    for k, run in runs.items():
        assert run == runs["jsonl"], k


@pytest.mark.slow
def test_grpo_on_easyr1_columns_matches_jsonl(tmp_path):
    """Two GRPO steps on image prompts (the CLS-RL images, letter-spotting reward): the JSONL and the
    same prompts as EasyR1 columns in parquet sample the same completions and take the same steps."""
    from tests.alignment.test_grpo import image_letter_task

    jsonl = image_letter_task(tmp_path)
    parquet = write_parquet(easyr1_rows(jsonl, embed=True), str(tmp_path / "rl.parquet"))
    cfg = os.path.join(ROOT, "configs", "cls_rl", "grpo.yaml")
    over = (
        "rewards={contains_answer: 1.0}",
        "data.prompts_per_step=2",
        "train.max_steps=2",
        "optim.lr=3e-3",
        "rollout.max_completion_length=12",
    )
    keys = ("loss", "reward_mean", "m_kl")
    a = losses(cfg, jsonl, str(tmp_path / "jsonl"), *over, keys=keys)
    b = losses(cfg, parquet, str(tmp_path / "parquet"), *over, keys=keys)
    assert len(a) == 2 and any(r[0] != 0 for r in a)
    assert a == b


@pytest.mark.slow
def test_dpo_on_trl_columns_matches_jsonl(tmp_path):
    """Two DPO steps on image pairs: JSONL, TRL columns in a save_to_disk folder, and in JSON."""
    jsonl = write_pairs(str(tmp_path), n=8)
    rows = trl_pair_rows(jsonl, embed=True)
    files = {
        "jsonl": jsonl,
        "disk": write_disk(rows, str(tmp_path / "pairs_disk")),
        "json": write_json(trl_pair_rows(jsonl), str(tmp_path / "pairs.json")),
    }
    over = ("train.max_steps=2", "optim.lr=1e-3")
    keys = ("loss", "m_chosen_reward", "m_rejected_reward")
    runs = {k: losses(DPO_CONFIG, f, str(tmp_path / k), *over, keys=keys) for k, f in files.items()}
    assert len(runs["jsonl"]) == 2 and runs["jsonl"][1][1] != 0
    for k, run in runs.items():
        assert run == runs["jsonl"], k


@pytest.mark.slow
def test_dpo_on_llama_factory_ranking_and_v1_files_matches_jsonl(tmp_path):
    """Two DPO steps on the same pairs (image and text prompts, a system turn, earlier exchanges):
    mmpost JSONL, LLaMA-Factory ranking rows declared in dataset_info.json (ShareGPT, as its
    dpo_en_demo.json; alpaca, as ultrafeedback) and v1 chosen_messages / rejected_messages."""
    from tests.mm.test_llama_factory import llama_factory_pairs

    files = llama_factory_pairs(str(tmp_path))
    del files["undeclared"]  # read as "sharegpt" (test_llama_factory): the same records
    over = ("train.max_steps=2", "optim.lr=1e-3")
    keys = ("loss", "m_chosen_reward", "m_rejected_reward")
    runs = {k: losses(DPO_CONFIG, f, str(tmp_path / k), *over, keys=keys) for k, f in files.items()}
    assert len(runs["jsonl"]) == 2 and runs["jsonl"][1][1] != 0
    for k, run in runs.items():
        assert run == runs["jsonl"], k


@pytest.mark.slow
def test_sft_on_llama_factory_v1_matches_jsonl(tmp_path):
    """Three packed SFT steps: quickstart trajectories as mmpost JSONL (the first answer of every
    other record untrained) and as LLaMA-Factory v1 messages (its loss_weight 0.0 / 1.0)."""
    from tests.format_rows import lf_v1_rows, read_jsonl, write_jsonl

    os.symlink(os.path.join(ROOT, "data", "synth", "images"), tmp_path / "images")
    rows = read_jsonl(os.path.join(ROOT, "data", "synth", "train.jsonl"))[:12]
    for r in rows[::2]:
        next(m for m in r["messages"] if m["role"] == "assistant")["train"] = False
    jsonl = write_jsonl(rows, str(tmp_path / "sft.jsonl"))
    v1 = write_jsonl(lf_v1_rows(jsonl), str(tmp_path / "v1_sft.jsonl"))
    over = ("train.max_steps=3", "data.eval=null", "data.micro_batch_size=2")
    a = losses(QUICKSTART, jsonl, str(tmp_path / "jsonl"), *over)
    b = losses(QUICKSTART, v1, str(tmp_path / "v1"), *over)
    every = losses(
        QUICKSTART,
        write_jsonl(
            read_jsonl(os.path.join(ROOT, "data", "synth", "train.jsonl"))[:12], str(tmp_path / "all.jsonl")
        ),
        str(tmp_path / "all"),
        *over,
    )
    assert len(a) == 3 and a == b
    assert a != every  # the untrained turns matter: loss_weight was not ignored
