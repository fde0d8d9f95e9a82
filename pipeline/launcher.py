"""A rank ends when the launcher that started it ends, however the launcher ends.

`accelerate launch` (torchrun's agent) starts every rank in a session of its own, so a SIGKILL of
the launcher (``kill -9``, the OOM killer, a terminal that closes) reaches no rank: the ranks are
re-parented to init and run on, holding the run folder's lock, the GPU and a CPU core each, until
someone finds and kills them. Its one-process launcher does the same (a plain child). A launcher
that is stopped politely (SIGTERM, Ctrl-C) stops its ranks itself; this is for the other ways.

Linux has the mechanism: ``prctl(PR_SET_PDEATHSIG, sig)`` asks the kernel to send ``sig`` to this
process when its parent dies. Only where a launcher is the parent: a run started from a shell must
outlive that shell under ``nohup``. The signal is SIGKILL, as the launcher's own end was abrupt:
SIGTERM would stop the run gracefully with exit 0 and a checkpoint, which no one would see (the
launcher is gone) and which, on a launcher left in a bad state, could make a silent early stop look
like a finished one. The last checkpoint stays valid (pipeline/checkpoint.py writes whole ones).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Mapping

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# torchrun's agent sets it in every rank's environment (accelerate launch --multi_gpu, multi-node).
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"
# accelerate's one-process launcher sets it in its child's environment; the parent's command line
# confirms (the variable alone might be a user's export, inherited by a run started from a shell).
ACCELERATE_VARIABLE = "ACCELERATE_USE_CPU"


def started_by_launcher(environ: Mapping[str, str], *, parent_command: bytes) -> bool:
    """Whether this process is a rank a launcher started: torchrun's agent, or accelerate's
    one-process launcher (its command line, NUL-separated as /proc gives it, names accelerate)."""
    if TORCHRUN_VARIABLE in environ:
        return True
    return ACCELERATE_VARIABLE in environ and any(b"accelerate" in part for part in parent_command.split(b"\0"))


def parent_command() -> bytes:
    """The parent process's command line, NUL-separated as /proc gives it (b"" where unreadable)."""
    try:
        return Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return b""


def launcher_process_count(environ: Mapping[str, str] | None = None) -> int | None:
    """The process count of the launcher that started this process: torchrun's WORLD_SIZE (with
    the LOCAL_RANK it sets), 1 under accelerate's one-process launcher (which sets neither: --check
    said "x the processes launched" there), None without a launcher."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ and "LOCAL_RANK" in environ:
        return int(environ["WORLD_SIZE"])
    return 1 if started_by_launcher(environ, parent_command=parent_command()) else None


def end_with_launcher(environ: Mapping[str, str] | None = None) -> bool:
    """Where a launcher started this process, have the kernel SIGKILL it when the launcher dies;
    returns whether it was set. If the launcher died before this call (this process was already
    re-parented to init), the process ends here. Does nothing off Linux."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not started_by_launcher(environ, parent_command=parent_command()):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False  # not allowed here (a seccomp sandbox): the launcher's own handling is all there is
    # The launcher may have died between the parent's id read above and the prctl: the kernel then
    # re-parented this process (to init or a sub-reaper). Not "parent is init": in a container the
    # launcher itself can be process 1. A launcher that died before that read (the first second of
    # the process, before torch is imported) is not seen.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def lone_process_problem(num_processes: int, environ: Mapping[str, str] | None = None) -> str:
    """Why this process would run alone although WORLD_SIZE names more ("" when it would not):
    ``num_processes`` is the count Accelerate joined it into. Accelerate forms a process group on
    GPUs, or on CPUs when ACCELERATE_USE_CPU says so; on a machine without a visible GPU and without
    it, every rank torchrun started ran as a training of its own (seen: two ranks, each "1 process",
    into one run folder, the second refused by the lock as "another training", the first killed by
    the launcher mid-compile)."""
    environ = os.environ if environ is None else environ
    launched = int(environ.get("WORLD_SIZE", "1"))
    if launched <= 1 or num_processes == launched:
        return ""
    if "LOCAL_RANK" not in environ:
        return (f"WORLD_SIZE={launched} is set but no launcher started this process (no LOCAL_RANK): unset "
                "WORLD_SIZE, or start the processes with `accelerate launch`")
    return (f"the launcher started {launched} processes but each runs alone, as a training of its own: Accelerate "
            "joins processes on GPUs (torch sees none here) or on CPUs when ACCELERATE_USE_CPU=true says so; "
            f"on CPUs: `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes {launched} ...`, "
            "on GPU nodes check that `python -c 'import torch; print(torch.cuda.device_count())'` sees the GPUs")


# What `accelerate launch` (its flags, or `accelerate config`) asks for reaches a process as
# variables Accelerate would read; the Accelerators here are given their own settings, so these
# say what was asked and not done. "no" and 1 are the launcher's defaults, no request.

def ignored_precision(*, option: str, setting: str, precision: str, device: str,
                      environ: Mapping[str, str] | None = None) -> str:
    """A note when the launcher asked for a mixed precision other than the one ``option`` (the
    project's key, set to ``setting``) resolved to (``precision``) on ``device`` (a torch device
    type), else "". `--mixed_precision fp16` trained in bf16, or in float32 on a CPU, without a
    word (walkthrough)."""
    environ = os.environ if environ is None else environ
    asked = environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if asked in ("", "no", precision):
        return ""
    if asked != "bf16":
        choose = f"{option} offers auto, bf16 or no"
    elif device == "cuda":
        choose = f"give {option}={asked}"
    else:  # auto chose full precision because this is a CPU: forcing bf16 there is rarely wanted
        choose = f"a CPU without native bf16 takes minutes per ResNet-50 step in it; {option}=bf16 forces it"
    return (f"note: accelerate's mixed precision {asked} (--mixed_precision or accelerate config) is not used: "
            f"{option}={setting} decides, {precision} here; {choose}")


def ignored_accumulation(environ: Mapping[str, str] | None = None) -> str:
    """A note when the launcher asked for gradient accumulation, which training does not do ("" otherwise)."""
    environ = os.environ if environ is None else environ
    steps = environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip()
    if steps in ("", "1"):
        return ""
    return (f"note: accelerate's gradient accumulation ({steps} steps) is not used: every batch is an update (the "
            "global batch is loader.batch_size x the processes)")
