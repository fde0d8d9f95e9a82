"""Run by every rank of ``accelerate launch`` in test_loader_ddp.py: two train epochs and one
evaluation through the loaders, a DDP backward per step (unequal steps would hang), and a
JSON file per rank with what it saw. ``python loader_ddp_worker.py SHARDS OUT_DIR BACKEND``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from accelerate import Accelerator  # noqa: E402

from loader_fixtures import open_loader  # noqa: E402


def main() -> None:
    shards, out, backend = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    accelerator = Accelerator()
    assert torch.distributed.get_world_size() == 2, "accelerate started the wrong number of processes"
    rank, world = accelerator.process_index, accelerator.num_processes
    common = dict(batch_size=8, rank=rank, world_size=world, device=accelerator.device, seed=0, backend=backend,
                  sample_ids=True, num_threads=1)
    # The loaders are already rank-sharded: they are NOT passed to accelerator.prepare().
    train, train_steps = open_loader(Path(shards), "train", **common)
    val, val_steps = open_loader(Path(shards), "val", **common)
    model = accelerator.prepare(torch.nn.Linear(3, 13))
    record = {"rank": rank, "train_steps": train_steps, "val_steps": val_steps, "train": [], "val": []}
    for _ in range(2):
        seen = []
        for images, labels, ids in train:
            features = images.float().mean(dim=(1, 2))
            loss = torch.nn.functional.cross_entropy(model(features), labels)
            accelerator.backward(loss)  # an all-reduce per step: a rank with fewer steps would hang
            seen += ids
        record["train"].append(seen)
    for images, labels, ids in val:
        record["val"] += [[sid, label] for sid, label in zip(ids, labels.tolist())]
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
