"""Text that cannot be encoded as UTF-8, and file names that are not UTF-8.

Python strings can hold lone surrogates (``"\\ud800"`` from JSON escapes in scraped
data, ``"\\udce9"`` from a command-line argument or file name whose bytes are not
UTF-8): tokenizers, SQLite and HTTP answers refuse them. Text is repaired (each lone
surrogate becomes U+FFFD, the replacement character); file names are stored with
their undecodable bytes escaped so that every name the filesystem allows maps to
one stored name and back.
"""

from __future__ import annotations

import os
import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def unencodable(text: str) -> int | None:
    """The position of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    return found.start() if found else None


def repair_text(text: str) -> str:
    """``text`` with every surrogate replaced by U+FFFD: the same length, so character offsets
    (the tokenizer's instruction spans) still hold."""
    if unencodable(text) is None:
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def path_text(name: str) -> str:
    """A file name as stored and shown: UTF-8 names as they are, except that a backslash is
    doubled; bytes that are not UTF-8 become ``\\xNN``. Inverse: :func:`path_name`."""
    raw = os.fsencode(name).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def path_name(text: str) -> str:
    """The file name (``os.fsdecode`` form) that :func:`path_text` stored as ``text``."""

    def unescape(match: re.Match[str]) -> str:
        escape = match.group(1)
        return "\\" if escape == "\\" else chr(0xDC00 + int(escape[1:], 16))

    # chr(0xDC00 + byte) is how surrogateescape holds a byte that is not UTF-8.
    return _ESCAPE.sub(unescape, text)
