"""The README's main command: the digits demo data built, verified and inspected."""

import sys
from pathlib import Path

from processes import run_process
from shard_readers import manifest, read_with_webdataset

REPO = Path(__file__).resolve().parents[1]


def test_demo_builds_verifies_and_inspects(tmp_path):
    result = run_process([sys.executable, "-m", "shards.demo", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "train: OK" in result.stdout and "val: OK" in result.stdout
    shards = tmp_path / "shards"
    train, val = manifest(shards, "train"), manifest(shards, "val")
    assert train["classes"] == val["classes"] == [f"digit_{d}" for d in range(10)]
    assert train["totals"]["samples"] + val["totals"]["samples"] == 1797  # every scan of sklearn's digits
    for sample in read_with_webdataset(shards, "val"):
        assert sample["cls"] == int(sample["json"]["wnid"].removeprefix("digit_"))
