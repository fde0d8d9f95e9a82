"""The Slurm launchers against a real two-node cluster on localhost (tests/slurm_cluster.py):
`sbatch slurm/imagenet_cutmix.sh` trains with world size 2 across nodes n1 and n2 (gloo on CPU);
USR1 makes it checkpoint and requeue, and the requeued job resumes and ends where an
uninterrupted run ends; `scancel` leaves no process of the job running; the shard-build array
plus merge equals a single-process build."""

from __future__ import annotations

import collections
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from processes import describe, kill_processes, processes_with
from shard_fixtures import make_imagefolder
from shard_readers import manifest, read_with_webdataset
from slurm_cluster import FINAL_STATES, SlurmCluster, install_slurm, job_env
from train_helpers import REPO, small_run_args, without_timings

from pipeline.logs import read_metrics
from shards.cli import main as shards_main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The same small run for the uninterrupted and the interrupted job, so their ends can be compared.
EPOCHS = 16
TRAIN_OVERRIDES = (f"schedule.epochs={EPOCHS}", "run.max_train_steps=5", "loader.batch_size=16",
                   "run.eval_every=4", "run.deterministic=true")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running
    assert not running.leftovers, f"processes left after the jobs: {running.leftovers}"
    assert all(p.poll() is not None for p in running.processes.values()), "a Slurm daemon is still running"


def submit_training(cluster, log_dir: Path, args: list[str], *, nodes: int = 2, options: tuple = (),
                    env: dict | None = None, cwd: Path = REPO) -> int:
    """``sbatch [OPTIONS] slurm/imagenet_cutmix.sh ARGS`` on 2 CPU nodes (GPUs, CPUs and time
    overridden) from the repository; ``small_run_args`` puts ``--config configs/demo.yaml`` first in ARGS."""
    return cluster.sbatch(f"--nodes={nodes}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                          f"--output={log_dir}/%x-%j.out", *options, str(REPO / "slurm" / "imagenet_cutmix.sh"),
                          *args, env=env or job_env(), cwd=cwd)


def exported_only() -> str:
    """``--export=`` naming only what the test's jobs need, as a site that does not export the whole
    environment: srun applies such a list to its tasks too, unless told otherwise."""
    from processes import TAG_VARIABLE

    names = sorted(set(job_env()) | {"SLURM_CONF"})
    return "--export=" + ",".join([*names, f"{TAG_VARIABLE}=slurm-job"])


def wait_for_log(cluster, path: Path, text: str, *, timeout: float = 300) -> None:
    """Wait until the job's log holds ``text`` (the timeout a hang guard)."""
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path.name}:\n{cluster.logs()}"
        time.sleep(0.2)


def head_ports(log: str) -> list[int]:
    """The port of the head's TCP store, as each start of the job says it (``head n1 (ADDR:PORT)``)."""
    return [int(port) for port in re.findall(r"^job \d+ .*, head n1 \(127\.0\.0\.1:(\d+)\)", log, re.M)]


def listening_socket(port: int = 0) -> socket.socket:
    """A server socket listening on every address at ``port`` (0: any free one), as another job's store."""
    server = socket.socket()
    server.bind(("", port))
    server.listen()
    return server


def test_training_runs_with_world_size_two_across_two_nodes(cluster, demo_shards, tmp_path):
    """Submitted exporting a few variables only (the tasks still get what the batch shell set).
    Held until something listens on the port derived from its id (as another job's store would,
    whose id differs by 10,000): the job must take another port (on the derived one the head's
    store could not bind)."""
    out = tmp_path / "run"
    job = submit_training(cluster, tmp_path, small_run_args(demo_shards, out, *TRAIN_OVERRIDES),
                          options=(exported_only(), "--hold"))
    derived = 20000 + job % 10000
    with listening_socket(derived):
        cluster.run(["scontrol", "release", str(job)])
        record = cluster.wait(job, timeout=600)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED", log[-4000:]
    assert record["NodeList"] == "n[1-2]" and record["NumNodes"] == "2"
    assert "2 nodes x 1 process per node" in log and ": 2 processes on cpu, precision no, global batch 32" in log
    [port] = head_ports(log)
    assert port != derived and 20000 <= port < 30000, log[-4000:]
    # Gloo bound to the interface each node reaches the other through (here lo: NodeAddr 127.0.0.1).
    nodes = sorted(line for line in log.splitlines() if line.startswith("node "))
    assert [line.split("processes; ")[1] for line in nodes] == [
        "gloo on lo (the way to n2, 127.0.0.1)", "gloo on lo (the way to n1, 127.0.0.1)"], log[-4000:]
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert {r["world_size"] for r in records} == {2}
    assert {r["val_samples"] for r in records if "val_samples" in r} == {359}
    assert (out / "checkpoints" / f"epoch-{EPOCHS:04d}").is_dir() and (out / "model.safetensors").exists()
    (tmp_path.parent / "uninterrupted.json").write_text(repr(without_timings(records)))


