import contextlib
import pathlib
import signal
import sys

# Test helpers (shard_fixtures.py, ...) live beside the tests and are imported by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

# A shell without job control starts background commands with SIGINT ignored, and an ignored
# signal stays ignored across fork and exec: every process a test starts would ignore Ctrl-C, and
# the test of what Ctrl-C does would hang (seen with `(bash .ci/run &)`). Python's own handler
# here makes the children start with the default (Python then installs its KeyboardInterrupt).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


import pytest  # noqa: E402

# No process a test starts may outlive it (tests/processes.py starts them, leak_check.py checks):
# its hooks and autouse fixture, registered by being names of this conftest.
from leak_check import no_process_outlives_its_test, pytest_configure, pytest_sessionfinish  # noqa: E402,F401
from processes import started_process  # noqa: E402


@pytest.fixture
def start_process():
    """``start_process(command, **popen_kwargs)``: a Popen as ``processes.started_process`` gives,
    its whole tree killed when the test ends, pass or fail; for tests that start several."""
    with contextlib.ExitStack() as stack:
        yield lambda command, **popen_kwargs: stack.enter_context(started_process(command, **popen_kwargs))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """The demo's digits shards (train + val), built once per test session; tests only read them."""
    from shards.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("demo") / "data", quiet=True)


@pytest.fixture(scope="session")
def trained_demo(demo_shards, tmp_path_factory):
    """A finished 3-epoch demo run, trained once per session through pipeline/train.py: (run folder,
    the CompletedProcess). Tests read it (the evaluation writes only into RUN/eval-* folders)."""
    from train_helpers import TRAINED_DEMO_SETTINGS, run_train, small_run_args

    out = tmp_path_factory.mktemp("run")
    done = run_train(small_run_args(demo_shards, out, *TRAINED_DEMO_SETTINGS))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done
