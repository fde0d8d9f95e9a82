"""Two builds of one split into one OUT at once: the second is refused, naming the first, and a
killed build can still be resumed. Real processes: the lock is the kernel's, held per process."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import run_process
from shard_fixtures import jpeg_bytes, wnid
from shard_readers import manifest

REPO = Path(__file__).resolve().parents[1]
# Re-encoding 480x360 photos one at a time: a build of several seconds, long enough for a second
# command to start while the first runs.
FLAGS = ["--split", "train", "--quiet", "--workers", "1", "--resize-short", "200", "--shard-size", "64kB"]
CLASSES, PER_CLASS = 8, 40


def photo_tree(root: Path) -> Path:
    for c in range(CLASSES):
        (root / wnid(c)).mkdir(parents=True)
        for n in range(PER_CLASS):
            (root / wnid(c) / f"{n}.JPEG").write_bytes(jpeg_bytes(c * 1000 + n, size=(480, 360)))
    return root


def build_command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shards", "build", str(src), str(out), *FLAGS, *extra]


def refused_by(stderr: str, pid: int) -> bool:
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "another process" in lines[0] \
        and f"pid {pid} " in lines[0]


def files_in(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, "the build ended before it could be caught running"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_of_two_identical_builds_started_at_once_the_second_is_refused(tmp_path, start_process):
    src, out = photo_tree(tmp_path / "src"), tmp_path / "out"
    builds = [start_process(build_command(src, out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
    results = [(process.pid, *process.communicate(timeout=600), process.returncode) for process in builds]
    [(winner, _, winner_err, _)] = [r for r in results if r[3] == 0]
    [(_, loser_out, loser_err, code)] = [r for r in results if r[3] != 0]
    assert code == 2 and refused_by(loser_err, winner), (loser_out, loser_err, winner_err)
    assert "Traceback" not in loser_out + loser_err + winner_err
    assert manifest(out, "train")["totals"]["samples"] == CLASSES * PER_CLASS
    # The winner's shards and manifest, and no lock or build state left behind.
    assert [name for name in files_in(out) if not name.startswith("train-")] == ["train.json"]


@pytest.mark.slow
def test_a_running_build_refuses_resume_and_a_killed_one_resumes(tmp_path, start_process):
    src, out = photo_tree(tmp_path / "src"), tmp_path / "out"
    first = start_process(build_command(src, out), cwd=REPO)
    wait_for(out / ".build" / "train" / "plan.json", first)
    for extra in ([], ["--resume"]):  # --resume, the advice for an unfinished build, must not join it
        again = run_process(build_command(src, out, *extra), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and refused_by(again.stderr, first.pid), (extra, again.stderr)
    assert first.poll() is None, "the first build ended before the others were refused: nothing was tested"

    first.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process
    first.wait(timeout=60)
    assert not (out / "train.json").exists()
    resumed = run_process(build_command(src, out, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert manifest(out, "train")["totals"]["samples"] == CLASSES * PER_CLASS
    assert [name for name in files_in(out) if not name.startswith("train-")] == ["train.json"]


def test_an_out_where_no_folder_can_be_made_says_so(tmp_path, capsys):
    # Under /proc no folder can be made, whoever runs it: "could not take the build lock (100
    # attempts)" did not say what was wrong.
    from shards.cli import main

    (tmp_path / "src" / wnid(0)).mkdir(parents=True)
    (tmp_path / "src" / wnid(0) / "0.JPEG").write_bytes(jpeg_bytes(0))
    out = Path("/proc/cutmix-test-no-such-folder")
    assert main(["build", str(tmp_path / "src"), str(out), "--split", "train", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: OUT {out}: cannot create {out}/.build/train.part-0000.lock (No such "
                                       "file or directory, 100 attempts)\n")