def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(cluster, demo_shards, tmp_path):
    """Submitted with run.resume=none (start over): the first start does; the restart after the
    requeue must continue from the checkpoint all the same, not start over again. The USR1 comes
    as the nodes' tasks start, while the training processes are still importing (and ignore
    USR1 until their handler is in place): the shell's repeats must reach them all the same."""
    out = tmp_path / "run"
    with listening_socket() as probe:  # a free port to pin (MAIN_PROCESS_PORT): both starts use it
        pinned = probe.getsockname()[1]
    job = submit_training(cluster, tmp_path, small_run_args(demo_shards, out, *TRAIN_OVERRIDES, "run.resume=none"),
                          env={**job_env(), "MAIN_PROCESS_PORT": str(pinned)})
    log_path = tmp_path / f"cutmix-{job}.out"
    wait_for_log(cluster, log_path, "node 1 (")
    # What Slurm does at --signal=B:USR1@SECONDS before the time limit: USR1 to the batch shell.
    cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    record = cluster.wait(job, timeout=600)
    log = log_path.read_text()
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "1", log[-4000:]
    assert "checkpoint written: requeueing" in log and "(restart 1)" in log
    assert head_ports(log) == [pinned, pinned], log[-4000:]
    assert "run.resume=none: the earlier run" not in log
    resumed = [line for line in log.splitlines() if line.startswith("resumed from ")]
    assert len(resumed) == 1 and str(out / "checkpoints") in resumed[0], log[-4000:]
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1)), "an epoch was lost or repeated"
    assert {r["world_size"] for r in records} == {2}
    uninterrupted = tmp_path.parent / "uninterrupted.json"
    if uninterrupted.exists():  # the first test ran in this session: same run, same end
        assert repr(without_timings(records)) == uninterrupted.read_text()


