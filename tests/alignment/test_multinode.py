"""Two "nodes" on one machine (torchrun --nnodes 2, gloo, ZeRO-3) train like one process.

Each node is its own ``torchrun`` with one process, rendezvousing over 127.0.0.1 as two machines
would over the network (static rendezvous: --node_rank, --master_addr, --master_port). The
output folder is shared, as the documented multi-node setup requires (docs/training.md).
"""

import json
import os
import subprocess

import pytest
from alignment.metrics import read_metrics

from alignment import checkpoint
from tests.alignment.conftest import run_sft
from tests.alignment.test_resume_distributed import cli
from tests.conftest import free_port

COMMON = (
    "train.max_steps=3",
    "optim.lr=2e-3",
    "train.deepspeed=zero3",
    "train.export=false",
    "data.max_tokens=2000",
)


def node_launcher(node_rank: int, port: int) -> tuple:
    import sys

    return (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    )


@pytest.mark.slow
def test_two_nodes_zero3_match_one_process(synth, tmp_path):
    """2 nodes x 1 rank x 1 micro-batch per step == 1 process x 2 accumulated micro-batches."""
    _, single = run_sft(synth, str(tmp_path / "single"), *COMMON, "train.gradient_accumulation_steps=2")
    out, port = str(tmp_path / "two_nodes"), free_port()
    procs = []
    for node in (0, 1):
        cmd, env = cli(
            synth, out, *COMMON, "train.gradient_accumulation_steps=1", launcher=node_launcher(node, port)
        )
        log = open(tmp_path / f"node{node}.log", "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        try:
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        assert rc == 0, open(log.name).read()[-3000:]
    state = json.load(open(os.path.join(checkpoint.latest(out), checkpoint.STATE)))
    assert state["world_size"] == 2 and state["step"] == 3  # one world across both nodes
    two = read_metrics(out)
    assert len(two) == len(single) == 3
    for a, b in zip(single, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), a["step"]
    assert sum(m["visual_tokens"] for m in single) == sum(m["visual_tokens"] for m in two)
