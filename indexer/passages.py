"""Documents as passages: windows of model tokens, so nothing past the first 512 is invisible.

With ``engine index --passages TOKENS`` every document is split into windows of
``TOKENS`` model tokens (``--passage-overlap`` of them shared with the previous
window), each encoded as ``title text`` and stored with its document and its token
and character offsets. The text arrives as a stream of pieces and is tokenized
piece by piece, so a 60 MB file passes through a few windows at a time and is never
one string. Search ranks documents by their best passage (:func:`best_per_document`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError

# The settings key of the passage setting; absent or None: the first max_length tokens.
PASSAGES_KEY = "passages"
# Tokens of a document that are read and encoded at most, by default (~4 MB of English).
DEFAULT_MAX_DOCUMENT_TOKENS = 1_000_000
# Characters tokenized at a time (cut at a space so no word is split between two pieces).
TOKENIZE_CHARS = 1 << 16


@dataclass(frozen=True)
class PassageSpec:
    """How documents are split: stored with the index, a change needs re-encoding."""

    tokens: int
    overlap: int
    max_document_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS

    def check(self, max_length: int) -> PassageSpec:
        """This spec if it fits a model of ``max_length`` tokens, else a one-line error."""
        if self.tokens < 16:
            raise EngineError(f"--passages must be at least 16 tokens, not {self.tokens}")
        if self.tokens > max_length:
            raise EngineError(
                f"--passages {self.tokens} exceeds the model's {max_length} tokens "
                "(or --max-length)"
            )
        if not 0 <= self.overlap <= self.tokens // 2:
            raise EngineError(
                f"--passage-overlap must be between 0 and half a passage ({self.tokens // 2}), "
                f"not {self.overlap}"
            )
        if self.max_document_tokens < self.tokens:
            raise EngineError(
                f"--max-document-tokens must be at least one passage ({self.tokens}), "
                f"not {self.max_document_tokens}"
            )
        return self

    def to_settings(self) -> dict[str, int]:
        return {
            "tokens": self.tokens,
            "overlap": self.overlap,
            "max_document_tokens": self.max_document_tokens,
        }

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PassageSpec | None:
        value = settings.get(PASSAGES_KEY)
        return cls(**value) if isinstance(value, dict) else None

    def describe(self) -> str:
        return (
            f"{self.tokens} tokens, overlap {self.overlap}, "
            f"at most {self.max_document_tokens:,} tokens a document"
        )


def passage_spec(
    tokens: int | None, overlap: int | None, max_document_tokens: int | None
) -> dict[str, int] | None:
    """The passage settings ``engine index`` options ask for (None: no passages)."""
    if tokens is None:
        if overlap is not None or max_document_tokens is not None:
            raise EngineError("--passage-overlap and --max-document-tokens need --passages")
        return None
    return PassageSpec(
        tokens,
        tokens // 8 if overlap is None else overlap,
        max_document_tokens or DEFAULT_MAX_DOCUMENT_TOKENS,
    ).to_settings()


@dataclass(frozen=True)
class Passage:
    """One window of a document: its text and where it lies (tokens of the text, without the
    title and special tokens; characters of the document's text, end exclusive)."""

    position: int
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    text: str

    def offsets(self) -> dict[str, int]:
        return {
            "position": self.position,
            "token_start": self.token_start,
            "token_end": self.token_end,
            "char_start": self.char_start,
            "char_end": self.char_end,
        }


def split_passages(
    tokenizer: Any,
    pieces: Iterable[str],
    window: int,
    overlap: int,
    max_tokens: int = DEFAULT_MAX_DOCUMENT_TOKENS,
) -> Iterator[Passage]:
    """Windows of ``window`` text tokens, each starting ``window - overlap`` after the last.

    ``pieces`` is the document's text in order (any split); it is tokenized
    ``TOKENIZE_CHARS`` at a time, cut at whitespace, so memory holds about one piece
    and one window, never the document. The last window holds what is left (a
    document shorter than a window is one passage); text past ``max_tokens`` tokens
    is not read further. A fast (Rust) tokenizer is needed for character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise EngineError("--passages needs a fast tokenizer (character offsets)")
    stride = window - overlap
    text = ""  # document text from text_start on: what the held tokens cover, and more
    text_start = 0
    spans: list[tuple[int, int]] = []  # character spans of held tokens (document offsets)
    first_token = 0  # document token number of spans[0]
    counted = 0  # tokens seen so far
    position = 0
    carry = ""  # text read but not yet tokenized
    carry_start = 0

    def window_at(count: int) -> Passage:
        start, end = spans[0][0], spans[count - 1][1]
        return Passage(
            position,
            first_token,
            first_token + count,
            start,
            end,
            text[start - text_start : end - text_start],
        )

    def tokenized(chunk: str, offset: int) -> list[tuple[int, int]]:
        encoded = tokenizer(
            chunk,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [(offset + s, offset + e) for s, e in encoded["offset_mapping"] if e > s]

    def pieces_cut_at_spaces() -> Iterator[tuple[str, int]]:
        nonlocal carry, carry_start
        for piece in pieces:
            carry += piece
            while len(carry) >= TOKENIZE_CHARS:
                cut = max(carry.rfind(" ", 0, TOKENIZE_CHARS), carry.rfind("\n", 0, TOKENIZE_CHARS))
                cut = cut + 1 if cut > 0 else TOKENIZE_CHARS
                yield carry[:cut], carry_start
                carry, carry_start = carry[cut:], carry_start + cut
        if carry:
            yield carry, carry_start
            carry = ""

    for chunk, offset in pieces_cut_at_spaces():
        new = tokenized(chunk, offset)
        if counted + len(new) > max_tokens:
            new = new[: max_tokens - counted]
        counted += len(new)
        text += chunk
        spans.extend(new)
        while len(spans) >= window:
            yield window_at(window)
            position += 1
            del spans[:stride]
            first_token += stride
            # Keep the text of the held tokens (and whatever follows them).
            keep_from = spans[0][0] if spans else offset + len(chunk)
            text = text[keep_from - text_start :]
            text_start = keep_from
        if counted >= max_tokens:
            break
    # What is left: a last, shorter window, unless the previous one covered it all.
    if spans and (position == 0 or len(spans) > overlap):
        yield window_at(len(spans))


def best_per_document(
    ranked: Sequence[tuple[float, Any, Any]], k: int
) -> list[tuple[float, Any, Any]]:
    """The rule of passage search: a document scores its best passage's score.

    ``ranked`` is ``(score, document key, passage)`` best first; the first ``k``
    distinct documents are kept, each with its best passage.
    """
    kept: dict[Any, tuple[float, Any, Any]] = {}
    for score, key, passage in ranked:
        if key not in kept:
            kept[key] = (score, key, passage)
            if len(kept) == k:
                break
    return list(kept.values())