def test_usr1_before_the_training_starts_ends_the_job_without_a_requeue(cluster, demo_shards, tmp_path):
    """The time-limit warning before srun (a --time shorter than the --signal lead): neither a
    silent death of the batch shell (bash's default for USR1) nor a requeue that would get the
    same warning at once, again and again; one error line, no training process started."""
    shim = tmp_path / "bin"
    shim.mkdir()
    checking, go = tmp_path / "checking", tmp_path / "go"
    # `python` for the batch shell: its --check waits until the test has sent USR1 (bash runs the
    # trap once the check has ended), at most 60 s.
    (shim / "python").write_text(
        "#!/bin/bash\n"
        f'if [[ "${{2:-}}" == --check ]]; then touch {checking}; for _ in $(seq 600); do '
        f"[[ -e {go} ]] && break; sleep 0.1; done; fi\n"
        f'exec {sys.executable} "$@"\n')
    (shim / "python").chmod(0o755)
    env = dict(job_env())
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    job = cluster.sbatch("--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                         f"--output={tmp_path}/%x-%j.out", str(REPO / "slurm" / "imagenet_cutmix.sh"),
                         *small_run_args(demo_shards, tmp_path / "run"), env=env, cwd=REPO)
    deadline = time.monotonic() + 300
    while not checking.exists():
        assert time.monotonic() < deadline, f"the job never ran its check:\n{cluster.logs()}"
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    time.sleep(3)  # the signal's way through slurmctld and slurmd; bash holds it until the check ends
    go.touch()
    record = cluster.wait(job, timeout=300)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "FAILED" and record["Restarts"] == "0", log
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: USR1 came before the training started ("), log
    assert "not started, not requeued" in errors[0] and "node 0" not in log and "Traceback" not in log


def test_one_node_with_one_process(cluster, demo_shards, tmp_path):
    """The same script on one CPU node: one process (accelerate refuses --multi_gpu for one).
    Submitted from another folder with --chdir to the repository, by a user whose own accelerate
    config asks for multi-GPU with a single GPU id: that config must not reach the job's launcher
    (with it, accelerate refuses to start: "Less than two GPU ids were configured")."""
    home = tmp_path / "hf"
    (home / "accelerate").mkdir(parents=True)
    (home / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\ngpu_ids: '0'\nnum_machines: 1\n"
        "num_processes: 2\nmixed_precision: fp16\n")
    out = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Without run.progress=false: the script turns the bar off, whose redraws garbled the log.
    args = [a for a in small_run_args(demo_shards, out, "schedule.epochs=2", "run.max_train_steps=3",
                                      "loader.batch_size=16") if a != "run.progress=false"]
    job = submit_training(cluster, tmp_path, args, nodes=1, options=(f"--chdir={REPO}",),
                          env={**job_env(), "HF_HOME": str(home)}, cwd=elsewhere)
    record = cluster.wait(job, timeout=600)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED", log[-4000:]
    assert "1 node x 1 process per node" in log
    assert "\r" not in log and "it/s" not in log and "epoch 1/2: loss " in log, log[-4000:]
    assert "training resnet10t on 10 classes of " in log and ": 1 process on cpu, precision no, global batch 16" in log
    assert [(r["epoch"], r["world_size"]) for r in read_metrics(out)] == [(1, 1), (2, 1)]


def test_a_config_mistake_is_one_line_before_any_node_starts(cluster, demo_shards, tmp_path):
    job = submit_training(cluster, tmp_path, small_run_args(demo_shards, tmp_path / "run", "schedule.epoch=3"))
    record = cluster.wait(job, timeout=300)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "FAILED" and record["ExitCode"].startswith("2:"), log
    assert [line for line in log.splitlines() if line.startswith("error: ")] == [
        "error: unknown config key schedule.epoch; schedule has ['decay_factor', 'epochs', 'milestones', 'min_lr', "
        "'name', 'warmup_epochs', 'warmup_start_factor']"], log
    assert "Traceback" not in log and "node 0" not in log  # srun never started


def test_a_failure_inside_the_job_is_said_again_last(cluster, demo_shards, tmp_path):
    """A mistake only the training processes find (a batch larger than a rank's share of the 359
    val digits at world size 2, not at the check's 1: the check before srun passes): the log ends
    with one error line that repeats theirs, after torchrun's report of the failed ranks. The log's
    folder has a space in its name (scontrol prints that path unquoted)."""
    logs = tmp_path / "job logs"
    logs.mkdir()
    job = submit_training(cluster, logs, small_run_args(demo_shards, tmp_path / "run", "loader.batch_size=200"))
    record = cluster.wait(job, timeout=300)
    log = (logs / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "FAILED", log[-4000:]
    lines = [line for line in log.splitlines() if line.strip()]
    theirs = next(line for line in lines
                  if line.startswith("error: loader.batch_size=200: batch_size 200 is larger than a rank's share "
                                     "of split 'val'"))
    assert "node 0" in log and lines.index(theirs) < len(lines) - 1  # srun ran; the training said it first
    assert re.fullmatch(r"error: the training ended with exit status [1-9]\d*: " + re.escape(theirs[len("error: "):]),
                        lines[-1]), log[-4000:]


@pytest.mark.parametrize("setting, message", [
    # A job whose shell has not the project's environment (a cluster submitting with --export=NONE):
    # `python` is an interpreter without the venv's packages (set up below).
    ({"PATH": "python without packages"}, "error: the job's python ("),
    # A GPU count the script cannot read (every node must run the same number of processes).
    ({"SLURM_GPUS_ON_NODE": "4(x2)"}, "error: GPUs per node: cannot read a count from SLURM_GPUS_ON_NODE=4(x2)"),
    # A pinned rendezvous port that is no port, or that something on the head node listens on.
    ({"MAIN_PROCESS_PORT": "65536"}, "error: MAIN_PROCESS_PORT=65536: a port number 1-65535 is needed"),
    ({"MAIN_PROCESS_PORT": "taken"}, "error: MAIN_PROCESS_PORT={port}: the port is taken on the head node n1"),
])
def test_a_job_it_cannot_start_is_one_line_before_any_node_starts(cluster, demo_shards, tmp_path, setting, message):
    if setting.get("PATH") == "python without packages":
        shim = tmp_path / "bin"
        shim.mkdir()
        # The venv's base interpreter, isolated from every site-packages folder.
        (shim / "python").write_text(f'#!/bin/sh\nexec {Path(sys.base_prefix) / "bin" / "python3"} -I -S "$@"\n')
        (shim / "python").chmod(0o755)
        slurm_bin = Path(shutil.which("sbatch", path=cluster.env.get("PATH"))).parent
        setting = {"PATH": os.pathsep.join([str(shim), str(slurm_bin), "/usr/bin", "/bin"])}
    with listening_socket() as taken:
        if setting.get("MAIN_PROCESS_PORT") == "taken":
            setting = {"MAIN_PROCESS_PORT": str(taken.getsockname()[1])}
            message = message.format(port=setting["MAIN_PROCESS_PORT"])
        job = submit_training(cluster, tmp_path, small_run_args(demo_shards, tmp_path / "run"),
                              env={**job_env(), **setting})
        record = cluster.wait(job, timeout=300)
    log = (tmp_path / f"cutmix-{job}.out").read_text()
    assert record["JobState"] == "FAILED" and record["ExitCode"].startswith("2:"), log
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(message) and "node 0" not in log, log


def test_a_config_option_without_its_file_is_one_line(tmp_path):
    """`sbatch slurm/imagenet_cutmix.sh --config` (the file forgotten): the job's shell, as Slurm
    starts it, says so in one line (bash's `set -u` had said `$2: unbound variable`)."""
    from processes import run_process

    env = {**job_env(), "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO)}
    done = run_process(["bash", str(REPO / "slurm" / "imagenet_cutmix.sh"), "--config"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.splitlines() == ["error: --config needs a file: --config FILE or "
                                                                 "--config=FILE"], done.stderr


def test_the_script_run_without_sbatch_says_so(tmp_path):
    from processes import run_process

    env = {k: v for k, v in job_env().items()}
    done = run_process(["bash", str(REPO / "slurm" / "imagenet_cutmix.sh")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: submit this script with sbatch") and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("args, setting, message", [
    (["--split", "train", "SRC", "OUT"], {}, "error: SRC and OUT come first"),  # OUT would have been "train"
    (["SRC", "OUT"], {}, "error: --split is needed"),
    (["/nonexistent/src", "OUT", "--split=train"], {}, "error: SRC /nonexistent/src: no such file or folder"),
    ([".", "OUT", "--split=train"], {"PARTS": "0"}, "error: PARTS=0: a whole number >= 1 is needed"),
    ([".", "OUT", "--split=train"], {"PARTS": "00"}, "error: PARTS=00: a whole number >= 1 is needed"),
    # 08 is 8 (was refused as no whole number): it passes to the build's own checks.
    ([".", "../OUT", "--split=train"], {"PARTS": "08"}, "error: SRC .: no files in it or its class folders"),
    ([".", "OUT", "--split=train"], {"CPUS_PER_TASK": "4x"}, "error: CPUS_PER_TASK=4x: a whole number >= 1"),
    # The build's own checks (python -m shards build --dry-run), before anything is submitted:
    ([".", "../OUT", "--split=train", "--shard-size=1kB"], {}, "error: --shard-size must be at least 64kB"),
    ([".", "../OUT", "--split=train"], {}, "error: SRC .: no files in it or its class folders"),
    ([".", "../OUT", "--split=val", "--labels", "LOC_val_solution.csv"], {},
     "error: --labels LOC_val_solution.csv: no such file or folder"),
])
def test_the_array_build_refuses_bad_arguments_before_submitting(tmp_path, args, setting, message):
    from processes import run_process

    done = run_process(["bash", str(REPO / "slurm" / "build_shards.sh"), *args], cwd=tmp_path,
                       env={**job_env(), **setting}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1


def test_the_array_build_refuses_an_out_holding_a_build_before_submitting(tmp_path):
    from processes import run_process

    make_imagefolder(tmp_path / "src", num_classes=2, per_class=3)
    out = tmp_path / "out"
    assert shards_main(["build", str(tmp_path / "src"), str(out), "--split", "train", "--quiet"]) == 0
    done = run_process(["bash", str(REPO / "slurm" / "build_shards.sh"), str(tmp_path / "src"), str(out), "--split",
                        "train"], cwd=tmp_path, env=job_env(), capture_output=True, text=True, timeout=120)
    # Without the check the script would have gone on to sbatch (no cluster here: another error).
    assert done.returncode == 2 and done.stderr == (
        f"error: {out} already holds a complete train build (train.json): pass --overwrite to replace it\n")


def test_a_merge_job_not_submitted_gives_a_merge_command_that_pastes(tmp_path):
    """sbatch takes the array but refuses the merge job (a fake sbatch, no cluster): the error line
    names the merge to run by hand, and the shell reads that command back as the merge of OUT, a
    folder with a space in its name (it was printed unquoted)."""
    import shlex

    from processes import run_process

    make_imagefolder(tmp_path / "src", num_classes=2, per_class=3)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The array's submission answers a job id, the merge's (--dependency) fails as a full queue would.
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncase "$*" in *--dependency*) echo "sbatch: error: queue full" >&2; '
                                    'exit 1;; esac\necho 41\n')
    (bin_dir / "sbatch").chmod(0o755)
    out = tmp_path / "shards out"
    env = job_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    done = run_process(["bash", str(REPO / "slurm" / "build_shards.sh"), str(tmp_path / "src"), str(out), "--split",
                        "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "submitted build array 41 (8 tasks)" in done.stdout, done.stdout + done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: the merge job was not submitted"), done.stderr
    command = last.split("merge with `", 1)[1].rstrip("`")
    assert shlex.split(command) == ["python", "-m", "shards", "merge", str(out), "--split", "train"], command


def test_scancel_checkpoints_and_leaves_no_process_of_the_job(cluster, demo_shards, tmp_path):
    """The SIGTERM of scancel (a preemption, a requeue) reached only each task's bash, which died of
    it, and Slurm SIGKILLed the rest of the step: no checkpoint (walkthrough, strace). The tasks
    pass it on to the training processes, the batch shell waits for srun, which carries their
    last lines into the log."""
    # Far more epochs than it gets to: the job is cancelled while it trains (epochs of 40 steps:
    # the signal lands in the second one).
    out = tmp_path / "run"
    job = submit_training(cluster, tmp_path, small_run_args(demo_shards, out, "schedule.epochs=1000",
                                                            "run.max_train_steps=40", "loader.batch_size=16"))
    log_path = tmp_path / f"cutmix-{job}.out"
    wait_for_log(cluster, log_path, "epoch 1/")
    # Batch shell, srun, each task's bash, `accelerate launch` and the ranks (SLURM_CONF, SLURM_JOB_ID).
    running = cluster.job_processes(job)
    ranks = set(running) & set(processes_with("LOCAL_RANK", "0"))  # one training process per node
    assert len(ranks) == 2, "\n".join(map(describe, running))
    cluster.run(["scancel", str(job)])
    assert cluster.wait(job, timeout=120)["JobState"] == "CANCELLED"
    cluster.wait_until_idle(timeout=120)
    deadline = time.monotonic() + 60  # hang guard: a survivor would run on for good
    while cluster.job_processes(job) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = cluster.job_processes(job)
    described = [describe(pid) for pid in left]
    kill_processes(left)
    assert not left, "processes of the cancelled job still ran:\n" + "\n".join(described) + "\n" + \
        log_path.read_text()[-3000:]
    log = log_path.read_text()
    # Both ranks; one whose signal came after a stop the other's had started: "(already under way)".
    assert log.count("SIGTERM received: stopping") == 2, log[-3000:]
    stopped = re.findall(r"^stopped with a checkpoint: the same command resumes from (\S+)$", log, re.M)
    assert len(stopped) == 1 and Path(stopped[0]).parent == out / "checkpoints", log[-3000:]
    # Complete (the signal may land in the first epoch's checkpoint save: then it is that one).
    assert (Path(stopped[0]) / "COMPLETE").is_file()


@pytest.mark.parametrize("commands", [
    [["--signal=TERM", "--batch"]],  # a TERM to the batch shell alone
    [["--signal=USR1", "--batch"], []],  # the time-limit warning, then scancel
], ids=["term-to-the-batch-shell", "usr1-then-scancel"])
def test_a_sigterm_checkpoints_and_the_job_never_requeues_itself(cluster, demo_shards, tmp_path, commands):
    """Once the batch shell trapped TERM: a TERM to it alone was ignored while srun ran (the job
    trained on), and a scancel after a USR1 had the script requeue the job scancel had ended, which
    then trained again (review). The training stops with a checkpoint; the job ends, not requeued."""
    out = tmp_path / "run"
    job = submit_training(cluster, tmp_path, small_run_args(demo_shards, out, "schedule.epochs=1000",
                                                            "run.max_train_steps=40", "loader.batch_size=16"))
    log_path = tmp_path / f"cutmix-{job}.out"
    wait_for_log(cluster, log_path, "epoch 1/")
    for options in commands:
        cluster.run(["scancel", *options, str(job)])
        time.sleep(1)
    cluster.wait(job, timeout=180)
    cluster.wait_until_idle(timeout=120)
    time.sleep(3)  # a requeue by the script would show by now (the test cluster starts a requeued job at once)
    record = cluster.job(job)
    log = log_path.read_text()
    assert record["JobState"] in FINAL_STATES and record["Restarts"] == "0", (record["JobState"], log[-3000:])
    assert "SIGTERM: asking the training processes to checkpoint; the job will not requeue itself" in log
    assert "requeueing" not in log and "(restart 1)" not in log, log[-3000:]
    stopped = re.findall(r"^stopped with a checkpoint: the same command resumes from (\S+)$", log, re.M)
    assert len(stopped) == 1 and (Path(stopped[0]) / "COMPLETE").is_file(), log[-3000:]


def test_shard_array_and_merge_equal_a_single_process_build(cluster, tmp_path):
    make_imagefolder(tmp_path / "src", num_classes=12, per_class=15)
    single = tmp_path / "single"
    assert shards_main(["build", str(tmp_path / "src"), str(single), "--split", "train", "--quiet",
                        "--shard-size", "100kB", "--workers", "1"]) == 0
    parted = tmp_path / "parted"
    submitted = cluster.run(
        ["bash", str(REPO / "slurm" / "build_shards.sh"), str(tmp_path / "src"), str(parted), "--split", "train",
         "--shard-size", "100kB"],
        env={**cluster.env, **job_env(), "PARTS": "02", "CPUS_PER_TASK": "1", "TIME": "10",
             "LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path)
    array_id, merge_id = map(int, submitted.stdout.split()[-2:])
    merge = cluster.wait(merge_id, timeout=300)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.out")))
    assert merge["JobState"] == "COMPLETED", logs
    assert sorted(p.name for p in (tmp_path / "logs").glob("shards-build-*.out")) == [
        f"shards-build-{array_id}_0.out", f"shards-build-{array_id}_1.out"]
    ours, reference = manifest(parted), manifest(single)
    assert ours["classes"] == reference["classes"]
    assert ours["totals"]["samples"] == reference["totals"]["samples"] == 12 * 15

    def content(samples):
        return collections.Counter((s["jpg"], s["cls"], s["json"]["source"]) for s in samples)

    parted_samples = read_with_webdataset(parted)
    assert len({s["key"] for s in parted_samples}) == len(parted_samples), "a key is doubled"
    assert content(parted_samples) == content(read_with_webdataset(single))
