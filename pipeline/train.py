"""Train a timm model on WebDataset shards with CutMix (the paper's recipe or any config).

    accelerate launch pipeline/train.py [--config configs/X.yaml] [section.key=value ...]
    python pipeline/train.py                     # one process; no arguments: the embedded demo
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, Python puts pipeline/ itself first on sys.path, where config.py, data/, mix/
# would shadow top-level names; the repository root goes there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from shards.errors import dependencies_required  # noqa: E402

if __name__ == "__main__":
    with dependencies_required():
        from pipeline.cli import exit_cleanly, run_cli

        code = run_cli(sys.argv[1:], default_config=HERE.parent / "configs" / "demo.yaml")
    exit_cleanly(code)
