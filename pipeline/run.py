"""A whole training run from a resolved config: set up, resume, train and evaluate each epoch,
checkpoint, export. ``run_training(config)`` is what ``pipeline/train.py`` calls. The train and
val loaders are built once per run and read one epoch at a time."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .checkpoint import (TrainState, among_checkpoints, damaged_after, find_resume_checkpoint, read_loader_state,
                         read_state, save_checkpoint)
from .config import TrainConfig, config_to_dict, write_config
from .data import Augmentation, LoaderError, LoaderOptions, create_loader, steps_per_epoch
from .data.color import ColorAugment
from .data_check import check_batches, check_demo_folder, check_shards, demo_to_build
from .errors import TrainError
from .evaluate import evaluate
from .export import export_weights, point_record_at
from .launcher import ignored_accumulation, ignored_precision, lone_process_problem
from .logs import (METRICS_FILE, Progress, append_metrics, format_epoch, read_metrics, truncate_events,
                   truncate_metrics)
from .mix import MixSampler
from .mix.choices import mix_words
from .mix.feature import FeatureMixer, layer_shapes
from .mix.sampler import FEATURE_MODES, INPUT_LAYER
from .models import create_model
from .paths import in_the_way
from .optim import (create_optimizer, create_scheduler, follow_config, fused_sgd_available, keep_kernel_choice,
                    legacy_groups, scaled_lr, schedule_snapshot)
from .plot import PLOTS_FOLDER
from .precision import resolve_precision
from .resume_config import (CONFIG_FILE, check_resume_config, describe, first_unused, keep_given_config,
                            keep_previous_config, training_settings)
from .run_lock import RunFolderLock, check_run_folder_free
from .seeds import MODEL_STREAM, epoch_seed, stream_seed
from .stopping import StopRequest
from .training import MixOptions, train_one_epoch

WEIGHTS_FILE = "model.safetensors"
EXPORT_RECORD = Path(WEIGHTS_FILE).with_suffix(".json").name  # written beside it: how to load it
TENSORBOARD_FOLDER = "tensorboard"  # RUN/tensorboard: Accelerate's tracker's project name is the folder


@dataclass
class Session:
    """The live objects of a run, built once by ``setup``."""

    accelerator: object  # accelerate.Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped when distributed), then compiled with model.compile
    optimizer: object  # prepared SGD
    scheduler: object  # prepared torch scheduler, stepped per update
    val_loader: object  # already split by rank; never passed to prepare()
    shards: Path  # the shards folder (built first for the demo)
    steps_per_epoch: int  # train updates per epoch, the same on every rank
    classes: list[str]  # the train manifest's class list (label order), checked against the eval split
    mix: MixOptions  # normalization, targets and dtype for apply_mix
    stop_group: object  # a gloo group of all ranks for the stop flag; None with one process

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def run_training(config: TrainConfig, *, config_file: Path | None = None) -> dict:
    """Train as ``config`` says (read from ``config_file`` plus overrides, where a file was given);
    returns the last epoch's metrics record (with the best so far)."""
    run_dir = Path(config.run.out_dir)
    # First, a look (setup takes the lock): a folder another training writes is refused as such,
    # not by what checks of its checkpoints and config (which that training is changing) would say.
    check_run_folder_free(run_dir)
    checkpoint, changes = check_before_start(config, world_size=launched_processes())
    with RunFolderLock(run_dir) as lock:  # held until the run has exported its weights
        return _train_holding(config, run_dir=run_dir, checkpoint=checkpoint, changes=changes, lock=lock,
                              config_file=config_file)


def _train_holding(config: TrainConfig, *, run_dir: Path, checkpoint: Path | None, changes: list,
                   lock: RunFolderLock, config_file: Path | None = None) -> dict:
    """``run_training`` within the run folder's lock (``setup`` takes it)."""
    # First of all: a stop signal during the set-up is then honoured at the first step.
    stop = StopRequest(grace_seconds=config.run.stop_grace_seconds)
    try:
        session = setup(config, run_dir=run_dir, checkpoint=checkpoint, lock=lock)
        stop.group = session.stop_group
        state, loader_state, changes = resume(config, checkpoint, changes=changes, session=session, run_dir=run_dir)
        start_trackers(config, session.accelerator)  # after resume's checks: a refused resume writes nothing
        done_before = state.epoch >= config.schedule.epochs  # the same command again after the end
        # A finished run reads nothing: its loader state (of other settings, after a resume with
        # another process count) warned of a data order that restarts, before "nothing to train".
        train_loader = make_loader(config, shards=session.shards, split="train", accelerator=session.accelerator,
                                   num_classes=session.num_classes, restore=None if done_before else loader_state)[0]
        if session.accelerator.is_main_process:
            if state.epoch < config.schedule.epochs:
                set_aside_export(run_dir, checkpoint)
            if changes:
                kept = keep_previous_config(checkpoint, run_dir)
                print(f"resuming with changed settings: {describe(changes)}"
                      + (f" (the run's config until now is kept as {kept})" if kept else ""), flush=True)
            given = keep_given_config(config_file, run_dir)
            if given:
                print(f"note: --config {config_file} is the run folder's {CONFIG_FILE}, which the run rewrites with "
                      f"its resolved config; your file is kept as {given}", flush=True)
            write_config(config, run_dir / CONFIG_FILE)
            if state.epoch < config.schedule.epochs:
                print(start_line(config, session=session, state=state, run_dir=run_dir), flush=True)
        try:
            record = train_epochs(config, session=session, loader=train_loader, state=state, run_dir=run_dir,
                                  stop=stop)
        except LoaderError as error:
            error.during_pass = True  # may be this rank's alone (a damaged shard in its part): the CLI says it
            raise
        stop.settle()
        return _finish(config, session=session, state=state, record=record, run_dir=run_dir, done_before=done_before)
    finally:
        # After the last barrier and the process group's end: a stop signal meanwhile is taken
        # as one, not by its default action (StopRequest.settle).
        stop.close()


