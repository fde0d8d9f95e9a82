import pathlib
import sys

# Test helpers (shard_fixtures.py, ...) live beside the tests and are imported by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """The demo's digits shards (train + val), built once per test session; tests only read them."""
    from shards.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("demo") / "data", quiet=True)
