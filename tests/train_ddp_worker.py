"""Run by every rank of ``accelerate launch`` in test_train_ddp.py: the real command line
(``pipeline.cli.run_cli``, as pipeline/train.py) with probes wrapped around ``pipeline.run``:
the source of every training sample this rank read (per epoch), a checksum of its parameters at the end, the
loaders built per split, and the torch.distributed collectives called during each epoch's steps
(with their ``async_op``), and a checksum of each mixing and colour draw (the run's own samplers'
draws, whatever seeds the run gives them). ``python train_ddp_worker.py OUT_JSON_PREFIX section.key=value ...``."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.run as run  # noqa: E402
from pipeline.cli import exit_cleanly, run_cli  # noqa: E402
from pipeline.data.color import ColorAugment  # noqa: E402
from pipeline.data.factory import _create_loader  # noqa: E402
from pipeline.mix.sampler import MixSampler  # noqa: E402

seen: dict[int, list[str]] = {}
sessions: list = []
world_sizes: list[int] = []
loaders_built: dict[str, int] = {}
model_seeds: list[int] = []
epochs: list[dict] = []
draws: dict[str, list[str]] = {"mix": [], "color": []}
original_make_loader, original_setup, original_epoch = run.make_loader, run.setup, run.train_one_epoch
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "barrier", "reduce", "gather", "scatter", "all_to_all")


class RecordingLoader:
    """Passes (images, labels) on, noting each sample's source (the loader's test-only sample ids)."""

    def __init__(self, loader):
        self.loader = loader

    def iter_epoch(self, epoch, start_step=0):
        for images, labels, ids in self.loader.iter_epoch(epoch, start_step):
            seen.setdefault(epoch, []).extend(ids)
            yield images, labels

    def state_dict(self):
        return self.loader.state_dict()


def digest_of(*values) -> str:
    """A checksum of tensors, numbers and strings (a draw's content)."""
    digest = hashlib.sha1()
    for value in values:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous().numpy().tobytes()
        digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return digest.hexdigest()


def recording(kind: str, method, content):
    def draw(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        draws[kind].append(digest_of(*content(result)))
        return result
    return draw


def create_loader(shards, split, **kwargs):
    """The public create_loader, with the sources of the train samples in each batch."""
    return _create_loader(shards, split, sample_ids=split == "train", **kwargs)


def make_loader(config, *, split, **kwargs):
    loaders_built[split] = loaders_built.get(split, 0) + 1
    loader, steps = original_make_loader(config, split=split, **kwargs)
    return (RecordingLoader(loader) if split == "train" else loader), steps


def train_one_epoch(**kwargs):
    """The real epoch, with every torch.distributed collective it calls noted."""
    calls, originals = [], {name: getattr(torch.distributed, name) for name in COLLECTIVES}

    def noting(name, original):
        def collective(*args, **options):
            calls.append([name, bool(options.get("async_op", False))])
            return original(*args, **options)
        return collective

    for name, original in originals.items():
        setattr(torch.distributed, name, noting(name, original))
    try:
        result = original_epoch(**kwargs)
    finally:
        for name, original in originals.items():
            setattr(torch.distributed, name, original)
    epochs.append({"steps": result.steps, "collectives": calls})
    return result


def setup(config, **kwargs):
    sessions.append(original_setup(config, **kwargs))
    model_seeds.append(torch.initial_seed())  # the seed of torch's RNG the model draws from (drop path)
    # Asked of torch itself while the process group lives (end_training destroys it).
    world_sizes.append(torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
    return sessions[-1]


def main() -> None:
    prefix, argv = sys.argv[1], sys.argv[2:]
    run.make_loader, run.setup, run.train_one_epoch = make_loader, setup, train_one_epoch
    run.create_loader = create_loader
    MixSampler.sample = recording("mix", MixSampler.sample, lambda p: (p.mode, p.lam, p.boxes, p.partner))
    ColorAugment.draw = recording("color", ColorAugment.draw, lambda d: (d.weights, d.lighting))
    code = run_cli(argv, default_config=None)
    session = sessions[0]
    model = session.accelerator.unwrap_model(session.model)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {"rank": session.accelerator.process_index, "world_size": world_sizes[0],
              "params": digest.hexdigest(), "seen": seen, "code": code, "loaders_built": loaders_built,
              "epochs": epochs, "model_seed": model_seeds[0], "draws": draws}
    Path(f"{prefix}{record['rank']}.json").write_text(json.dumps(record))
    exit_cleanly(code)


if __name__ == "__main__":
    main()