def _finish(config: TrainConfig, *, session: Session, state, record: dict | None, run_dir: Path,
            done_before: bool) -> dict:
    """After the training loop: the export of a finished run, the last barrier, the group's end."""
    accelerator = session.accelerator
    finished = state.epoch == config.schedule.epochs
    # A finished run run again keeps its export: written anew from the checkpoint, it replaced good
    # weights with a checkpoint's damaged in place (bytes flipped, size kept: no check loads them
    # all). Exported only where it is missing (lost or moved).
    # Whole: export_weights renames the weights into place, then writes the .json the same way.
    keep_export = done_before and all((run_dir / name).is_file() for name in (WEIGHTS_FILE, EXPORT_RECORD))
    if finished and accelerator.is_main_process and keep_export:
        point_record_at(run_dir / WEIGHTS_FILE)  # the run folder may have moved since its export
    if finished and accelerator.is_main_process and not keep_export:
        # keep_torch_compile=False: the model itself (its keys without _orig_mod., its own type).
        export_weights(accelerator.unwrap_model(session.model, keep_torch_compile=False), run_dir / WEIGHTS_FILE,
                       model_name=config.model.name, num_classes=session.num_classes,
                       model_options={"shakedrop": True} if config.model.shakedrop else {},
                       classes=session.classes, preprocessing=preprocessing(config))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if record is None and finished:  # resumed a run that had already finished
        record = read_metrics(run_dir)[-1]
    return record or {}


def launched_processes() -> int:
    """How many processes the launcher started, before the Accelerator exists: WORLD_SIZE, which
    torchrun (accelerate launch with several) sets and Accelerate reads; 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_before_start(config: TrainConfig, *, world_size: int | None) -> tuple[Path | None, list]:
    """What is checked before any work, the same on every rank: the run folder, which checkpoint
    a resume continues (None: a fresh start) and the training settings it would change ([] when
    none; TrainError when that is not allowed, naming another process count too where
    ``world_size``, the processes launched, is known: None for ``--check``)."""
    run_dir = Path(config.run.out_dir)
    blocked = in_the_way("run.out_dir", run_dir)
    if blocked:  # found now, not as a traceback where the run folder is made
        raise TrainError(blocked)
    among = among_checkpoints(run_dir)
    if among:
        raise TrainError(among)
    shards = Path(config.data.shards).resolve()
    if run_dir.resolve() == shards or shards in run_dir.resolve().parents:
        # Checkpoints, config.yaml and metrics among the shard tars (a build's --overwrite would
        # then delete a run it does not know of). The other way round is fine (the demo's shards
        # are built inside its run folder).
        raise TrainError(f"run.out_dir={run_dir} is data.shards={config.data.shards} or inside it: the run's "
                         "checkpoints would land among the shards; give the run a folder of its own")
    checkpoint = find_resume_checkpoint(config.run.resume, run_dir)
    state = read_state(checkpoint) if checkpoint else TrainState()
    # Named in a refusal of other settings too, so that the user fixes everything at once (the
    # process count alone is refused later, by process_count_change, with the global batches).
    processes = [] if world_size is None else process_count_change(config, state, checkpoint=checkpoint,
                                                                   world_size=world_size, refuse=False)
    changes = check_resume_config(config, checkpoint, state.settings, also=processes)
    return checkpoint, changes


def setup(config: TrainConfig, *, run_dir: Path, checkpoint: Path | None, lock: RunFolderLock) -> Session:
    """Accelerator, data, model, optimizer and scheduler, prepared for DDP and mixed precision;
    the shards (and ``checkpoint``, the one a resume continues) checked and the run folder locked
    (``lock``) before the model is built."""
    from accelerate.utils import is_compiled_module, set_seed

    accelerator = create_accelerator(config, run_dir=run_dir)
    alone = lone_process_problem(accelerator.num_processes)
    if alone:  # before the lock: each rank would take it as a training of its own
        raise TrainError(alone)
    if accelerator.is_main_process:
        for note in (ignored_precision(option="run.mixed_precision", setting=config.run.mixed_precision,
                                       precision=accelerator.mixed_precision, device=accelerator.device.type),
                     ignored_accumulation()):
            if note:
                print(note, flush=True)
    if config.run.tensorboard:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():  # Accelerate would skip the tracker without a word
            raise TrainError("run.tensorboard=true needs the tensorboard package: pip install tensorboard")
    shards = prepare_shards(config, accelerator=accelerator)
    classes = check_shards(config, checkpoint)
    check_batches(config, world_size=accelerator.num_processes, num_classes=len(classes))
    # After the checks that refuse a run without writing (no run folder for a refused run), before
    # anything is written into it (resume's truncation, the config, checkpoints).
    lock.take(accelerator)
    num_classes = len(classes)
    if config.run.deterministic:
        # cuBLAS is deterministic only with a fixed workspace (older torch refuses the first GPU
        # matmul without one); cuBLAS reads it when it starts, which is later than this.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    set_seed(config.run.seed)  # the same initial weights on every rank
    model = create_model(name=config.model.name, num_classes=num_classes, pretrained=config.model.pretrained,
                         channels_last=config.model.channels_last, drop_path_rate=config.model.drop_path_rate,
                         drop_block_rate=config.model.drop_block_rate, shakedrop=config.model.shakedrop,
                         zero_init_last=config.model.zero_init_last)
    # The same weights on every rank (above), but each rank its own dropout / drop path / ShakeDrop
    # draws from here on: identical masks on every rank would regularize like one small batch.
    torch.manual_seed(stream_seed(seed=config.run.seed, rank=accelerator.process_index, stream=MODEL_STREAM))
    steps = train_steps_per_epoch(config, shards=shards, accelerator=accelerator, num_classes=num_classes)
    global_batch = config.loader.batch_size * accelerator.num_processes
    legacy = legacy_groups(model, checkpoint=checkpoint, decay_norm_and_bias=config.optim.decay_norm_and_bias)
    if legacy and accelerator.is_main_process:
        print(f"note: {checkpoint}'s SGD state groups the parameters as before the model's no_weight_decay() "
              "list was read (those parameters decayed): the run goes on with that grouping", flush=True)
    optimizer = create_optimizer(model, lr=peak_lr(config, processes=accelerator.num_processes),
                                 momentum=config.optim.momentum, nesterov=config.optim.nesterov,
                                 weight_decay=config.optim.weight_decay,
                                 decay_norm_and_bias=config.optim.decay_norm_and_bias,
                                 fused=config.optim.fused and fused_sgd_available(accelerator.device),
                                 spare_named=not legacy)
    scheduler = create_scheduler(optimizer, steps_per_epoch=steps,
                                 **schedule_options(config, global_batch=global_batch))
    features, shapes = feature_mixing(config, model)  # hooks on the bare model, before compile and DDP
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # After prepare, as Accelerate's own dynamo_backend does (and not twice when that is set): DDP
    # is compiled with the model (its DDPOptimizer overlaps the gradient all-reduce with the
    # backward), and save_state keeps saving the uncompiled module, so checkpoints have the model's
    # own keys (no `_orig_mod.`) and load into a compiled or an eager run alike. dynamic=False:
    # every batch of a split has the same shape (train batches are whole, val batches padded), so
    # one static graph per mode (train, eval), and a shape change is a recompile a test would see.
    if config.model.compile and not is_compiled_module(model):
        if features is not None:
            # The feature-level modes compile a train graph per mixed layer (FeatureMixer: the
            # layer and the mode are compiled in, box, lambda and partner are inputs), one unmixed
            # and the eval graph; dynamo's default limit (8 per frame) would send the rest to eager.
            mixed_layers = set(config.mix.feature_layers) - {INPUT_LAYER}  # the input is the unmixed graph
            limit = len(mixed_layers) + 2
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
        if accelerator.num_processes > 1:
            quiet_ddp_buffer_broadcast_warning()
        model = torch.compile(model, dynamic=False)
    val_loader = make_loader(config, shards=shards, split=config.data.eval_split, accelerator=accelerator,
                             num_classes=num_classes)[0]
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    mix = MixOptions(mean=config.data.mean, std=config.data.std, num_classes=num_classes,
                     label_smoothing=config.mix.label_smoothing, out_dtype=dtype,
                     memory_format=torch.channels_last if config.model.channels_last else torch.contiguous_format,
                     features=features, layer_shapes=shapes)
    return Session(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                   val_loader=val_loader, shards=shards, steps_per_epoch=steps, classes=classes, mix=mix,
                   stop_group=stop_group(accelerator))


def quiet_ddp_buffer_broadcast_warning() -> None:
    """DDP sends rank 0's buffers (BatchNorm's running statistics) to the other ranks before each
    forward, through a C++ call dynamo cannot trace: the compiled DDP module breaks its graph there,
    before the model's own graph, by design (tests/test_train_compile.py counts the model's graphs).
    Dynamo says so once per rank in a 4-line UserWarning that reads like a fault in the run; this
    warning alone is silenced, others stay."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning,
                            message=r"Dynamo does not know how to trace the builtin `torch\._C\._distributed_c10d\."
                                    r"[^`]*_broadcast_coalesced")


