"""Corpus -> documents: walk a folder (or read one file) into :class:`Document`s.

Every reader returns documents or raises :class:`Unreadable` with a short
reason; one bad file or record is skipped and reported, never fatal. Only
regular files are opened (a named pipe would block forever). Text that is not
UTF-8 is decoded with the charset charset-normalizer detects. Only the head of
a file that the first ``max_tokens`` tokens can need is read, so a huge text
file is indexed by its beginning instead of skipped. For passages (``whole=True``)
the whole file is read up to that bound, as a stream: a text, HTML or PDF file's
document carries its head and re-reads the rest piece by piece when asked
(:meth:`Document.stream`), so a 60 MB log is never one string.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from engine.profiles import DEFAULT_DOCUMENT_TOKENS
from engine.text import path_text, repair_text

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
JSON_SUFFIXES = {".json", ".jsonl"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | JSON_SUFFIXES | PDF_SUFFIXES

# A whole-file JSON corpus above this is read line by line instead; JSON lines
# corpora stream and have no limit.
MAX_FILE_BYTES = 16 * 2**20
MAX_RECORD_BYTES = 16 * 2**20
# A generous bound on the bytes of text one token covers (English is about 4-5):
# a file's first ``max_tokens * BYTES_PER_TOKEN`` bytes hold all that gets encoded.
BYTES_PER_TOKEN = 64
# HTML spends most of its bytes on markup, scripts and styles.
HTML_BYTES_FACTOR = 8

# Bytes read at a time from a streamed file, and of a streamed file's head kept in memory.
STREAM_BYTES = 1 << 16

_MARKDOWN_HEADING = re.compile(r"\A\s*#\s+(.+?)\s*#*\s*(?:\n|\Z)")


@dataclass(frozen=True)
class Document:
    """One retrievable unit: a file, or one record of a JSON corpus.

    ``text`` is the whole text, except for a streamed document (``pieces`` set):
    then it is the head, and ``pieces()`` reads the whole text again, piece by piece.
    """

    doc_id: str
    source: str
    title: str
    text: str
    pieces: Callable[[], Iterable[str]] | None = field(default=None, compare=False, repr=False)
    # What filters (``--where``) see besides source, title and doc_id: a file's extension,
    # size and modified time, a JSON record's extra fields. Not part of the content hash.
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def stream(self) -> Iterable[str]:
        """The whole text, in pieces (one piece unless the document is streamed)."""
        return self.pieces() if self.pieces is not None else (self.text,)

    @cached_property
    def content_hash(self) -> str:
        """What decides whether a stored vector is still valid: SHA-256 of title and text."""
        digest = hashlib.sha256(f"{self.title}\x1f".encode())
        for piece in self.stream():
            digest.update(piece.encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A file or record that was not indexed, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Note:
    """A library's warning about a file that was still indexed (e.g. a damaged PDF trailer)."""

    source: str
    message: str


class Unreadable(Exception):
    """A file or record that cannot become a document; the message is the reason."""


