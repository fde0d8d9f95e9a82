"""The benchmark scripts refuse a bad command-line value before any work, with argparse's one-line
error (usage, then ``error: ...`` naming the option; exit status 2). Each of these values gave a
traceback after minutes of set-up (``--images 0``: ZeroDivisionError, ``--repeats 0``:
StatisticsError, ``--batch-size 3``: timm's AssertionError) or a run that reported nothing
(``--sections bogus``, ``--runs 0``). Nothing may be made first: the temporary folder (and
BENCH_DIR) stay empty, no results file is written, and the functions that build or time are
replaced by ones that fail the test if called. Also: bench_shards' start-up line says n/a instead
of negative figures when the build took no longer than the start-up alone."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_compile_start  # noqa: E402
import bench_ddp_soak  # noqa: E402
import bench_loader  # noqa: E402
import bench_mix  # noqa: E402
import bench_mix_host  # noqa: E402
import bench_shards  # noqa: E402
import bench_train  # noqa: E402


def _work_started(*args, **kwargs):
    raise AssertionError("the bench started its work before refusing the arguments")


# Per script: the functions that start its work (building images or shards, timing, the header).
WORK = {
    "bench_shards": [(bench_shards, "report"), (bench_shards, "make_photos")],
    "bench_mix": [(bench_mix, "run_cpu"), (bench_mix, "run_cuda"), (bench_mix, "publish")],
    "bench_mix_host": [(bench_mix_host, "run_cpu"), (bench_mix_host, "run_cuda"), (bench_mix_host, "versions"),
                       (bench_mix_host, "publish")],
    "bench_train": [(bench_train, "build"), (bench_train, "steps_per_second")],
    "bench_loader": [(bench_loader, "build"), (bench_loader, "started_loader")],
    "bench_ddp_soak": [(bench_ddp_soak, "machine"), (bench_ddp_soak, "launch_once"),
                       ("shards.demo", "build_demo_shards")],
    "bench_compile_start": [(bench_compile_start, "train"), (bench_compile_start, "publish")],
}
MAINS = {"bench_shards": bench_shards.main, "bench_mix": bench_mix.main, "bench_mix_host": bench_mix_host.main,
         "bench_train": bench_train.main, "bench_loader": bench_loader.main, "bench_ddp_soak": bench_ddp_soak.main,
         "bench_compile_start": bench_compile_start.main}

# (script, arguments, the option the error line names, a phrase it must hold)
REFUSED = [
    ("bench_shards", ["--images", "0"], "--images", ">= 1"),
    ("bench_shards", ["--images", "-5"], "--images", ">= 1"),
    ("bench_shards", ["--repeats", "0"], "--repeats", ">= 1"),
    ("bench_shards", ["--sections", "bogus"], "--sections", "passthrough,reencode,check,writer"),
    ("bench_shards", ["--sections", "passthrough,"], "--sections", "passthrough,reencode,check,writer"),
    ("bench_mix", ["--batch-size", "0"], "--batch-size", ">= 2"),
    ("bench_mix", ["--batch-size", "1"], "--batch-size", "partner"),
    ("bench_mix", ["--batch-size", "3"], "--batch-size", "even"),
    ("bench_mix", ["--size", "-3"], "--size", ">= 1"),
    ("bench_mix", ["--size", "0"], "--size", ">= 1"),
    ("bench_mix", ["--repeats", "0"], "--repeats", ">= 1"),
    ("bench_mix", ["--threads", "0"], "--threads", ">= 1"),
    ("bench_mix", ["--device", "cuda", "--batch-size", "1"], "--batch-size", "partner"),
    ("bench_mix_host", ["--rounds", "0"], "--rounds", ">= 1"),
    ("bench_mix_host", ["--batch-size", "0"], "--batch-size", ">= 1"),
    ("bench_mix_host", ["--batch-size", "1"], "--batch-size", "needs a partner"),
    ("bench_mix_host", ["--batch-size", "3"], "--batch-size", "even batch"),
    ("bench_mix_host", ["--size", "0"], "--size", ">= 1"),
    ("bench_mix_host", ["--modes", "cutmix,bogus"], "--modes", "cutmix,mixup"),
    ("bench_mix_host", ["--calls", "0"], "--calls", "LOOKAHEAD"),
    ("bench_mix_host", ["--calls", "4"], "--calls", "LOOKAHEAD"),
    ("bench_train", ["--steps", "0"], "--steps", ">= 1"),
    ("bench_train", ["--images", "-1"], "--images", ">= 32"),
    ("bench_train", ["--images", "19", "--batch-size", "8"], "--images", "20 classes"),
    ("bench_train", ["--images", "31"], "--images", "--batch-size 32"),
    ("bench_train", ["--image-size", "0"], "--image-size", ">= 1"),
    ("bench_train", ["--batch-size", "0"], "--batch-size", ">= 2"),
    ("bench_train", ["--batch-size", "1"], "--batch-size", ">= 2"),  # CutMix's partner: after the shard build
    ("bench_train", ["--model", "bogus"], "--model", "timm has no model 'bogus'"),  # a traceback, after it
    ("bench_train", ["--device", "gpu"], "argument --device", "invalid choice"),  # anything but cpu ran on the CPU
    ("bench_loader", ["--device", "bogus"], "argument --device", "invalid choice"),  # a traceback after the build
    ("bench_train", ["--threads", "0"], "--threads", ">= 1"),
    ("bench_train", ["--warmup", "-1"], "--warmup", ">= 0"),
    ("bench_train", ["--backends", "synthetic,bogus"], "--backends", "synthetic"),
    ("bench_loader", ["--images", "0"], "--images", ">= 96"),
    ("bench_loader", ["--images", "95"], "--images", "3 full batches"),
    ("bench_loader", ["--images", "20", "--batch-size", "8"], "--images", ">= 24"),
    ("bench_loader", ["--batch-size", "0"], "--batch-size", ">= 1"),
    ("bench_loader", ["--threads", "0"], "--threads", ">= 1"),
    ("bench_loader", ["--epochs", "0"], "--epochs", ">= 1"),
    ("bench_ddp_soak", ["--runs", "0"], "--runs", ">= 1"),
    ("bench_ddp_soak", ["--steps", "0"], "--steps", ">= 1"),
    ("bench_ddp_soak", ["--timeout", "0"], "--timeout", "> 0"),
    ("bench_ddp_soak", ["--timeout", "-1"], "--timeout", "> 0"),
    ("bench_ddp_soak", ["--timeout", "nan"], "--timeout", "> 0"),
    ("bench_ddp_soak", ["--timeout", "inf"], "--timeout", "finite"),
    ("bench_compile_start", ["--epochs", "0"], "--epochs", ">= 1"),
    ("bench_compile_start", ["--steps", "0"], "--steps", ">= 1"),
    ("bench_compile_start", ["--batch-size", "1"], "--batch-size", ">= 2"),
]


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """An empty temporary folder (tempfile's and BENCH_DIR) and the work functions replaced by
    failing ones; yields the folder, to check that it is still empty."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.setenv("BENCH_DIR", str(temporary))
    for functions in WORK.values():
        for module, name in functions:
            if isinstance(module, str):
                monkeypatch.setattr(f"{module}.{name}", _work_started)
            else:
                monkeypatch.setattr(module, name, _work_started)
    yield temporary


@pytest.mark.parametrize("script, argv, option, phrase", REFUSED,
                         ids=[f"{script} {' '.join(argv)}" for script, argv, _, _ in REFUSED])
def test_a_bad_value_is_refused_before_any_work(script, argv, option, phrase, no_work, tmp_path, capsys):
    out = tmp_path / "results.txt"
    extra = ["--out", str(out)] if script in ("bench_mix", "bench_mix_host", "bench_ddp_soak",
                                              "bench_compile_start") else []
    with pytest.raises(SystemExit) as exited:
        MAINS[script](argv + extra)
    captured = capsys.readouterr()
    assert exited.value.code == 2, captured.err
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1, captured.err
    assert f"error: {option}" in errors[0] and phrase in errors[0], errors[0]
    assert captured.err.startswith("usage: "), captured.err
    assert captured.out == ""  # not even the run's header
    assert list(no_work.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("kind", ["folder", "under a file", "in /proc", "a FIFO"])
@pytest.mark.parametrize("script", ["bench_mix", "bench_mix_host", "bench_ddp_soak", "bench_compile_start",
                                    "compile_drift"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(script, kind, no_work, tmp_path, capsys,
                                                                   monkeypatch):
    """It was found when the results were written: a traceback after all the work (walkthrough)."""
    if kind == "folder":
        out = tmp_path / "results"
        out.mkdir()
        expected = f"error: --out {out}: {out} is a folder; give a file"
    elif kind == "under a file":
        (tmp_path / "file").write_text("a file\n")
        out = tmp_path / "file" / "results.txt"
        expected = f"error: --out {out}: {tmp_path / 'file'} is a file, not a folder"
    elif kind == "a FIFO":  # opened to be tried, it blocked for a reader (reviewer)
        out = tmp_path / "fifo"
        os.mkfifo(out)
        expected = f"error: --out {out}: {out} is not a regular file; give a file"
    else:  # no file can be made there, for root either (whom os.access tells yes: the write failed at the end)
        out = Path("/proc/cutmix-bench-results.txt")
        expected = f"error: --out {out}: no file can be made in /proc ("
    with pytest.raises(SystemExit) as exited:
        if script == "compile_drift":  # its parse_args reads sys.argv
            import compile_drift

            monkeypatch.setattr(sys, "argv", ["compile_drift.py", "--out", str(out)])
            compile_drift.parse_args()
        else:
            MAINS[script](["--out", str(out)])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""
    last = captured.err.splitlines()[-1]
    assert last.endswith(expected) if kind != "in /proc" else expected in last, captured.err
    assert list(no_work.iterdir()) == []
    if kind == "folder":
        assert list(out.iterdir()) == []
    elif kind == "under a file":
        assert (tmp_path / "file").read_text() == "a file\n"
    elif kind == "a FIFO":
        assert out.is_fifo()
    else:
        assert not out.exists()


# Where torch sees no CUDA device (tested where none is): torch's "Found no NVIDIA driver" or DALI's
# failed assert came as a traceback, bench_train ran on the CPU and called it a GPU comparison.
NO_CUDA = [("bench_train", ["--device", "cuda"]), ("bench_loader", ["--device", "cuda"]),
           ("bench_mix", ["--device", "cuda"]), ("bench_mix_host", ["--device", "cuda"])]


@pytest.mark.parametrize("script, argv", NO_CUDA, ids=[script for script, _ in NO_CUDA])
def test_cuda_without_a_cuda_device_is_refused_before_any_work(script, argv, no_work, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results.txt"
    extra = ["--out", str(out)] if script in ("bench_mix", "bench_mix_host") else []
    with pytest.raises(SystemExit) as exited:
        MAINS[script](argv + extra)
    captured = capsys.readouterr()
    assert exited.value.code == 2 and captured.out == ""
    assert captured.err.splitlines()[-1].endswith("error: --device cuda: torch sees no CUDA device on this machine")
    assert list(no_work.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("parse, argv", [
    (bench_mix.parse_args, []),
    (bench_mix.parse_args, ["--device", "cuda", "--batch-size", "3"]),  # no timm on CUDA: an odd batch runs
    (bench_mix_host.parse_args, []),
    (bench_mix_host.parse_args, ["--batch-size", "1", "--modes", "cutout,cutout_elem"]),  # cutout has no partner
    (bench_mix_host.parse_args, ["--batch-size", "3", "--modes", "cutmix,mixup"]),  # a permutation partner
], ids=["mix defaults", "mix cuda odd batch", "host defaults", "host cutout batch 1", "host odd batch"])
def test_values_that_run_are_accepted(parse, argv, no_work, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA cases, on any machine
    parse(argv)
    assert list(no_work.iterdir()) == []


STARTUP_LINE = "  fixed start-up (a build of 20 images, 2 workers) {:6.2f} s; without it the 2-worker build runs at "


@pytest.mark.parametrize("startup, build", [(0.40, 0.30), (0.35, 0.35)])
def test_a_build_no_longer_than_the_startup_has_no_steady_rate(startup, build):
    """A small run (--images 60) printed "runs at -66 MB/s: ratio -0.43, durable ratio -0.58"."""
    line = bench_shards.startup_line(startup, build, total_mb=4.0, base=0.01, durable=0.02)
    assert line == STARTUP_LINE.format(startup) + "n/a (the run is shorter than the start-up; use more --images)"


def test_a_longer_build_reports_its_rate_without_the_startup():
    line = bench_shards.startup_line(0.40, 2.40, total_mb=100.0, base=1.0, durable=2.0)
    assert line == STARTUP_LINE.format(0.40) + "50 MB/s: ratio 0.50, durable ratio 1.00"


def test_the_startup_line_counts_the_images_a_small_run_had():
    # --images 12 timed a start-up build of its 12 images and called it "a build of 20 images".
    line = bench_shards.startup_line(0.40, 0.30, total_mb=4.0, base=0.01, durable=0.02, images=12)
    assert line.startswith("  fixed start-up (a build of 12 images, 2 workers)   0.40 s;")