def start_trackers(config: TrainConfig, accelerator) -> None:
    """With ``run.tensorboard``: event files in RUN/tensorboard, the config as hparams (scalars only)."""
    if config.run.tensorboard:
        flat = {f"{section}.{key}": value if isinstance(value, (int, float, str, bool)) else str(value)
                for section, values in config_to_dict(config).items() for key, value in values.items()}
        accelerator.init_trackers(TENSORBOARD_FOLDER, config=flat)


def preprocessing(config: TrainConfig) -> dict:
    """What evaluation must do to an image for this model (recorded with the exported weights)."""
    data = config.data
    # cifar evaluates the image as it is (no resize, no crop): its crop_pct, unread, is not what
    # happens, and a transform built from this record (timm's) would resize 32 -> 37 and crop.
    crop_pct = 1.0 if data.augmentation == "cifar" else data.crop_pct
    return {"image_size": data.image_size, "crop_pct": crop_pct, "augmentation": data.augmentation,
            "crop_padding": data.crop_padding, "mean": list(data.mean), "std": list(data.std),
            "channels_last": config.model.channels_last}


def feature_mixing(config: TrainConfig, model: torch.nn.Module):
    """For the feature-level modes: the FeatureMixer with its hooks on ``mix.feature_layers`` and
    each layer's output (height, width) at ``data.image_size``; (None, None) otherwise."""
    if config.mix.mode not in FEATURE_MODES:
        return None, None
    layers = config.mix.feature_layers
    return FeatureMixer(model, layers), layer_shapes(model, layers, image_size=config.data.image_size)


def stop_group(accelerator):
    """A gloo group of every rank for the stop flag (``StopRequest``): its all-reduces run on CPU
    tensors, so they never wait for the GPU, whatever the main backend (NCCL). None with one process."""
    if accelerator.num_processes == 1:
        return None
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


