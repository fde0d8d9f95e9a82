"""A pytest plugin (loaded by conftest.py, or ``-p leak_check``): no process that a test started
outlives the test, nor the session.

At start-up it puts a marker unique to this session in os.environ (processes.SESSION_VARIABLE);
every process started from here inherits it, orphans re-parented to init and Slurm job steps
(which get the submitter's environment) included. After each test, a process with the marker
that is new and does not descend from one that existed before the test (Slurm's daemons of a
module fixture, say) was left by that test: it is killed and the test errors at teardown, by
name. At the end of the session whatever still has the marker is killed, listed, and the
session fails, except pytest itself and its own multiprocessing helpers, which end with it.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from pathlib import Path

import pytest
from processes import SESSION_VARIABLE, describe, kill_processes, kill_tagged, processes_with

# Started by in-process code (shards.writing's forkserver pool, with its resource tracker):
# children of pytest that live as long as it does. Recognized by parent and command line only.
PYTEST_HELPERS = (b"from multiprocessing.forkserver import main", b"from multiprocessing.resource_tracker import main")


def pytest_configure(config) -> None:
    # A fresh marker also in a pytest run inside a test: each session checks its own processes.
    os.environ[SESSION_VARIABLE] = f"{os.getpid()}-{uuid.uuid4().hex}"


def _parent(pid: int) -> int:
    try:
        return int(Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _pytest_helpers() -> frozenset[int]:
    helpers = set()
    for pid in processes_with(SESSION_VARIABLE, os.environ[SESSION_VARIABLE]):
        try:
            command = Path("/proc", str(pid), "cmdline").read_bytes()
        except OSError:
            continue
        if _parent(pid) == os.getpid() and any(helper in command for helper in PYTEST_HELPERS):
            helpers.add(pid)
    return frozenset(helpers)


def _left_by_this_test(before: set[int]) -> list[int]:
    """Marked processes that are new and whose ancestry does not reach one from ``before``."""
    ignored = before | _pytest_helpers()
    left = []
    for pid in processes_with(SESSION_VARIABLE, os.environ[SESSION_VARIABLE]):
        ancestor = pid
        while ancestor not in ignored and ancestor not in (0, 1, os.getpid()):
            ancestor = _parent(ancestor)
        if ancestor not in ignored:
            left.append(pid)
    return left


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """Errors the test (at teardown) that left a process running, after killing it."""
    before = set(processes_with(SESSION_VARIABLE, os.environ[SESSION_VARIABLE]))
    yield
    left = _left_by_this_test(before)
    if left:
        gc.collect()  # a loader's worker processes end when the loader object is collected
        left = _left_by_this_test(before)
    if left:
        described = [describe(pid) for pid in left]
        kill_processes(left)
        pytest.fail("this test left processes running (killed now):\n  " + "\n  ".join(described), pytrace=False)


def pytest_sessionfinish(session, exitstatus) -> None:
    gc.collect()
    killed = kill_tagged(SESSION_VARIABLE, os.environ[SESSION_VARIABLE], exclude=_pytest_helpers())
    if killed:
        title = f"processes started by the tests outlived them: {len(killed)} (killed now)"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.line("")  # after the progress line
            reporter.write_sep("=", title, red=True)
            for line in killed:
                reporter.write_line(f"  {line}")
        else:
            print(title + "".join(f"\n  {line}" for line in killed), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
