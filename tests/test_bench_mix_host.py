"""bench/bench_mix_host.py runs end to end on the CPU (a small batch, the new code only) and writes
the table it prints: one row per mode with its median, minimum and worst step, the goal line, and
the header naming the command. No timing is judged here (the figures are the bench's to report)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from processes import run_process

REPO = Path(__file__).resolve().parents[1]
MODES = ["cutmix", "cutmix_elem", "cutout+mixup", "feature_cutmix"]


def test_the_host_bench_prints_and_appends_one_row_per_mode(tmp_path):
    out = tmp_path / "host.txt"
    out.write_text("an earlier run\n")
    command = [sys.executable, "bench/bench_mix_host.py", "--batch-size", "8", "--size", "32", "--rounds", "2",
               "--calls", "16", "--modes", ",".join(MODES), "--baseline", "none", "--out", str(out)]
    done = run_process(command, timeout=300, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("an earlier run\n") and text.endswith(done.stdout + "\n")  # appended, as printed
    # The command that gives this table again, the subset of modes included.
    assert (f"# python bench/bench_mix_host.py --device cpu --batch-size 8 --size 32 --rounds 2 --calls 16 --modes "
            f"{','.join(MODES)} --baseline none\n") in text
    number = r"\d+\.\d us"
    for mode in MODES:
        assert re.search(rf"^{re.escape(mode)} +{number} +{number} +{number}$", done.stdout, re.MULTILINE), mode
    assert re.search(r"^new: \d+ of 4 modes within the goal of <= 50 us per step", done.stdout, re.MULTILINE)
    assert "the step in which the sampler draws the next 16 steps at once" in done.stdout


def test_calls_that_are_not_whole_lookahead_windows_are_refused(tmp_path):
    """--calls 4 held one window's expensive draw in 4 steps and reported 165-227 us per step where
    16 gave 52 (a walkthrough): refused, naming the window, before any timing or file."""
    out = tmp_path / "host.txt"
    command = [sys.executable, "bench/bench_mix_host.py", "--calls", "4", "--baseline", "none", "--out", str(out)]
    done = run_process(command, timeout=300, cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == (
        "error: --calls 4: a positive multiple of the sampler's LOOKAHEAD (16), so that each round holds whole "
        "windows of draws")
    assert not out.exists()


def test_without_git_history_the_new_code_alone_is_timed_and_the_header_says_so(tmp_path):
    """A copy of the tree without .git (what the GPU machine gets): no old code to read, so the
    bench says so in a note and its results header records --baseline none, not the commit it could
    not time."""
    import shutil

    tree = tmp_path / "tree"
    for name in ("bench", "pipeline", "shards"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    out = tmp_path / "host.txt"
    command = [sys.executable, "bench/bench_mix_host.py", "--batch-size", "8", "--size", "32", "--rounds", "1",
               "--calls", "16", "--modes", "cutmix", "--out", str(out)]
    # GIT_CEILING_DIRECTORIES: git must not find a repository above the copy (tmp_path may sit in one).
    done = run_process(command, timeout=300, cwd=tree, capture_output=True, text=True,
                       env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note: no git history here to read the old code" in done.stderr
    header = out.read_text().splitlines()[0]
    assert header.endswith("--calls 16 --modes cutmix --baseline none"), header
    assert re.search(r"^cutmix +\d+\.\d us", done.stdout, re.MULTILINE) and "old median" not in done.stdout


def test_the_old_code_of_any_commit_loads_with_every_module_it_had():
    """--baseline read a fixed list of pipeline/mix files, so a commit newer than the default one
    (its core.py imports mix/color.py) failed with a traceback (found using it). Now every module
    of pipeline/mix at that commit comes along: HEAD's, compared with the tree's file names."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_mix_host

    if not bench_mix_host.has_git_history():  # a copy of the tree without .git (the GPU machine's)
        pytest.skip("no git history in this copy of the tree")
    script = ("import sys; sys.path.insert(0, 'bench'); import bench_mix_host\n"
              "package = bench_mix_host.load_baseline('HEAD')\n"
              "import pathlib; print(sorted(p.name for p in pathlib.Path(package.__file__).parent.glob('*.py')))")
    done = run_process([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tracked = run_process(["git", "ls-tree", "--name-only", "HEAD:pipeline/mix"], cwd=REPO, capture_output=True,
                          text=True, timeout=60).stdout.split()
    assert done.stdout.strip() == str(sorted(name for name in tracked if name.endswith(".py")))
    assert "color.py" in done.stdout
