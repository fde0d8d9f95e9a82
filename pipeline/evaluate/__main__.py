"""``python -m pipeline.evaluate``: see ``pipeline.evaluate.cli``."""

from ..cli import exit_cleanly
from .cli import main

exit_cleanly(main())