def create_accelerator(config: TrainConfig, *, run_dir: Path):
    """Accelerate with the run's precision and trackers; the scheduler is stepped by us once per
    update (Accelerate would otherwise step it once per process)."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    # The plugin given: Accelerate would otherwise take ACCELERATE_GRADIENT_ACCUMULATION_STEPS and
    # divide every loss by it while this loop still steps at every batch (a smaller lr, unsaid).
    return Accelerator(mixed_precision=resolve_precision(config.run.mixed_precision),
                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
                       step_scheduler_with_optimizer=False,
                       log_with="tensorboard" if config.run.tensorboard else None, project_dir=str(run_dir))


def prepare_shards(config: TrainConfig, *, accelerator) -> Path:
    """The shards folder; the demo builds the digits there first (main process, once)."""
    shards = Path(config.data.shards)
    if not config.data.demo:
        return shards
    # test.json: the localization split added after the first demos (an older demo folder gets it).
    # Every rank decides before any rank builds (the barrier): a rank deciding while the main
    # process replaces the folder could see half of it and decide otherwise, and wait forever.
    build = demo_to_build(config)
    if build:
        check_demo_folder(config)  # the build replaces the folder: never a user's own data
    accelerator.wait_for_everyone()
    if build and accelerator.is_main_process:
        from shards.demo import build_demo_shards

        shards.parent.mkdir(parents=True, exist_ok=True)
        # Built aside (raw digits and shards), then moved in: nothing next to the folder is touched.
        summaries = io.StringIO()
        with tempfile.TemporaryDirectory(prefix=".demo-build-", dir=shards.parent) as scratch:
            with contextlib.redirect_stdout(summaries):
                built = build_demo_shards(Path(scratch), quiet=True)
            if shards.exists():
                shutil.rmtree(shards)  # empty, or an earlier demo build without test.json
            os.replace(built, shards)
        # The build's summaries name the scratch folder (its "manifest:" lines): said with the
        # folder the shards are now in, where a reader would go and look.
        print(summaries.getvalue().replace(str(built), str(shards)), end="", flush=True)
    accelerator.wait_for_everyone()
    return shards


def schedule_options(config: TrainConfig, *, global_batch: int) -> dict:
    """The scheduler's keyword arguments from the schedule section; ``min_lr`` scaled with the
    global batch as ``optim.base_lr`` is (both are given at ``optim.reference_batch``), so that
    cosine ends below where it starts whatever the batch (unscaled, min_lr=0.2 under a base_lr of
    0.4 at batch 16 made it climb from 0.025 towards 0.2)."""
    options = asdict(config.schedule)
    options["min_lr"] = scaled_lr(base_lr=config.schedule.min_lr, global_batch=global_batch,
                                  reference_batch=config.optim.reference_batch)
    return options


def make_loader(config: TrainConfig, *, shards: Path, split: str, accelerator, num_classes: int,
                restore: dict | None = None):
    """``create_loader`` for this rank, built once per run: each epoch's seed and rank part
    follow from the run's seed and the epoch number (``pipeline.seeds``, ``data.sharding``)."""
    training = split == "train"
    data = config.data
    augmentation = Augmentation(image_size=data.image_size, random_area=data.random_area,
                                random_aspect_ratio=data.random_aspect_ratio, flip_probability=data.flip_probability,
                                crop_pct=data.crop_pct, kind=data.augmentation, padding=data.crop_padding)
    batch_size = config.loader.batch_size if training else (config.loader.val_batch_size or config.loader.batch_size)
    options = LoaderOptions(batch_size=batch_size, backend=config.loader.backend, num_threads=config.loader.num_threads,
                            shuffle_buffer=config.loader.shuffle_buffer)
    return create_loader(shards, split, augmentation=augmentation, options=options, rank=accelerator.process_index,
                         world_size=accelerator.num_processes, device=accelerator.device, seed=config.run.seed,
                         num_classes=num_classes, restore=restore)


def train_steps_per_epoch(config: TrainConfig, *, shards: Path, accelerator, num_classes: int) -> int:
    """Updates per epoch (the train loader's count), capped by ``run.max_train_steps``."""
    steps = steps_per_epoch(shards, "train", batch_size=config.loader.batch_size,
                            world_size=accelerator.num_processes, num_classes=num_classes,
                            backend=config.loader.backend)
    cap = config.run.max_train_steps
    return steps if cap is None else min(steps, cap)


def resume(config: TrainConfig, checkpoint: Path | None, *, changes: list, session: Session,
           run_dir: Path) -> tuple[TrainState, dict | None, list]:
    """Load ``checkpoint`` (``find_resume_checkpoint``'s; None: a fresh start): where training
    stands, this rank's saved train loader state (None when there is none) and every setting the
    run changes (``changes``, ``check_before_start``'s, and another process count)."""
    classes, settings = session.classes, training_settings(config)
    accelerator = session.accelerator
    world = accelerator.num_processes
    fresh = TrainState(model_name=config.model.name, num_classes=session.num_classes, shakedrop=config.model.shakedrop,
                       classes=classes, settings=settings, world_size=world)
    if checkpoint is None:
        if accelerator.is_main_process:
            # With auto: a run folder whose checkpoints were deleted (to free disk, its results kept)
            # was taken over, its metrics cut and its config replaced, its plots and evaluations left
            # beside the new run's.
            set_aside_earlier_run(run_dir, resume=config.run.resume,
                                  why="run.resume=none" if config.run.resume == "none" else
                                  f"no checkpoint left in {run_dir}, so this run starts fresh")
            truncate_metrics(run_dir, last_epoch=0)
            truncate_events(run_dir / TENSORBOARD_FOLDER, last_epoch=0)  # of a first epoch killed at its save
        return fresh, None, changes
    state = read_state(checkpoint)  # check_shards has checked it against the model and the classes
    changes = [*changes, *process_count_change(config, state, checkpoint=checkpoint, world_size=world)]
    saved_step = state.step_in_epoch
    if changes:
        check_not_past_the_end(config, state, checkpoint=checkpoint)
        remap_epoch_position(state, steps_per_epoch=session.steps_per_epoch, world_size=world,
                             batch_size=config.loader.batch_size)
    # From here on the run trains with this config's settings (the same, or changed on purpose).
    state.classes, state.settings, state.world_size = classes, settings, world
    # This config's group settings and schedule, before the checkpoint's replace them (only needed
    # when they differ).
    built = schedule_snapshot(session.optimizer, session.scheduler) if changes else None
    try:
        # With changed settings the checkpoint's schedule is replaced below (follow_config); a
        # schedule of another shape (warmup on or off) would not even load into this one.
        with schedule_not_loaded(session.scheduler, skip=bool(changes)):
            accelerator.load_state(str(checkpoint))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        # Files of the right size that do not load (bits flipped on disk, a foreign file put there).
        raise TrainError(f"run.resume: {checkpoint} does not load ({type(error).__name__}: "
                         f"{_first_sentence(error)}); name an older checkpoint with run.resume=PATH, "
                         "or start over with run.resume=none") from None
    keep_kernel_choice(session.optimizer)
    if changes:  # the lr, schedule and group settings of this config, not the checkpoint's
        follow_config(session.optimizer, session.scheduler, built,
                      position=state.epoch * session.steps_per_epoch + state.step_in_epoch)
    if accelerator.is_main_process:
        if config.run.resume != "auto":  # a checkpoint named: the run goes on from it, a new branch
            set_aside_later_checkpoints(run_dir, checkpoint)
        if config.run.resume == "auto":  # the newer ones it passed over (older damaged ones are pruned)
            for damaged, problem in damaged_after(run_dir, checkpoint):
                print(f"skipped damaged checkpoint {damaged}: {problem}", flush=True)
        fresh_folder = not (run_dir / METRICS_FILE).is_file() or not (run_dir / METRICS_FILE).stat().st_size
        truncate_metrics(run_dir, last_epoch=state.epoch)
        # Whether or not this run logs to TensorBoard: RUN/tensorboard must not show epochs past it.
        truncate_events(run_dir / TENSORBOARD_FOLDER, last_epoch=state.epoch)
        moved = f"; at the new global batch and epoch length it goes on from step {state.step_in_epoch}" \
            if state.step_in_epoch != saved_step else ""
        if state.epoch >= config.schedule.epochs:  # the same command again after the end
            print(f"the run has already finished ({checkpoint}, epoch {state.epoch} of {config.schedule.epochs}): "
                  "nothing to train (a longer schedule.epochs with run.resume_with_changes=true trains it on)",
                  flush=True)
        else:
            # state.epoch counts finished epochs: "epoch 1, step 1" read as one step into epoch 1.
            where = (f"after epoch {state.epoch}" if not saved_step else
                     f"epoch {state.epoch + 1} after its step {saved_step}")
            print(f"resumed from {checkpoint} ({where}{moved})", flush=True)
        elsewhere = Path(checkpoint).resolve().parent.parent
        # Another run's checkpoint into a folder with no history yet: it starts its history there.
        if Path(checkpoint).parent.name == "checkpoints" and elsewhere != run_dir.resolve() and fresh_folder:
            print(f"note: {checkpoint} is another run folder's ({elsewhere}): its metrics, config and plots up to "
                  f"epoch {state.epoch} stay there; {run_dir} records the epochs from here on", flush=True)
    return state, read_loader_state(checkpoint, rank=accelerator.process_index), changes


