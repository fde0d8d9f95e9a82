"""model.compile=true end to end: loader -> apply_mix -> the compiled timm model (inductor) -> loss
-> Accelerate (DDP with 2 ranks), with evaluation, checkpoints, exact resume and the export; and
optim.fused (torch's fused SGD kernel). On CPU here (the demo's resnet10t at 32 px), and on CUDA
where one exists.

Each run goes through pipeline.cli as a user's does, in a child process (tests/processes.py) with
WORKER's probes around pipeline.run: dynamo's count of compiled graphs after every train epoch and
evaluation (so a recompile per batch, or per epoch, shows), its graph breaks, the optimizer's
``fused`` flags, a checksum of the weights and, with one process, the compiled model's logits for
one val batch. The first compiled run on a machine compiles for about a minute on this 2-core CPU;
later ones load the kernels from inductor's cache (/tmp/torchinductor_$USER)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from processes import run_process
from safetensors.torch import load_file
from train_helpers import LAUNCH_TWO_CPU_RANKS, REPO, child_env, small_run_args, without_timings

from pipeline.logs import read_metrics
from pipeline.optim import create_optimizer, fused_sgd_available, keep_kernel_choice

pytestmark = pytest.mark.slow

DEMO = REPO / "configs" / "demo.yaml"
# val batches of 40 (359 samples: 9 batches, the last padded): evaluation sees another batch size
# than training and must still compile once. Drop path draws in the compiled graph: the resume
# must restore the RNG that inductor's random ops take their seeds from.
EXTRA = ("model.compile=true", "schedule.epochs=2", "run.max_train_steps=4", "loader.batch_size=32",
         "loader.val_batch_size=40", "run.deterministic=true", "model.drop_path_rate=0.05")

WORKER = r'''
import hashlib, json, os, sys
sys.path.insert(0, os.getcwd())  # the repository: the test runs this from there
import torch
from accelerate.utils import is_compiled_module
from torch._dynamo.utils import counters
import pipeline.run as run
from pipeline.cli import exit_cleanly, run_cli
from pipeline.evaluate import normalize_batch

prefix, argv = sys.argv[1], sys.argv[2:]
configs, sessions, phases = [], [], []
setup, train_one_epoch, evaluate = run.setup, run.train_one_epoch, run.evaluate

def noted_setup(config, **kwargs):
    configs.append(config)
    sessions.append(setup(config, **kwargs))
    return sessions[-1]

def noted(name, function):
    def call(*args, **kwargs):
        result = function(*args, **kwargs)
        phases.append([name, counters["stats"]["unique_graphs"]])  # graphs compiled so far
        return result
    return call

run.setup, run.train_one_epoch, run.evaluate = noted_setup, noted("train", train_one_epoch), noted("eval", evaluate)
code = run_cli(argv, default_config=None)
config, session = configs[0], sessions[0]
accelerator = session.accelerator
bare = accelerator.unwrap_model(session.model, keep_torch_compile=False)
digest = hashlib.sha256()
for name, tensor in sorted(bare.state_dict().items()):
    digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
record = {"code": code, "rank": accelerator.process_index, "world_size": accelerator.num_processes,
          "device": accelerator.device.type, "phases": phases, "graph_breaks": sum(counters["graph_break"].values()),
          "graph_break_reasons": [reason.splitlines()[0] for reason in counters["graph_break"]],
          "compiled": is_compiled_module(session.model), "fused": [g["fused"] for g in session.optimizer.param_groups],
          "params": digest.hexdigest()}
if accelerator.num_processes == 1 and code == 0:  # the compiled model's logits for the first val batch
    images = next(iter(session.val_loader))[0]
    inputs = normalize_batch(images, mean=config.data.mean, std=config.data.std, dtype=session.mix.out_dtype,
                             channels_last=config.model.channels_last)
    session.model.eval()
    with torch.no_grad(), accelerator.autocast():
        logits = session.model(inputs)
    record["graphs_after_logits"] = counters["stats"]["unique_graphs"]
    torch.save({"inputs": inputs.float().cpu(), "logits": logits.float().cpu()}, prefix + "logits.pt")
with open(f"{prefix}{record['rank']}.json", "w") as file:
    json.dump(record, file)
exit_cleanly(code)
'''


def test_fused_sgd_follows_the_update_rule_written_out():
    """Nesterov SGD with weight decay as the paper's code and torch's documentation write it,
    in float64 by hand, against create_optimizer(fused=True)'s float32 kernel over 3 steps."""
    assert fused_sgd_available("cpu") and not fused_sgd_available("meta")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                 decay_norm_and_bias=False, fused=True)
    assert [group["fused"] for group in optimizer.param_groups] == [True, True]
    assert not create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                decay_norm_and_bias=False).defaults["fused"]
    decay = {id(model[0].weight)}  # decay_norm_and_bias=False: biases and BN parameters are not decayed
    params = list(model.parameters())
    expected = [p.detach().double().clone() for p in params]
    buffers = [None] * len(params)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g.double() + (1e-2 * expected[i] if id(p) in decay else 0)
            buffers[i] = d.clone() if buffers[i] is None else 0.9 * buffers[i] + d
            expected[i] = expected[i] - 0.1 * (d + 0.9 * buffers[i])
    for p, reference in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), reference, rtol=1e-6, atol=1e-6)


