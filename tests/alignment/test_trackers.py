"""train.report_to: the same numbers as metrics.jsonl reach W&B (offline) and MLflow (file store)."""

import glob
import json
import os

import pytest

from alignment.infra.metrics import read_metrics
from alignment.train import build_config, train
from mm.config import ConfigError
from mm.imports import is_installed
from tests.alignment.conftest import ROOT

QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "grpo.yaml")
RUN = ["train.export=false", "train.max_steps=2"]


def wandb_records(path: str):
    """The records of a W&B run file (the LevelDB log layout: a 7-byte file header, 32 KiB blocks,
    each record chunk with a 7-byte header: crc32c, little-endian length, type; 1 full, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        n, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


@pytest.mark.skipif(not is_installed("wandb"), reason="needs wandb (pip install 'mmpost[wandb]')")
def test_wandb_offline_run_holds_the_logged_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = str(tmp_path / "run")
    train(QUICKSTART, [*RUN, "train.report_to=[wandb]"], output_dir=out)
    rows = read_metrics(out)
    (path,) = glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-*.wandb"))
    history, config = [], {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    assert [h["_step"] for h in history] == [r["step"] for r in rows] == [1, 2]
    for h, row in zip(history, rows):
        for k in ("loss", "lr", "reward_mean", "reward/contains_answer", "m_entropy"):
            assert h[k] == pytest.approx(row[k], rel=1e-12), k
    assert config["optim"]["lr"] == 3e-3 and config["rewards"] == {"contains_answer": 1.0}


@pytest.mark.skipif(not is_installed("mlflow"), reason="needs mlflow (pip install 'mmpost[mlflow]')")
def test_mlflow_file_store_reads_back_the_logged_metrics_and_config(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for the opt-in
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "plugins-test")
    out = str(tmp_path / "run")
    train(QUICKSTART, [*RUN, "train.report_to=[mlflow]"], output_dir=out)
    rows = read_metrics(out)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plugins-test").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    for k in ("loss", "lr", "reward_mean", "reward/contains_answer"):
        history = client.get_metric_history(run.info.run_id, k)
        assert [(m.step, m.value) for m in history] == [
            (r["step"], pytest.approx(r[k], rel=1e-12)) for r in rows
        ]
    params = run.data.params
    assert params["optim.lr"] == "0.003" and params["rollout.num_generations"] == "8"


@pytest.mark.skipif(not is_installed("tensorboard"), reason="needs tensorboard")
def test_tensorboard_events_hold_the_logged_metrics_and_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = str(tmp_path / "run")
    train(QUICKSTART, RUN, output_dir=out)  # the default report_to: [tensorboard]
    rows = read_metrics(out)
    events = EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"tensors": 0}).Reload()
    for k in ("loss", "reward_mean"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{k}")]
        assert logged == [(r["step"], pytest.approx(r[k], rel=1e-6)) for r in rows]  # float32 events
    (text,) = events.Tensors("config/text_summary")
    config = json.loads(text.tensor_proto.string_val[0].decode().strip("`\n"))
    assert config["optim"]["lr"] == 3e-3
    none = str(tmp_path / "none")
    train(QUICKSTART, [*RUN, "train.report_to=[]"], output_dir=none)
    assert not os.path.exists(os.path.join(none, "tensorboard")) and len(read_metrics(none)) == 2


def test_report_to_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="train.report_to\\[0\\]: 'neptune' is not one of"):
        build_config(QUICKSTART, ["train.report_to=[neptune]"])
    assert build_config(QUICKSTART).train.report_to == ["tensorboard"]  # the default, as before
    if is_installed("trackio"):
        pytest.skip("trackio is installed: the missing-package error cannot be shown")
    with pytest.raises(ConfigError, match=r"trackio not installed: pip install 'mmpost\[trackio\]'"):
        build_config(QUICKSTART, ["train.report_to=[trackio]"])