def check_not_past_the_end(config: TrainConfig, state: TrainState, *, checkpoint: Path) -> None:
    """A resume with changed settings whose ``schedule.epochs`` ends before where ``checkpoint``
    stands: nothing would train, and the run would export weights trained past the epoch it reports."""
    epochs = config.schedule.epochs
    if state.epoch > epochs or (state.epoch == epochs and state.step_in_epoch):
        where = _count(state.epoch, "epoch") + (f" and {_count(state.step_in_epoch, 'step')}"
                                                 if state.step_in_epoch else "")
        raise TrainError(f"run.resume: {checkpoint} has trained {where}, past schedule.epochs={epochs}: resume "
                         f"with at least {state.epoch + bool(state.step_in_epoch)} epochs, or name an earlier "
                         "checkpoint with run.resume=PATH")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def remap_epoch_position(state: TrainState, *, steps_per_epoch: int, world_size: int, batch_size: int) -> None:
    """A mid-epoch checkpoint resumed with another global batch or ``run.max_train_steps``: the
    step the epoch goes on from, as the samples done so far at the new global batch, at most the
    new epoch's length; each rank's carried loss sum scaled to it (the epoch's mean stays the mean
    of what was trained). Updates ``state`` in place; nothing changes for the same batch and length."""
    if not state.step_in_epoch:
        return
    old_batch = state.settings.get("loader.batch_size", batch_size)
    old_world = state.world_size or world_size
    samples = state.step_in_epoch * old_batch * old_world
    step = min(steps_per_epoch, round(samples / (batch_size * world_size)))
    if (step, world_size) == (state.step_in_epoch, old_world):
        return
    mean = sum(state.partial_loss) / len(state.partial_loss) / state.step_in_epoch if state.partial_loss else 0.0
    state.step_in_epoch, state.partial_loss = step, [mean * step] * world_size


@contextlib.contextmanager
def schedule_not_loaded(scheduler, *, skip: bool):
    """While ``skip``: ``scheduler.load_state_dict`` does nothing (Accelerate's ``load_state``
    loads every prepared scheduler; a run with changed settings builds its schedule anew)."""
    if not skip:
        yield
        return
    scheduler.load_state_dict = lambda state: None  # an instance attribute: shadows the method
    try:
        yield
    finally:
        del scheduler.load_state_dict


def process_count_change(config: TrainConfig, state: TrainState, *, checkpoint: Path | None, world_size: int,
                         refuse: bool = True) -> list:
    """``[("processes", then, now)]`` when ``checkpoint`` was trained by another number of processes
    ([] when the same, not recorded, or the run has no epoch left): the global batch, and with it
    the scaled lr and the updates per epoch, would change mid-run; TrainError unless
    ``run.resume_with_changes`` (or not ``refuse``: the change only)."""
    if not state.world_size or state.world_size == world_size or state.epoch >= config.schedule.epochs:
        return []  # the same, not recorded, or nothing left to train
    batch = config.loader.batch_size
    if refuse and not config.run.resume_with_changes:
        raise TrainError(
            f"run.resume: {checkpoint} was trained by {state.world_size} processes (a global batch of "
            f"{state.world_size * batch}), this run has {world_size} ({world_size * batch}): the lr and the "
            f"updates per epoch would change mid-run; launch {state.world_size} processes, or continue with "
            "run.resume_with_changes=true (lr and schedule then follow the new global batch)")
    return [("processes", state.world_size, world_size)]