def test_a_resume_keeps_the_runs_own_kernel_choice():
    """torch's load_state_dict takes ``fused`` from the checkpoint's groups with the rest; the
    run's optim.fused (and its device's support) must still decide, both ways."""
    model = torch.nn.Linear(3, 2)
    for saved_fused, run_fused in ((False, True), (True, False)):
        saved = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0,
                                 decay_norm_and_bias=True, fused=saved_fused)
        optimizer = create_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0,
                                     decay_norm_and_bias=True, fused=run_fused)
        optimizer.load_state_dict(saved.state_dict())
        assert bool(optimizer.param_groups[0]["fused"]) is saved_fused  # what torch does
        keep_kernel_choice(optimizer)
        assert bool(optimizer.param_groups[0]["fused"]) is run_fused


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "compiled_run.py"
    path.write_text(WORKER)
    return path


def run_worker(worker, prefix, args, *, launch=(sys.executable,), env=None):
    """WORKER with ``args`` (pipeline/train.py's); the exit status, output and each rank's record."""
    done = run_process([*launch, str(worker), str(prefix), *args], cwd=REPO, env=env or child_env(),
                       capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    records = sorted((json.loads(path.read_text()) for path in prefix.parent.glob(f"{prefix.name}[0-9].json")),
                     key=lambda record: record["rank"])
    return done, records


# After each train epoch and evaluation, the graphs compiled so far: the train-mode graph in the
# first epoch, the eval-mode one in the first evaluation (another batch size), then none at all.
ONE_GRAPH_PER_MODE = [["train", 1], ["eval", 2], ["train", 2], ["eval", 2]]


@pytest.fixture(scope="module")
def compiled(demo_shards, worker, tmp_path_factory):
    """One compiled 2-epoch run: its folder, its record and the logits file."""
    folder = tmp_path_factory.mktemp("compiled")
    done, records = run_worker(worker, folder / "rank", small_run_args(demo_shards, folder / "run", *EXTRA))
    return folder / "run", records[0], folder / "ranklogits.pt"


def test_compiled_run_trains_evaluates_and_compiles_once_per_mode(compiled):
    run_dir, record, _ = compiled
    assert record["code"] == 0 and record["compiled"] and record["device"] == "cpu"
    assert record["phases"] == ONE_GRAPH_PER_MODE, "a recompile after warm-up (per batch or per epoch)"
    assert record["graphs_after_logits"] == 2 and record["graph_breaks"] == 0
    assert record["fused"] == [True, True]  # the demo's two groups (no decay on norms and biases)
    records = read_metrics(run_dir)
    assert [(r["epoch"], r["global_step"], r["val_samples"]) for r in records] == [(1, 4, 359), (2, 8, 359)]
    assert all(r["train_loss"] > 0 and 0 <= r["top1_err"] <= 100 for r in records)


def test_a_compiled_feature_level_run_compiles_a_graph_per_layer_not_per_batch(demo_shards, worker, tmp_path):
    # Feature CutMix draws a layer per batch: "input" (the images, mixed by apply_mix before the
    # model: the unhooked train graph), layer1 or layer2 (a graph each: the hooks' box, lambda and
    # partner are tensors, so only the layer and the mode are compiled in), and the eval graph.
    # (layer3 is 2x2 at the demo's 32 px: too small for a box, refused.)
    args = small_run_args(demo_shards, tmp_path / "run", *EXTRA, "schedule.epochs=3", "mix.mode=feature_cutmix",
                          "mix.feature_layers=[input,layer1,layer2]")
    done, records = run_worker(worker, tmp_path / "rank", args)
    record = records[0]
    assert record["code"] == 0 and record["graph_breaks"] == 0, record["graph_break_reasons"]
    graphs = [count for _, count in record["phases"]]
    # 12 batches over 3 epochs: all four graphs by the end of epoch 2, none after (the third
    # epoch's 4 batches draw layers whose graphs exist).
    assert graphs[-1] == 4 and graphs[3:] == [4, 4, 4], record["phases"]
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]


