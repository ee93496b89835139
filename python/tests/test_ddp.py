"""DDP with no extra arguments: two gloo processes on the CPU, each passing its own
shard's losses and its own seed, take the same decisions and apply the same noise, so
the replicas stay bit-identical (weight noise included, which DDP never re-broadcasts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def test_ddp_replicas_stay_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    store = tmp_path / "store"
    ranks = [
        subprocess.Popen(
            [sys.executable, str(HERE / "ddp_worker.py"), str(r), "2", str(store), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]
    for r, p in enumerate(ranks):
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"rank {r} failed:\n{output}"
    decisions = [json.loads((tmp_path / f"decisions-{r}.json").read_text()) for r in range(2)]
    assert decisions[0] == decisions[1]
    assert any(d["weight_sigma"] > 0 for d in decisions[0]), "weight noise should fire"
    params = [torch.load(tmp_path / f"params-{r}.pt") for r in range(2)]
    for a, b in zip(*params):
        assert torch.equal(a, b)