def set_aside_export(run_dir: Path, checkpoint: Path | None) -> Path | None:
    """Before training goes on in a folder that holds an exported model (a finished run extended
    with run.resume_with_changes, or started over): rename the export to
    ``model.before-<checkpoint>.safetensors`` (and its .json), so that nothing evaluates it as this
    run's model while the run trains; the run exports anew when it ends. Returns the new name."""
    weights = Path(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        return None
    stem = f"model.before-{checkpoint.name if checkpoint else 'start'}"
    kept = first_unused(lambda n: weights.with_name(f"{stem}.safetensors" if n == 1 else f"{stem}-{n}.safetensors"))
    for source, target in ((weights.with_suffix(".json"), kept.with_suffix(".json")), (weights, kept)):
        if source.is_file():
            os.replace(source, target)
    point_record_at(kept)  # its load line named model.safetensors, which this run's export replaces
    print(f"the exported model of the run until now is renamed to {kept} (this run exports anew at its end)",
          flush=True)
    return kept


def later_checkpoints(run_dir: Path, checkpoint: Path) -> list[Path]:
    """The checkpoint folders of ``run_dir`` after ``checkpoint`` (their names sort by epoch, then
    step), which ``set_aside_later_checkpoints`` moves."""
    root = Path(run_dir) / "checkpoints"
    return sorted(folder for folder in root.iterdir() if folder.is_dir() and not folder.name.startswith("tmp-")
                  and folder.name > Path(checkpoint).name
                  and folder.resolve() != Path(checkpoint).resolve()) if root.is_dir() else []


def set_aside_later_checkpoints(run_dir: Path, checkpoint: Path) -> Path | None:
    """``run.resume=PATH``: the run's checkpoints after ``PATH`` (by position: their names sort by
    epoch, then step) and the export of where they led are moved into ``RUN/replaced-<n>`` with a
    copy of the metrics and config until now. Left there, a ``run.resume=auto`` after a crash of
    the new branch would go back to the one the user turned away from, and ``RUN/model.safetensors``
    would be evaluated as this run's. Returns the folder, or None when nothing was later."""
    later = later_checkpoints(run_dir, checkpoint)
    if not later:
        return None
    aside = first_unused(lambda n: Path(run_dir) / f"replaced-{n}")
    (aside / "checkpoints").mkdir(parents=True)
    for name in (METRICS_FILE, CONFIG_FILE):
        if (Path(run_dir) / name).is_file():
            shutil.copy2(Path(run_dir) / name, aside / name)
    exported = (Path(run_dir) / WEIGHTS_FILE).is_file()
    for name in (WEIGHTS_FILE, EXPORT_RECORD):
        if (Path(run_dir) / name).is_file():
            os.replace(Path(run_dir) / name, aside / name)
    for folder in later:
        os.replace(folder, aside / "checkpoints" / folder.name)
    point_record_at(aside / WEIGHTS_FILE)  # its load line named RUN/model.safetensors, the new run's
    # What was made of the replaced epochs: the curves drawn from their metrics, and evaluations of
    # their weights (a later checkpoint or the export); left beside the branch's files they would
    # pass for its own. Evaluations of a checkpoint the branch keeps stay. TensorBoard's events are
    # copied (resume then drops the replaced epochs from RUN/tensorboard: truncate_events).
    made = [folder for folder in sorted(Path(run_dir).iterdir()) if folder.is_dir()
            and (folder.name == PLOTS_FOLDER or _evaluates_replaced(folder, run_dir=run_dir, later=later))]
    for folder in made:
        os.replace(folder, aside / folder.name)
    if (Path(run_dir) / TENSORBOARD_FOLDER).is_dir():
        shutil.copytree(Path(run_dir) / TENSORBOARD_FOLDER, aside / TENSORBOARD_FOLDER)
        made.append(aside / TENSORBOARD_FOLDER)
    export = " and the export they led to" if exported else ""
    also = f" (with {', '.join(folder.name + '/' for folder in made)})" if made else ""
    print(f"run.resume={checkpoint}: the run's later checkpoints ({', '.join(f.name for f in later)}){export} are "
          f"moved to {aside}, with a copy of its metrics and config{also}", flush=True)
    return aside


def _evaluates_replaced(folder: Path, *, run_dir: Path, later: list[Path]) -> bool:
    """Whether ``folder`` holds an evaluation (an eval.json) of weights a branch replaces: this run's
    export or one of its ``later`` checkpoints. Recorded paths name the run folder where it stood
    then: one that no longer exists is taken for this one, moved since. Evaluations of other weights
    (a kept checkpoint, another run's, a replaced-N's, a model.before-* export) stay. An eval.json
    that cannot be read is taken for one (moving it loses nothing)."""
    record = folder / "eval.json"
    if not record.is_file():
        return False
    try:
        settings = json.loads(record.read_text())["settings"]
        checkpoint, weights = settings["checkpoint"], Path(settings["weights"])
        evaluated = Path(checkpoint["folder"]) if checkpoint else None
    except (OSError, ValueError, KeyError, TypeError):
        return True

    def this_run(place: Path) -> bool:
        return not place.exists() or place.resolve() == Path(run_dir).resolve()

    if evaluated is None:
        return weights.name == WEIGHTS_FILE and this_run(weights.parent)
    return (evaluated.parent.name == "checkpoints" and this_run(evaluated.parent.parent)
            and evaluated.name in {Path(moved).name for moved in later})


def earlier_run_left(run_dir: Path, *, resume: str) -> bool:
    """Whether ``run_dir`` holds a run that a fresh start (``resume``: none, or auto finding no
    checkpoint) would mix with its own files: checkpoints, epoch records or an export. A config.yaml
    alone is a start that ended before its first epoch; with auto, records beside an unfinished
    first save (a ``tmp-`` checkpoint) are this run's own, killed while saving epoch 1. The records
    are not parsed: a damaged file must not stop a start over (truncate_metrics neither reads it)."""
    checkpoints, metrics = Path(run_dir) / "checkpoints", Path(run_dir) / METRICS_FILE
    folders = list(checkpoints.iterdir()) if checkpoints.is_dir() else []
    saved = any(not p.name.startswith("tmp-") for p in folders)
    recorded = metrics.is_file() and metrics.stat().st_size > 0
    own_first_save = resume == "auto" and any(p.name.startswith("tmp-") for p in folders)
    return saved or (recorded and not own_first_save) or (Path(run_dir) / WEIGHTS_FILE).is_file()


def set_aside_earlier_run(run_dir: Path, *, resume: str, why: str) -> Path | None:
    """A fresh start in a folder with an earlier run (``earlier_run_left``: ``run.resume=none``, or
    ``auto`` where that run's checkpoints were deleted): move its checkpoints, metrics, config and
    exported model into ``RUN/replaced-<n>``, so that a later ``run.resume=auto`` never resumes the
    earlier run's checkpoints (its later epochs would be newer than this run's), its epochs are
    not cut from the metrics, and nothing of it is deleted. ``why`` starts the line that says so.
    Returns the folder, or None when there was nothing to set aside."""
    if not earlier_run_left(run_dir, resume=resume):
        return None
    checkpoints = Path(run_dir) / "checkpoints"
    present = {"checkpoints": checkpoints.is_dir(), "metrics": (Path(run_dir) / METRICS_FILE).is_file(),
               "config": (Path(run_dir) / CONFIG_FILE).is_file(), "export": (Path(run_dir) / WEIGHTS_FILE).is_file()}
    listed = [name for name, there in present.items() if there]
    aside = first_unused(lambda n: Path(run_dir) / f"replaced-{n}")
    aside.mkdir()
    for name in (METRICS_FILE, CONFIG_FILE):
        if (Path(run_dir) / name).is_file():
            shutil.copy2(Path(run_dir) / name, aside / name)
    for name in (WEIGHTS_FILE, EXPORT_RECORD):  # its export, if it finished
        if (Path(run_dir) / name).is_file():
            os.replace(Path(run_dir) / name, aside / name)
    # What its resumes with changes kept (config.before-<checkpoint>.yaml, model.before-...): of
    # the earlier run too, and beside the new run's files nobody could tell whose they are.
    for kept in Path(run_dir).glob("*.before-*"):
        if kept.is_file():
            os.replace(kept, aside / kept.name)
    for weights in aside.glob("*.safetensors"):  # their load lines named the places the new run writes
        point_record_at(weights)
    # What was made of the earlier run: its curves (python -m pipeline.plot), TensorBoard events
    # and evaluations (a folder holding an eval.json, whatever its name): left beside the new run's
    # files, they would pass for the new run's (and TensorBoard would draw both runs as one).
    made = [folder for folder in sorted(Path(run_dir).iterdir()) if folder.is_dir()
            and (folder.name in (PLOTS_FOLDER, TENSORBOARD_FOLDER) or (folder / "eval.json").is_file())]
    for folder in made:
        os.replace(folder, aside / folder.name)
    if checkpoints.is_dir():
        os.replace(checkpoints, aside / "checkpoints")
    also = f" (with its {', '.join(folder.name + '/' for folder in made)})" if made else ""
    what = ", ".join(listed[:-1]) + f" and {listed[-1]}" if len(listed) > 1 else listed[0]
    print(f"{why}: the earlier run's {what}{also} are moved to {aside}", flush=True)
    return aside


def _first_sentence(error: Exception, limit: int = 200) -> str:
    """A library error's first sentence on one line (torch's go on with advice that does not apply)."""
    text = " ".join(str(error).split())
    return text.split(". ")[0][:limit]


def train_epochs(config: TrainConfig, *, session: Session, loader, state: TrainState, run_dir: Path,
                 stop: StopRequest) -> dict | None:
    """Epochs ``state.epoch .. epochs-1``: train, evaluate when due, log, checkpoint. A stop signal
    saves a checkpoint (mid-epoch if need be) and returns early; ``state`` is updated in place."""
    accelerator, record = session.accelerator, None
    for epoch in range(state.epoch, config.schedule.epochs):
        sampler = mix_sampler(config, seed=epoch_seed(config.run.seed, epoch), rank=accelerator.process_index,
                              layer_shapes=session.mix.layer_shapes)
        color = color_augment(config, seed=epoch_seed(config.run.seed, epoch), rank=accelerator.process_index,
                              device=accelerator.device)
        progress = Progress(enabled=config.run.progress and accelerator.is_local_main_process,
                            total=session.steps_per_epoch, epoch=epoch + 1, epochs=config.schedule.epochs,
                            initial=state.step_in_epoch)
        started = time.perf_counter()
        try:
            result = train_one_epoch(model=session.model, optimizer=session.optimizer, scheduler=session.scheduler,
                                     batches=loader.iter_epoch(epoch, state.step_in_epoch),
                                     steps=session.steps_per_epoch, sampler=sampler, accelerator=accelerator,
                                     mix=session.mix, start_step=state.step_in_epoch,
                                     carried_loss=carried_loss(state, rank=accelerator.process_index), stop=stop,
                                     progress=progress, log_every=config.run.log_every, color=color)
        finally:  # also on Ctrl-C or an error: the bar, cut off mid-line, would run into their message
            progress.close()
        state.global_step += result.steps
        if result.stopped:
            state.step_in_epoch = result.last_step
            state.partial_loss = accelerator.gather(result.loss_sum.reshape(1)).tolist()
            stop.progress()
            save_checkpoint(accelerator, run_dir, state, keep=config.run.keep_checkpoints,
                            loader_state=loader.state_dict())
            return None
        state.epoch, state.step_in_epoch, state.partial_loss = epoch + 1, 0, []
        record = epoch_record(config, session=session, state=state, result=result,
                              seconds=time.perf_counter() - started, progress=stop.progress)
        if accelerator.is_main_process:
            append_metrics(run_dir, record)
            print(format_epoch(record, split=config.data.eval_split), flush=True)
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.epoch)
        stop.progress()
        save_checkpoint(accelerator, run_dir, state, keep=config.run.keep_checkpoints, loader_state=loader.state_dict())
        if state.epoch < config.schedule.epochs and (result.stop_requested or stop.agree()):
            stop.honour()
            return None
    return record


