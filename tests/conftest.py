import pathlib
import sys

# Test helpers (shard_fixtures.py, ...) live beside the tests and are imported by name.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
