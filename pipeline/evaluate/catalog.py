"""The evaluation's tasks and what each measures, without torch: the command line shows them in
its --help and checks --tasks against them before anything heavy is imported."""

# name -> what it measures (the CLI's --help shows these lines)
TASKS = {
    "classify": "top-1 / top-5 error, and each class's top-1 error (in eval.json)",
    "localize": "CAM weakly supervised localization (wsolevaluation): Top-1 Loc, GT-known Loc, MaxBoxAccV2 at "
                "IoU 0.3/0.5/0.7; needs shards with boxes and a global-pool + linear head",
    "occlusion": "top-1 error with a centred square hole set to the mean colour, and with only a centred square "
                 "kept, hole sides swept from 0 to the image size",
    "in-between": "pairs of images (inside each batch, a seeded cycle: the pairs depend on --batch-size and the "
                  "ranks) mixed by Mixup and by CutMix at lambda 0, 0.1, ..., 1: top-1 error against the "
                  "larger-weight label, and how often the top-2 predictions are exactly the two classes",
    "fgsm": "top-1 error under a one-step FGSM attack of --epsilon (pixel units) on the true label",
    "ood": "maximum-softmax-probability detector, the split as in-distribution vs Uniform and Gaussian noise and "
           "each --ood-shards set: TNR at TPR 95%, AUROC, detection accuracy (calculate_log.py's definitions)",
}

# --precision: training's run.mixed_precision values (auto: bf16 where the process computes on a GPU)
PRECISIONS = ("auto", "bf16", "no")

# FGSM's step in pixel units ([0, 1] images): 8 of 255 grey levels.
DEFAULT_EPSILON = 8 / 255


def option_value_problem(*, tasks: tuple[str, ...] | None, precision: str, batch_size: int, epsilon: float,
                         seed: int, num_threads: int) -> str | None:
    """What is wrong with these option values, as the ``error:`` line says it; None when nothing.
    Without torch, so that the command line says it in a fraction of a second (``tasks`` None:
    the default list)."""
    if tasks is not None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            return (f"--tasks: unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}" if unknown
                    else f"--tasks: name at least one of {', '.join(TASKS)}")
    if precision not in PRECISIONS:
        return f"--precision: one of {', '.join(PRECISIONS)}, got {precision!r}"
    if batch_size < 1:
        return f"--batch-size must be >= 1, got {batch_size}"
    if not 0 <= epsilon <= 1:  # 0: the clean error, a sanity check of the attack's plumbing
        return f"--epsilon must be in [0, 1] (pixel units: 8/255 = 0.0314), got {epsilon}"
    if seed < 0:
        return f"--seed must be >= 0, got {seed}"
    if num_threads < 1:
        return f"--num-threads must be >= 1, got {num_threads}"
    return None


def pixel_fraction(text: str) -> float:
    """An --epsilon value: a number, or a fraction as the tables print it (8/255)."""
    top, slash, bottom = text.partition("/")
    if not slash:
        return float(text)
    if float(bottom) == 0:
        raise ValueError(f"{text}: a fraction over 0")  # argparse: "invalid pixel_fraction value"
    return float(top) / float(bottom)