def start_line(config: TrainConfig, *, session: Session, state: TrainState, run_dir: Path) -> str:
    """What the run is about to do, where a user checks it first: the device the processes train
    on (a CPU where a GPU was meant shows here, not as a slow first epoch), the precision, the
    global batch and the epochs left."""
    accelerator = session.accelerator
    processes = accelerator.num_processes
    return (f"training {config.model.name} on {session.num_classes} classes of {session.shards}: "
            f"{processes} process{'es' if processes > 1 else ''} on {accelerator.device.type}, "
            f"precision {accelerator.mixed_precision}, global batch {config.loader.batch_size * processes} "
            f"(peak lr {peak_lr(config, processes=processes):g}), {session.steps_per_epoch} steps per epoch, "
            f"epochs {state.epoch + 1}-{config.schedule.epochs}, {_mix_words(config.mix)}; "
            f"run folder {run_dir}" + (SYNTHETIC_NOTE if config.loader.backend == "synthetic" else ""))


def _mix_words(mix) -> str:
    return mix_words(mix.mode, cutout_size=mix.cutout_size, label_smoothing=mix.label_smoothing,
                     feature_layers=mix.feature_layers, cutmix_alpha=mix.cutmix_alpha, mixup_alpha=mix.mixup_alpha,
                     switch_prob=mix.switch_prob, prob=mix.prob, per=mix.per, partner=mix.partner)


