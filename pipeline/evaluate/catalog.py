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
