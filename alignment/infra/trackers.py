"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow, Trackio.

``train.report_to`` names them; ``MetricsLogger`` (rank 0 only) opens each with the run's name
(the output folder's) and its whole config, and hands it every logged step's numbers. Where the
runs go follows each library's own settings: W&B's ``WANDB_PROJECT`` / ``WANDB_MODE`` (runs are
written under ``OUTPUT/wandb``), MLflow's ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``,
Trackio's project; TensorBoard writes ``OUTPUT/tensorboard``. The project defaults to "mmpost".
"""

from __future__ import annotations

import json
import os
import re
import time

from mm.imports import is_installed, require

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PROJECT = "mmpost"


def missing(report_to: list[str]) -> list[str]:
    """Trackers in ``report_to`` whose package is not installed (TensorBoard's absence is allowed:
    it is the default and is skipped then, as before)."""
    return [t for t in report_to if t != "tensorboard" and not is_installed(t)]


def flatten(config: dict, prefix: str = "") -> dict:
    """``{"optim.lr": 1e-5, ...}`` from a nested config."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TensorBoard:
    def __init__(self, output_dir: str, name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, output_dir: str, name: str, config: dict):
        wandb = require("wandb", "train.report_to: [wandb]")
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = wandb.init(project=project, name=name, dir=output_dir, config=config, reinit="create_new")

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, output_dir: str, name: str, config: dict):
        require("mlflow", "train.report_to: [mlflow]")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else mlflow's default
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        params = [Param(_mlflow_key(k)[:250], str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(_mlflow_key(k), float(v), now, step) for k, v in metrics.items()]
        )

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits, ``_ - . / `` and spaces (a reward ``file.py:fn`` has a colon)."""
    return re.sub(r"[^\w\-. /]", "_", key)


class Trackio:
    def __init__(self, output_dir: str, name: str, config: dict):
        self.trackio = require("trackio", "train.report_to: [trackio]")
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=name, config=config)

    def log(self, metrics: dict, step: int) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


def open_trackers(report_to: list[str], output_dir: str, config: dict) -> list:
    """The trackers named in ``report_to``, opened (TensorBoard skipped when not installed)."""
    kinds = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}
    name = os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    out = []
    for t in dict.fromkeys(report_to):
        if t == "tensorboard" and not is_installed("tensorboard"):
            continue  # the default: TensorBoard when installed, as before report_to existed
        out.append(kinds[t](output_dir, name, config))
    return out
