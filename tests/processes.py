"""Subprocesses that cannot outlive their test.

Killing `accelerate launch` (or `srun`, or `python -m shards build` with workers) does not kill
what it started: torchrun puts every rank in a session of its own (so even a kill of the
launcher's process group misses them), and the ranks then run on as orphans at 100% CPU,
slowing every later test. So every process a test starts goes through this module:

    done = run_process([...], timeout=600, cwd=REPO, capture_output=True, text=True)
    with started_process([...], cwd=REPO) as process:   # Popen; killed at exit, pass or fail
        ...

The child runs in a new session and carries a tag of its own in its environment (TAG_VARIABLE),
which its descendants inherit whatever session or parent they end up with. Killing it means
SIGKILL to its process group and then to every process carrying its tag, until none is left.
conftest.py checks the same way (SESSION_VARIABLE) that nothing outlives a test or the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

# Set by conftest for the whole pytest session; every process started from it inherits it.
SESSION_VARIABLE = "CUTMIX_TEST_SESSION"
# One value per process started here: finds all of its descendants, orphans included.
TAG_VARIABLE = "CUTMIX_TEST_PROCESS"


def processes_with(variable: str, value: str) -> list[int]:
    """PIDs (other than this one) whose environment holds ``variable=value``. The environment is
    inherited across fork, exec, setsid and re-parenting to init, unlike a parent or a group."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def describe(pid: int) -> str:
    """``PID (parent PPID): command line``, for failure messages."""
    try:
        command = Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        parent = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[1]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} (parent {parent}): {command.strip()[:300]}"


def kill_processes(pids: list[int]) -> None:
    """SIGKILL each PID; one that is already gone is fine."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_tagged(variable: str, value: str, *, exclude: frozenset[int] = frozenset(),
                patience: float = 30) -> list[str]:
    """SIGKILL every process carrying ``variable=value`` (but ``exclude``) until none is left;
    returns the descriptions of those it found. Repeats because a launcher may fork while it is
    being killed (hang guard: ``patience`` seconds)."""
    found: dict[int, str] = {}
    deadline = time.monotonic() + patience
    while True:
        pids = [pid for pid in processes_with(variable, value) if pid not in exclude]
        if not pids or time.monotonic() > deadline:
            return list(found.values())
        found.update({pid: describe(pid) for pid in pids if pid not in found})
        kill_processes(pids)
        time.sleep(0.05)


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL a child of ``started_process``: its process group (members that cleared their
    environment), then every process carrying its tag (members that left the group); reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    kill_tagged(TAG_VARIABLE, process.test_tag)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


@contextlib.contextmanager
def started_process(command: list[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen`` in a new session, tagged; at exit, pass or fail, the child and
    everything it started are killed (a child that ended by itself may have left some running)."""
    env = dict(popen_kwargs.pop("env", None) or os.environ)
    env[TAG_VARIABLE] = tag = uuid.uuid4().hex
    if SESSION_VARIABLE in os.environ:  # also where the caller built a small environment of its own
        env.setdefault(SESSION_VARIABLE, os.environ[SESSION_VARIABLE])
    process = subprocess.Popen(command, env=env, start_new_session=True, **popen_kwargs)
    process.test_tag = tag
    try:
        yield process
    finally:
        kill_process_tree(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run_process(command: list[str], *, timeout: float, capture_output: bool = False,
                **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout (a hang guard, required) kills the whole tree, not only
    the child, and which kills whatever the child left running when it ended."""
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with started_process(command, **popen_kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            kill_process_tree(process)
            with contextlib.suppress(subprocess.TimeoutExpired):  # what it wrote before the kill
                expired.stdout, expired.stderr = process.communicate(timeout=10)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