class CorpusScan:
    """The documents under a path, read lazily: iterating walks the files and yields each
    document as it is read, so memory holds one document (or one JSON record) at a time,
    never the corpus.

    The reports fill as the walk goes and are complete when it ends; each pass starts
    them afresh (in place, so a reference taken before the pass sees them fill).
    """

    def __init__(
        self, path: str | Path, *, max_tokens: int | None = None, whole: bool = False
    ) -> None:
        self.root = Path(path)
        # Bytes of a file's head that the first max_tokens tokens can need.
        self.head = (max_tokens or DEFAULT_DOCUMENT_TOKENS) * BYTES_PER_TOKEN
        # Passages: text and PDF files are streamed (up to self.head bytes), not cut at a head.
        self.whole = whole
        self.skipped: list[Skipped] = []
        self.notes: list[Note] = []
        # Files with an extension engine does not read (images, code, ...): not errors.
        self.ignored = 0
        # Files that could not be opened this time (permission, I/O): their previously
        # indexed documents are kept instead of being removed.
        self.failed_sources: set[str] = set()
        # Bytes of the corpus files walked so far in this pass (progress, see size()).
        self.bytes_read = 0

    def size(self) -> int:
        """Bytes of the files a pass reads, from a walk that stats them but reads nothing."""
        return sum(_file_size(file) for file, _ in self._files(count_ignored=False))

    def __iter__(self) -> Iterator[Document]:
        self.skipped.clear()
        self.notes.clear()
        self.failed_sources.clear()
        self.ignored = self.bytes_read = 0
        for file, source in self._files():
            yield from self._read(file, source)

    def _files(self, *, count_ignored: bool = True) -> Iterator[tuple[Path, str]]:
        """Supported files with their source names (the others counted as ignored)."""
        if not self.root.is_dir():
            yield self.root, path_text(self.root.name)
            return
        for file in _walk(self.root):
            if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                self.ignored += count_ignored
                continue
            yield file, path_text(file.relative_to(self.root).as_posix())

    def _read(self, file: Path, source: str) -> Iterator[Document]:
        start = self.bytes_read
        try:
            if file.suffix.lower() in JSON_SUFFIXES:
                reported, records = len(self.skipped), 0
                for document in json_records(file, source, self.skipped, self._advance):
                    records += 1
                    yield document
                if not records and len(self.skipped) == reported:
                    self.skipped.append(Skipped(source, "no records"))
            else:
                with _library_noise(self.notes, source):
                    if self.whole:
                        document = streamed_file_document(file, source, self.head)
                    else:
                        document = read_file_document(file, source, self.head)
                document = replace(document, metadata=file_metadata(file))
                self.bytes_read = start + _file_size(file)
                yield document
                return
        except Unreadable as exc:
            self.skipped.append(Skipped(source, str(exc)))
        except OSError as exc:
            self.skipped.append(Skipped(source, f"cannot read: {exc.strerror or exc}"))
            self.failed_sources.add(source)
        self.bytes_read = start + _file_size(file)

    def _advance(self, count: int) -> None:
        self.bytes_read += count


def read_corpus(
    path: str | Path, *, max_tokens: int | None = None, whole: bool = False
) -> CorpusScan:
    """The documents under ``path`` (a folder, walked recursively, or a single file), lazily.

    Hidden files and folders (``.git``, the ``.engine`` index) are not read.
    ``max_tokens`` (default 512) bounds how much of each file is read; ``whole``
    (passages) streams text and PDF files instead of holding them.
    """
    return CorpusScan(path, max_tokens=max_tokens, whole=whole)


def _file_size(file: Path) -> int:
    try:
        return os.stat(file).st_size
    except OSError:
        return 0


