"""``python -m pipeline.evaluate``: see ``pipeline.evaluate.cli``."""

from shards.errors import dependencies_required

with dependencies_required():
    from ..cli import exit_cleanly
    from .cli import main

    code = main()
exit_cleanly(code)
