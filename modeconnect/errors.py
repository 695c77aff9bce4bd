"""The one exception type for user errors."""

from __future__ import annotations


class ModeconnectError(Exception):
    """A user error: bad input, an unreadable file, mismatched checkpoints.

    The message is one line that names the file, the tensor key and the shapes
    involved, and says what to do. The CLI prints it and exits with code 2.
    """