def peak_lr(config: TrainConfig, *, processes: int) -> float:
    """The lr after any warm-up: ``optim.base_lr`` scaled to the global batch of ``processes``
    (``optim.reference_batch``: 256 for the ImageNet recipes, 64 for CIFAR's)."""
    return scaled_lr(base_lr=config.optim.base_lr, global_batch=config.loader.batch_size * processes,
                     reference_batch=config.optim.reference_batch)


# The start line's last words for loader.backend=synthetic: what such a run measures, and what not.
SYNTHETIC_NOTE = ("; loader.backend=synthetic: one batch of random images and labels, made once on the device, "
                  "at every step (the model-only throughput ceiling): no image is read, none of the data options "
                  "applies, and no epoch is evaluated")


def carried_loss(state: TrainState, *, rank: int) -> float:
    """This rank's loss sum over the steps of the epoch done before a mid-epoch checkpoint."""
    return state.partial_loss[rank] if state.step_in_epoch and state.partial_loss else 0.0


def color_augment(config: TrainConfig, *, seed: int, rank: int, device) -> ColorAugment | None:
    """The epoch's colour augmentation (randomness from (seed, rank)); None when the data section has none."""
    data = config.data
    if not (data.color_jitter or data.lighting_std):
        return None
    return ColorAugment(jitter=data.color_jitter, lighting_std=data.lighting_std, seed=seed, rank=rank, device=device)


def mix_sampler(config: TrainConfig, *, seed: int, rank: int, layer_shapes: dict | None = None) -> MixSampler:
    """The epoch's MixSampler from the mix section (randomness from (seed, rank)); the feature-level
    modes draw their boxes on ``layer_shapes``."""
    mix = config.mix
    return MixSampler(mode=mix.mode, cutmix_alpha=mix.cutmix_alpha, mixup_alpha=mix.mixup_alpha,
                      cutout_size=mix.cutout_size, prob=mix.prob, switch_prob=mix.switch_prob, per=mix.per,
                      partner=mix.partner, seed=seed, rank=rank, layers=mix.feature_layers,
                      layer_shapes=layer_shapes)


def epoch_record(config: TrainConfig, *, session: Session, state: TrainState, result, seconds: float,
                 progress=None) -> dict:
    """The epoch's metrics (train loss averaged over ranks; evaluation when due) and the best so far."""
    accelerator = session.accelerator
    loss = accelerator.reduce(result.loss_sum.double(), reduction="sum")
    world = accelerator.num_processes
    train_loss = float(loss) / (result.last_step * world)
    # The lr the epoch's last update trained with (after a resume at the epoch's very end, no update
    # ran here: the optimizer's, which the checkpoint restored).
    lr = session.optimizer.param_groups[0]["lr"] if result.lr is None else result.lr
    if not math.isfinite(train_loss):
        # Weights that went NaN stay NaN: the run went on to its end and reported the error of a
        # constant prediction as a result, exit 0, NaN in metrics.jsonl (walkthrough). The same
        # all-reduced value on every rank: all of them stop here, before the epoch's checkpoint.
        raise TrainError(f"the training diverged in epoch {state.epoch}: its mean train loss is {train_loss} (lr "
                         f"{lr:g} at its last update); nothing of this epoch is kept (the checkpoints are of the "
                         "epochs before it): a smaller optim.base_lr, or data.mean/std of the images' scale, usually "
                         "fixes it")
    record = {"epoch": state.epoch, "epochs": config.schedule.epochs, "global_step": state.global_step,
              "world_size": world, "global_batch": config.loader.batch_size * world, "train_loss": train_loss,
              "lr": lr,
              "img_per_s": result.images * world / max(result.step_seconds, 1e-9),
              "data_wait_share": result.wait_seconds / max(result.step_seconds, 1e-9), "epoch_seconds": seconds}
    # The synthetic backend's val batches are random images with random labels (and as many as a
    # whole batch count, not the val set's): their errors read like a result (walkthrough).
    synthetic = config.loader.backend == "synthetic"
    if not synthetic and (state.epoch % config.run.eval_every == 0 or state.epoch == config.schedule.epochs):
        record.update(evaluate(session.model, session.val_loader, accelerator=accelerator, mean=config.data.mean,
                               std=config.data.std, dtype=session.mix.out_dtype,
                               channels_last=config.model.channels_last, progress=progress))
        if not state.best or record["top1_err"] < state.best["top1_err"]:
            state.best = {"top1_err": record["top1_err"], "top5_err": record["top5_err"], "epoch": state.epoch}
    if state.best and not synthetic:  # a synthetic resume of a run with evaluations: no result of its own
        record.update(best_top1_err=state.best["top1_err"], best_top5_err=state.best["top5_err"],
                      best_epoch=state.best["epoch"])
    return record