def test_checkpoint_and_export_have_the_model_keys_and_the_compiled_logits(compiled):
    import timm

    run_dir, _, logits_file = compiled
    exported = load_file(run_dir / "model.safetensors")
    checkpoint = load_file(run_dir / "checkpoints" / "epoch-0002" / "model.safetensors")
    fresh = timm.create_model("resnet10t", num_classes=10).eval()
    untrained = {key: value.clone() for key, value in fresh.state_dict().items()}
    # No `_orig_mod.` (nor any other wrapper's) prefix: exactly timm's own names, in both files.
    assert set(exported) == set(checkpoint) == set(untrained)
    assert all(torch.equal(exported[key], checkpoint[key]) for key in exported)
    saved = torch.load(logits_file, weights_only=True)
    with torch.no_grad():
        before = fresh(saved["inputs"])
        fresh.load_state_dict(exported, strict=True)
        after = fresh(saved["inputs"])
    # The eager timm model with the exported weights gives what the compiled, trained one gave.
    torch.testing.assert_close(after, saved["logits"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, saved["logits"], atol=1e-2)


def _resume_from_first_epoch(compiled, demo_shards, worker, folder, *extra):
    """A copy of the compiled run as a kill after its first checkpoint leaves it, resumed."""
    run_dir = compiled[0]
    shutil.copytree(run_dir / "checkpoints" / "epoch-0001", folder / "run" / "checkpoints" / "epoch-0001")
    shutil.copy(run_dir / "metrics.jsonl", folder / "run" / "metrics.jsonl")  # the resume cuts it to epoch 1
    done, records = run_worker(worker, folder / "rank", small_run_args(demo_shards, folder / "run", *EXTRA, *extra))
    assert "resumed from" in done.stdout and "(after epoch 1)" in done.stdout
    return records[0]


def test_compiled_run_resumed_from_its_checkpoint_equals_the_uninterrupted_one(compiled, demo_shards, worker,
                                                                               tmp_path):
    run_dir, whole, _ = compiled
    record = _resume_from_first_epoch(compiled, demo_shards, worker, tmp_path)
    assert record["phases"] == [["train", 1], ["eval", 2]] and record["graph_breaks"] == 0
    assert without_timings(read_metrics(tmp_path / "run")) == without_timings(read_metrics(run_dir))
    ours, theirs = load_file(tmp_path / "run" / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours), "weights differ from the uninterrupted run"
    assert record["params"] == whole["params"]


def test_a_compiled_checkpoint_resumes_in_an_eager_run(compiled, demo_shards, worker, tmp_path):
    record = _resume_from_first_epoch(compiled, demo_shards, worker, tmp_path, "model.compile=false")
    assert not record["compiled"] and record["phases"] == [["train", 0], ["eval", 0]]
    ours, theirs = read_metrics(tmp_path / "run"), read_metrics(compiled[0])
    assert ours[0] == theirs[0] and (ours[1]["global_step"], ours[1]["val_samples"]) == (8, 359)
    # Eager kernels round differently from inductor's: close to the compiled run, not identical.
    assert ours[1]["train_loss"] == pytest.approx(theirs[1]["train_loss"], rel=0.05)


def test_two_ranks_compiled(demo_shards, worker, tmp_path):
    """DDP compiled with the model (DDPOptimizer), 2 gloo ranks: the same parameters on both,
    one graph of the model per mode on each, every val sample counted once. (Dynamo does break
    around DDP's own bookkeeping, its logger and ``_inside_ddp_forward``, by design: not counted.)"""
    out = tmp_path / "run"
    args = small_run_args(demo_shards, out, "model.compile=true", "schedule.epochs=2", "run.max_train_steps=3",
                          "loader.batch_size=16", "loader.val_batch_size=40")
    # Warnings shown, as a user sees them: dynamo's about DDP's buffer broadcast (a break outside
    # the model's graph, by design) is silenced, 4 lines per rank that read like a fault.
    env = {key: value for key, value in child_env().items() if key != "PYTHONWARNINGS"}
    done, ranks = run_worker(worker, tmp_path / "rank", args, launch=(*LAUNCH_TWO_CPU_RANKS,),
                             env=dict(env, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1"))
    assert [(r["rank"], r["world_size"], r["code"], r["compiled"]) for r in ranks] == [(0, 2, 0, True),
                                                                                       (1, 2, 0, True)]
    assert "_broadcast_coalesced" not in done.stderr, done.stderr[-3000:]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert [r["phases"] for r in ranks] == [ONE_GRAPH_PER_MODE] * 2
    assert [(r["world_size"], r["global_batch"], r["val_samples"]) for r in read_metrics(out)] == [(2, 32, 359)] * 2
    checkpoint = load_file(out / "checkpoints" / "epoch-0002" / "model.safetensors")
    assert not [key for key in checkpoint if "_orig_mod" in key]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests above stand in)")
def test_compiled_run_on_cuda(demo_shards, worker, tmp_path):
    """The same on the GPU in bf16 (inductor's Triton kernels, fused CUDA SGD): one graph per mode,
    the export's logits, and a resume; close to, not bit-equal with, the uninterrupted run
    (inductor benchmarks kernel configurations at run time, and may pick others in another process)."""
    import timm

    env = {key: value for key, value in child_env().items() if key != "CUDA_VISIBLE_DEVICES"}
    extra = [e for e in EXTRA if e != "run.deterministic=true"] + ["run.mixed_precision=bf16"]
    whole = tmp_path / "whole"
    whole.mkdir()
    _, (record,) = run_worker(worker, whole / "rank", small_run_args(demo_shards, whole / "run", *extra), env=env)
    assert record["device"] == "cuda" and record["phases"] == ONE_GRAPH_PER_MODE and record["graph_breaks"] == 0
    assert record["fused"] == [True, True] and record["graphs_after_logits"] == 2
    exported = load_file(whole / "run" / "model.safetensors")
    model = timm.create_model("resnet10t", num_classes=10).eval()
    model.load_state_dict(exported, strict=True)
    saved = torch.load(whole / "ranklogits.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(saved["inputs"]), saved["logits"], rtol=0.05, atol=0.05)  # bf16
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "run" / "checkpoints" / "epoch-0001", resumed / "run" / "checkpoints" / "epoch-0001")
    done, (again,) = run_worker(worker, resumed / "rank", small_run_args(demo_shards, resumed / "run", *extra),
                                env=env)
    assert "resumed from" in done.stdout and again["phases"] == [["train", 1], ["eval", 2]]
    ours, theirs = read_metrics(resumed / "run")[-1], read_metrics(whole / "run")[-1]
    assert (ours["epoch"], ours["global_step"], ours["val_samples"]) == (2, 8, 359)
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-2)
