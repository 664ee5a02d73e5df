"""Corpus -> documents: walk a folder (or read one file) into :class:`Document`s.

Every reader returns documents or raises :class:`Unreadable` with a short
reason; one bad file or record is skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
JSON_SUFFIXES = {".json", ".jsonl"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | JSON_SUFFIXES | PDF_SUFFIXES

# A single-document file above this is not a document anyone wants embedded whole
# (only its first tokens would be); JSON lines corpora stream and have no limit.
MAX_FILE_BYTES = int(os.environ.get("ENGINE_MAX_FILE_BYTES", str(16 * 2**20)))
MAX_RECORD_BYTES = 16 * 2**20

_MARKDOWN_HEADING = re.compile(r"\A\s*#\s+(.+?)\s*#*\s*(?:\n|\Z)")


@dataclass(frozen=True)
class Document:
    """One retrievable unit: a file, or one record of a JSON corpus."""

    doc_id: str
    source: str
    title: str
    text: str

    @property
    def content_hash(self) -> str:
        """What decides whether a stored vector is still valid."""
        return hashlib.sha256(f"{self.title}\x1f{self.text}".encode()).hexdigest()


@dataclass(frozen=True)
class Skipped:
    """A file or record that was not indexed, and why."""

    source: str
    reason: str


@dataclass
class CorpusScan:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Files with an extension engine does not read (images, code, ...): not errors.
    ignored: int = 0
    # Files that could not be opened this time (permission, I/O): their previously
    # indexed documents are kept instead of being removed.
    failed_sources: set[str] = field(default_factory=set)


class Unreadable(Exception):
    """A file or record that cannot become a document; the message is the reason."""


def read_corpus(path: str | Path) -> CorpusScan:
    """All documents under ``path`` (a folder, walked recursively, or a single file).

    Hidden files and folders (``.git``, the ``.engine`` index) are not read.
    """
    root = Path(path)
    scan = CorpusScan()
    if root.is_file():
        _read_into(scan, root, root.name)
        return scan
    for file in _walk(root):
        relative = file.relative_to(root).as_posix()
        if file.suffix.lower() not in SUPPORTED_SUFFIXES:
            scan.ignored += 1
            continue
        _read_into(scan, file, relative)
    return scan


def _walk(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _read_into(scan: CorpusScan, file: Path, source: str) -> None:
    suffix = file.suffix.lower()
    try:
        if suffix in JSON_SUFFIXES:
            documents, skipped = read_json_corpus(file, source)
            scan.documents.extend(documents)
            scan.skipped.extend(skipped)
            if not documents and not skipped:
                scan.skipped.append(Skipped(source, "no records"))
            return
        scan.documents.append(read_file_document(file, source))
    except Unreadable as exc:
        scan.skipped.append(Skipped(source, str(exc)))
    except OSError as exc:
        scan.skipped.append(Skipped(source, f"cannot read: {exc.strerror or exc}"))
        scan.failed_sources.add(source)


def read_file_document(file: Path, source: str) -> Document:
    """A text, Markdown, reStructuredText, HTML or PDF file as one document."""
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"too large ({size:,} bytes; limit {MAX_FILE_BYTES:,})")
    suffix = file.suffix.lower()
    if suffix in PDF_SUFFIXES:
        title, text = _read_pdf(file)
    else:
        raw = _decode(file.read_bytes())
        if suffix in HTML_SUFFIXES:
            title, text = _html_text(raw)
        elif suffix in (".md", ".markdown"):
            title, text = _markdown_title(raw)
        else:
            title, text = "", raw.strip()
    if not text and not title:
        raise Unreadable("empty")
    return Document(doc_id=source, source=source, title=title, text=text)


def read_json_corpus(file: Path, source: str) -> tuple[list[Document], list[Skipped]]:
    """BEIR corpus records (``_id``, ``title``, ``text``): JSON lines, or a JSON list/object."""
    documents: list[Document] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()

    def add(record: object, where: str, fallback_id: str) -> None:
        try:
            document = record_document(record, source, fallback_id)
        except Unreadable as exc:
            skipped.append(Skipped(f"{source}:{where}", str(exc)))
            return
        if document.doc_id in seen:
            skipped.append(Skipped(f"{source}:{where}", f"duplicate _id {document.doc_id!r}"))
            return
        seen.add(document.doc_id)
        documents.append(document)

    if file.suffix.lower() == ".json" and file.stat().st_size <= MAX_FILE_BYTES:
        try:
            whole = json.loads(_decode(file.read_bytes()))
        except (Unreadable, ValueError):
            whole = None  # maybe JSON lines under a .json name: read line by line below
        if isinstance(whole, list):
            for number, record in enumerate(whole, start=1):
                add(record, f"record {number}", f"{source}#{number}")
            return documents, skipped
        if isinstance(whole, dict):
            add(whole, "record 1", source)
            return documents, skipped

    with file.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
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
            add(record, where, f"{source}#{number}")
    return documents, skipped


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
    return Document(doc_id=str(raw_id), source=source, title=title.strip(), text=text.strip())


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise Unreadable("binary file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def _markdown_title(raw: str) -> tuple[str, str]:
    """A leading ``# heading`` is the title; the rest is the text."""
    match = _MARKDOWN_HEADING.match(raw)
    if not match:
        return "", raw.strip()
    return match.group(1).strip(), raw[match.end() :].strip()


def _html_text(raw: str) -> tuple[str, str]:
    """The page title and its visible text (no scripts, styles or markup)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for hidden in soup(["script", "style", "noscript", "template", "head"]):
        hidden.decompose()
    text = " ".join(soup.get_text(" ").split())
    return title, text


def _read_pdf(file: Path) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(file))
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise Unreadable(f"unreadable PDF ({exc})") from None
    text = " ".join(" ".join(pages).split())
    if not text:
        raise Unreadable("PDF without extractable text")
    return str(title).strip(), text
