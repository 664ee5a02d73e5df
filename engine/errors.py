"""One exception type for every user-facing failure.

The CLI prints an ``EngineError`` as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""


class EngineError(Exception):
    """A failure caused by input, configuration or environment, not by a bug."""
