"""The loaders under a real ``accelerate launch`` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from loader_fixtures import make_labelled_shards
from processes import run_process
from shard_readers import read_with_webdataset
from train_helpers import LAUNCH_TWO_CPU_RANKS

WORKER = Path(__file__).with_name("loader_ddp_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_labelled_shards(tmp_path_factory.mktemp("ddp"))


def launch(shards: Path, out: Path, backend: str) -> list[dict]:
    command = [*LAUNCH_TWO_CPU_RANKS, str(WORKER), str(shards), str(out), backend]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = run_process(command, env=env, cwd=root, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_two_processes_train_disjoint_and_val_exactly_once(shards, tmp_path, backend):
    ranks = launch(shards, tmp_path, backend)
    total = len(read_with_webdataset(shards, "train"))
    assert {r["train_steps"] for r in ranks} == {(total // 2) // 8}
    assert len({r["val_steps"] for r in ranks}) == 1
    for epoch in range(2):
        seen = [sid for r in ranks for sid in r["train"][epoch]]
        assert len(seen) == len(set(seen)) == 2 * ranks[0]["train_steps"] * 8
        assert total - len(seen) < 2 * 9
    reference = {s["json"]["source"]: s["cls"] for s in read_with_webdataset(shards, "val")}
    counted = Counter(sid for r in ranks for sid, label in r["val"] if label >= 0)
    assert counted == Counter({sid: 1 for sid in reference})
    assert all(reference[sid] == label for r in ranks for sid, label in r["val"] if label >= 0)
