"""The one exception type for user mistakes: the CLI prints its message, never a traceback."""


class ShardsError(Exception):
    """A problem with the user's input or output folder, explained in the message."""