def _walk(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def file_metadata(file: Path) -> dict[str, Any]:
    """A file's metadata for filters: extension (lower case, with its dot), size in bytes,
    modified time (ISO 8601, UTC)."""
    status = file.stat()
    modified = datetime.fromtimestamp(status.st_mtime, tz=timezone.utc)
    return {
        "extension": file.suffix.lower(),
        "size": status.st_size,
        "modified": modified.isoformat(timespec="seconds"),
    }


def read_file_document(
    file: Path, source: str, head: int = DEFAULT_DOCUMENT_TOKENS * BYTES_PER_TOKEN
) -> Document:
    """A text, Markdown, reStructuredText, HTML or PDF file as one document.

    Only the first ``head`` bytes of text (``HTML_BYTES_FACTOR`` times that of HTML)
    are read; a PDF's pages are read until they give that much text.
    """
    suffix = file.suffix.lower()
    with open_regular(file) as handle:
        if suffix in PDF_SUFFIXES:
            title, text = _read_pdf(handle, head)
        else:
            limit = head * (HTML_BYTES_FACTOR if suffix in HTML_SUFFIXES else 1)
            raw = handle.read(limit + 1)
            decoded = _decode(raw[:limit], truncated=len(raw) > limit)
            if suffix in HTML_SUFFIXES:
                title, text = _html_text(decoded)
            elif suffix in (".md", ".markdown"):
                title, text = _markdown_title(decoded)
            else:
                title, text = "", decoded.strip()
    if not text and not title:
        raise Unreadable("empty")
    return Document(doc_id=source, source=source, title=title, text=text)


def streamed_file_document(file: Path, source: str, limit: int) -> Document:
    """A file read whole (up to ``limit`` bytes of text) for passages, without holding it.

    Text, Markdown, reStructuredText and HTML files and PDFs become a streamed document:
    its ``pieces`` re-open the file and decode it (or extract its pages) a piece at a
    time; HTML's visible text is parsed from its pieces as they come (up to ``limit``
    bytes of markup times ``HTML_BYTES_FACTOR``).
    """
    suffix = file.suffix.lower()
    if suffix in PDF_SUFFIXES:
        with open_regular(file) as handle:
            title, head = _read_pdf(handle, STREAM_BYTES)

        def pdf_pages() -> Iterator[str]:
            with open_regular(file) as handle:
                yield from _pdf_pages(handle, limit)

        return Document(source, source, title, head, pieces=pdf_pages)
    with open_regular(file) as handle:
        raw = handle.read(STREAM_BYTES + 1)
    decoded = _decode(raw[:STREAM_BYTES], truncated=len(raw) > STREAM_BYTES)
    encoding = "utf-8-sig" if _is_utf8(raw[:STREAM_BYTES]) else _detected_encoding(raw)
    if suffix in HTML_SUFFIXES:
        limit *= HTML_BYTES_FACTOR
        title, head = _html_text(decoded)
        if not head and not title:
            raise Unreadable("empty")
        return Document(
            source, source, title, head, pieces=lambda: _html_pieces(file, encoding, limit)
        )
    if suffix in (".md", ".markdown"):
        match = _MARKDOWN_HEADING.match(decoded)
        title, skip = (match.group(1).strip(), match.end()) if match else ("", 0)
    else:
        title, skip = "", 0
    head = decoded[skip:].strip()
    if not head and not title:
        raise Unreadable("empty")

    def text_pieces() -> Iterator[str]:
        left, started = skip, False
        for piece in _decoded_pieces(file, encoding, limit):
            if left:
                piece, left = piece[left:], max(left - len(piece), 0)
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece

    return Document(source, source, title, head, pieces=text_pieces)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data"
    return True


def _decoded_pieces(file: Path, encoding: str, limit: int) -> Iterator[str]:
    """The first ``limit`` bytes of ``file`` decoded ``STREAM_BYTES`` at a time."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    left = limit
    with open_regular(file) as handle:
        while left > 0:
            raw = handle.read(min(STREAM_BYTES, left))
            if not raw:
                break
            left -= len(raw)
            yield decoder.decode(raw)
    yield decoder.decode(b"", final=left > 0)


def open_regular(file: Path) -> BinaryIO:
    """Open ``file`` for reading only if it is a regular file (never block on a pipe or device)."""
    kind = _non_regular_kind(os.stat(file).st_mode)
    if kind:
        raise Unreadable(f"not a regular file ({kind})")
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        kind = _non_regular_kind(os.fstat(fd).st_mode)  # replaced since the stat?
        if kind:
            raise Unreadable(f"not a regular file ({kind})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _non_regular_kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return kind
    return "special file"


@contextmanager
def _library_noise(notes: list[Note], source: str) -> Iterator[None]:
    """Warnings that parsers (pypdf) log or raise while reading a file go into the report."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("pypdf")
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for message in dict.fromkeys(messages):
            notes.append(Note(source, " ".join(message.split())))


def read_json_corpus(file: Path, source: str) -> tuple[list[Document], list[Skipped]]:
    """All the records of a JSON corpus file at once (see :func:`json_records`)."""
    skipped: list[Skipped] = []
    return list(json_records(file, source, skipped)), skipped


def json_records(
    file: Path,
    source: str,
    skipped: list[Skipped],
    advance: Callable[[int], None] | None = None,
) -> Iterator[Document]:
    """BEIR corpus records (``_id``, ``title``, ``text``): JSON lines, or a JSON list/object.

    Yielded one at a time (JSON lines are read line by line); records that cannot be
    documents go into ``skipped``; ``advance`` is told the bytes of each line read.
    """
    seen: set[str] = set()

    def check(record: object, where: str, fallback_id: str) -> Document | None:
        try:
            document = record_document(record, source, fallback_id)
        except Unreadable as exc:
            skipped.append(Skipped(f"{source}:{where}", str(exc)))
            return None
        if document.doc_id in seen:
            skipped.append(Skipped(f"{source}:{where}", f"duplicate _id {document.doc_id!r}"))
            return None
        seen.add(document.doc_id)
        return document

    if file.suffix.lower() == ".json" and os.stat(file).st_size <= MAX_FILE_BYTES:
        try:
            with open_regular(file) as handle:
                whole = json.loads(_decode(handle.read()))
        except (Unreadable, ValueError):
            whole = None  # maybe JSON lines under a .json name: read line by line below
        if isinstance(whole, dict):
            document = check(whole, "record 1", source)
            if document is not None:
                yield document
            return
        if isinstance(whole, list):
            for number, record in enumerate(whole, start=1):
                document = check(record, f"record {number}", f"{source}#{number}")
                if document is not None:
                    yield document
            return

    with open_regular(file) as handle:
        for number, line in enumerate(handle, start=1):
            if advance is not None:
                advance(len(line))
            where = f"line {number}"
            if not line.strip():
                continue
            if len(line) > MAX_RECORD_BYTES:
                skipped.append(Skipped(f"{source}:{where}", "record too large"))
                continue
            try:
                record = json.loads(_decode(line))
            except Unreadable as exc:
                skipped.append(Skipped(f"{source}:{where}", str(exc)))
                continue
            except ValueError as exc:
                skipped.append(Skipped(f"{source}:{where}", f"invalid JSON ({exc.msg})"))
                continue
            document = check(record, where, f"{source}#{number}")
            if document is not None:
                yield document


# A record's own fields; the others are kept as its metadata (scalars only).
RECORD_FIELDS = ("_id", "id", "title", "text")


def record_document(record: object, source: str, fallback_id: str) -> Document:
    """One BEIR-style record; ``id`` is accepted for ``_id``, ``title`` is optional."""
    if not isinstance(record, dict):
        raise Unreadable("not a JSON object")
    text = record.get("text")
    if not isinstance(text, str):
        raise Unreadable("no 'text' string")
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise Unreadable("'title' is not a string")
    raw_id = record.get("_id", record.get("id", fallback_id))
    if not isinstance(raw_id, (str, int)) or str(raw_id) == "":
        raise Unreadable("'_id' is not a string or number")
    if not text.strip() and not title.strip():
        raise Unreadable("empty")
    # Lone surrogates (JSON escapes like "\\ud800" in scraped data) cannot be tokenized or
    # stored: each becomes U+FFFD, the record is kept.
    extra = {
        key: value
        for key, value in record.items()
        if key not in RECORD_FIELDS and isinstance(value, (str, int, float, bool))
    }
    return Document(
        doc_id=repair_text(str(raw_id)),
        source=source,
        title=repair_text(title.strip()),
        text=repair_text(text.strip()),
        metadata={"extension": PurePosixPath(source).suffix.lower(), **extra},
    )


_PREFERRED_CHARSETS = ("cp1252", "latin_1", "iso8859_15")
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _decode(raw: bytes, *, truncated: bool = False) -> str:
    """UTF-8, else the charset charset-normalizer finds; NUL bytes without a BOM mean binary.

    ``truncated``: ``raw`` is a file's head, so its last character may be cut.
    """
    if b"\x00" in raw[:8192] and not raw.startswith(_UTF16_32_BOMS):
        raise Unreadable("binary file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[: exc.start].decode("utf-8-sig")
    return raw.decode(_detected_encoding(raw), errors="replace")


def _detected_encoding(raw: bytes) -> str:
    """The charset charset-normalizer finds for ``raw`` (its first MiB), preferring common ones."""
    from charset_normalizer import from_bytes

    matches = from_bytes(raw[: 2**20])
    best = matches.best()
    if best is None:
        raise Unreadable("binary file (no text encoding fits)")
    # Short Western text fits several code pages equally well: prefer the commonest.
    tied = {m.encoding for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)}
    return next((e for e in _PREFERRED_CHARSETS if e in tied), best.encoding)


def _markdown_title(raw: str) -> tuple[str, str]:
    """A leading ``# heading`` is the title; the rest is the text."""
    match = _MARKDOWN_HEADING.match(raw)
    if not match:
        return "", raw.strip()
    return match.group(1).strip(), raw[match.end() :].strip()


class _VisibleText(HTMLParser):
    """A page's title and its visible text (no scripts, styles, head or markup), fed in
    pieces: markup is parsed as it arrives, so a page of any size is never one string.
    Words are joined by single spaces, across elements and across pieces (a text run the
    parser hands over in parts is joined back first, so no word is cut)."""

    HIDDEN = frozenset({"script", "style", "noscript", "template", "head"})
    TITLE_WORDS = 256

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self._title_words: list[str] | None = None
        self._hidden: dict[str, int] = {}
        self._run = ""  # text since the last tag, whose last word may go on
        self._words: list[str] = []
        self._started = False

    @property
    def _in_title(self) -> bool:
        return self._title_words is not None and self.title is None

    def _end_run(self) -> None:
        if self._run:
            self._take(self._run)
            self._run = ""

    def _take(self, text: str) -> None:
        if self._in_title:  # kept apart (a page's title sits in its hidden head)
            self._title_words = (self._title_words or []) + text.split()
            if len(self._title_words) > self.TITLE_WORDS:  # an unclosed <title>
                self.title = " ".join(self._title_words[: self.TITLE_WORDS])
        elif not any(self._hidden.values()):
            self._words.extend(text.split())

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._end_run()
        if tag in self.HIDDEN:
            self._hidden[tag] = self._hidden.get(tag, 0) + 1
        elif tag == "title" and self.title is None and self._title_words is None:
            self._title_words = []

    def handle_endtag(self, tag: str) -> None:
        self._end_run()
        if self._hidden.get(tag):
            self._hidden[tag] -= 1
        elif tag == "title" and self._in_title:
            self.title = " ".join(self._title_words or [])

    def handle_comment(self, data: str) -> None:
        self._end_run()

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        """``<![...`` that is no known marked section (``_markupbase`` raises AssertionError,
        which would stop a whole indexing run mid-stream) is skipped like a bogus comment."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i)

    def handle_data(self, data: str) -> None:
        self._run += data
        if len(self._run) > STREAM_BYTES:  # a long run: keep only its last, open word
            cut = max(self._run.rfind(" "), self._run.rfind("\n"))
            if cut > 0:
                self._take(self._run[:cut])
                self._run = self._run[cut:]

    def text(self) -> str:
        """The visible words parsed since the last call, with the space that joins them to
        the words before."""
        if not self._words:
            return ""
        piece = (" " if self._started else "") + " ".join(self._words)
        self._words, self._started = [], True
        return piece

    def finish(self) -> str:
        self.close()
        self._end_run()
        if self._in_title:  # <title> never closed
            self.title = " ".join(self._title_words or [])
        return self.text()


def _html_text(raw: str) -> tuple[str, str]:
    """The page title and its visible text."""
    parser = _VisibleText()
    parser.feed(raw)
    text = parser.finish()
    return parser.title or "", text


def _html_pieces(file: Path, encoding: str, limit: int) -> Iterator[str]:
    """The visible text of the first ``limit`` bytes of an HTML file, a piece at a time."""
    parser = _VisibleText()
    for decoded in _decoded_pieces(file, encoding, limit):
        parser.feed(decoded)
        if piece := parser.text():
            yield piece
    if piece := parser.finish():
        yield piece


def _read_pdf(handle: BinaryIO, head: int) -> tuple[str, str]:
    """Title and text of a PDF, page by page until ``head`` characters of text."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(handle)
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        pages = list(_pdf_pages(handle, head, reader))
        title = (reader.metadata.title if reader.metadata else None) or ""
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise Unreadable(f"unreadable PDF ({exc})") from None
    text = "".join(pages).strip()
    if not text:
        raise Unreadable("PDF without extractable text")
    return str(title).strip(), text


def _pdf_pages(handle: BinaryIO, limit: int, reader=None) -> Iterator[str]:
    """A PDF's pages' text, whitespace collapsed and joined by spaces, until ``limit``
    characters; a page that fails to parse later ends the stream."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    length = 0
    try:
        for page in (reader or PdfReader(handle)).pages:
            text = " ".join((page.extract_text() or "").split())
            if text:
                yield (" " if length else "") + text
                length += len(text) + 1
            if length >= limit:
                return
    except (PyPdfError, ValueError, KeyError, TypeError):
        if reader is not None:
            raise
