"""tests/processes.py and the leak check of conftest.py (tests/leak_check.py) do their job: a
child's descendants die with it even in a session of their own (as torchrun starts the ranks
under `accelerate launch`), and a pytest session whose tests leave a process running fails,
names the test, and kills the process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from processes import kill_processes, run_process

TESTS = Path(__file__).resolve().parent
# A child that starts `sleep 300` in a session of its own, writes its PID to argv[1], then
# sleeps argv[2] seconds.
LEAVE_A_SLEEP = ("import subprocess, sys, time; sleeper = subprocess.Popen(['sleep', '300'], start_new_session=True); "
                 "open(sys.argv[1], 'w').write(str(sleeper.pid)); time.sleep(float(sys.argv[2]))")


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_child_that_ended_leaves_nothing_running(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    done = run_process([sys.executable, "-c", LEAVE_A_SLEEP, str(pid_file), "0"], timeout=120)
    assert done.returncode == 0
    sleeper = int(pid_file.read_text())
    try:
        assert not is_running(sleeper), "a process the child left running survived"
    finally:
        kill_processes([sleeper])


@pytest.mark.slow
def test_a_timeout_kills_the_child_and_what_it_started(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    with pytest.raises(subprocess.TimeoutExpired):  # 10 s: ample for the child to start its sleeper
        run_process([sys.executable, "-c", LEAVE_A_SLEEP, str(pid_file), "300"], timeout=10)
    sleeper = int(pid_file.read_text())
    try:
        assert not is_running(sleeper), "a process of the timed-out child survived"
    finally:
        kill_processes([sleeper])


# Run by an inner pytest with only the leak check as plugin. The processes drop this module's tag
# (processes.TAG_VARIABLE) so that nothing but the inner session's check can find them.
LEAKY_TESTS = """
    import os, subprocess
    from pathlib import Path

    import pytest
    from processes import TAG_VARIABLE


    def leak(name):
        env = {key: value for key, value in os.environ.items() if key != TAG_VARIABLE}
        process = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
        Path(name).write_text(str(process.pid))


    @pytest.fixture(scope="session")
    def leaky_fixture():
        leak("fixture.pid")  # outlives every test: only the end of the session can tell


    def test_leaks_a_process():
        leak("test.pid")


    def test_uses_the_leaky_fixture(leaky_fixture):
        pass


    def test_pytest_helpers_do_not_count():
        # A forkserver and the resource tracker, children of pytest that live as long as it does.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            assert pool.submit(abs, -1).result() == 1
"""


def test_a_leaked_process_fails_its_test_and_the_session_and_is_killed(tmp_path):
    (tmp_path / "test_leaky.py").write_text(textwrap.dedent(LEAKY_TESTS))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    done = run_process([sys.executable, "-m", "pytest", "-p", "leak_check", "-p", "no:cacheprovider", "-q", "-rE",
                        "test_leaky.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    leaked = {name: int((tmp_path / f"{name}.pid").read_text()) for name in ("test", "fixture")}
    try:
        output = done.stdout + done.stderr
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
        assert "3 passed, 1 error" in output, output  # the error: at the teardown of the leaking test
        assert "ERROR test_leaky.py::test_leaks_a_process" in output, output  # the test is named
        assert "this test left processes running" in output and f"{leaked['test']} (parent" in output
        assert "processes started by the tests outlived them: 1" in output, output
        assert f"{leaked['fixture']} (parent" in output and "sleep 300" in output
        assert not [name for name, pid in leaked.items() if is_running(pid)], "the leak check did not kill"
    finally:
        kill_processes(list(leaked.values()))
