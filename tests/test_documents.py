"""Reading a corpus: every supported format, and bad input that must never stop a run."""

from __future__ import annotations

import json

from click.testing import CliRunner

from engine.app.cli import cli
from indexer.documents import Document, read_corpus
from indexer.store import Store


def test_every_format_becomes_documents(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Plain text body.\n")
    (tmp_path / "b.md").write_text("# Heading Title\n\nMarkdown body.")
    (tmp_path / "c.rst").write_text("Restructured\n============\n\nBody.")
    (tmp_path / "d.html").write_text(
        "<html><head><title>Page</title><script>var hidden = 1;</script>"
        "<style>p {color: red}</style></head><body><p>Visible <b>words</b>.</p></body></html>"
    )
    (tmp_path / "e.jsonl").write_text(
        json.dumps({"_id": "r1", "title": "T1", "text": "first"})
        + "\n\n"
        + json.dumps({"_id": 7, "text": "second"})
        + "\n"
    )
    (tmp_path / "f.json").write_text(json.dumps([{"_id": "x", "title": "", "text": "list item"}]))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("never read")

    scan = read_corpus(tmp_path)
    docs = {d.doc_id: d for d in scan}
    assert set(docs) == {"notes/a.txt", "b.md", "c.rst", "d.html", "r1", "7", "x"}
    assert docs["b.md"].title == "Heading Title" and docs["b.md"].text == "Markdown body."
    assert docs["d.html"].title == "Page" and docs["d.html"].text == "Visible words ."
    assert "hidden" not in docs["d.html"].text and "color" not in docs["d.html"].text
    assert (docs["r1"].source, docs["r1"].title, docs["r1"].text) == ("e.jsonl", "T1", "first")
    assert scan.ignored == 1 and scan.skipped == []


def test_reader_is_lazy_and_its_reports_fill_as_it_goes(tmp_path):
    """A file is read when the walk reaches it, a JSON lines file line by line."""
    from indexer.documents import Skipped

    (tmp_path / "a.txt").write_text("Tides follow the moon.")
    (tmp_path / "b.txt").write_bytes(b"\x00 binary")
    (tmp_path / "c.txt").write_text("written before the walk")
    lines = [json.dumps({"_id": f"r{n}", "text": f"record {n}"}) + "\n" for n in range(3)]
    (tmp_path / "d.jsonl").write_text("".join(lines))
    scan = read_corpus(tmp_path)
    assert scan.size() == sum(f.stat().st_size for f in tmp_path.iterdir())
    documents = iter(scan)
    assert next(documents).doc_id == "a.txt"
    assert (scan.skipped, scan.bytes_read) == ([], len("Tides follow the moon."))
    (tmp_path / "c.txt").write_text("changed after the walk began")
    assert next(documents).text == "changed after the walk began"
    assert scan.skipped == [Skipped("b.txt", "binary file")]
    before = scan.bytes_read
    assert next(documents).doc_id == "r0" and scan.bytes_read == before + len(lines[0])
    assert [d.doc_id for d in documents] == ["r1", "r2"]
    assert scan.bytes_read == scan.size()
    assert [d.doc_id for d in scan] == ["a.txt", "c.txt", "r0", "r1", "r2"]  # a new pass
    assert len(scan.skipped) == 1


def test_content_hash_follows_title_and_text():
    a = Document("id", "src", "title", "text")
    assert a.content_hash == Document("other", "elsewhere", "title", "text").content_hash
    assert a.content_hash != Document("id", "src", "title", "text!").content_hash
    assert a.content_hash != Document("id", "src", "", "title text").content_hash


def test_bad_files_are_skipped_with_reasons(tmp_path):
    (tmp_path / "good.txt").write_text("Photosynthesis makes sugar in leaves.")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02 binary \x00 bytes")
    (tmp_path / "empty.md").write_text("   \n\n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "does-not-exist.txt")
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "ok1", "text": "a fine record"}\n'
        '{"_id": "bad", "text": \n'
        '["not", "an", "object"]\n'
        '{"_id": "notext", "title": "no text field"}\n'
        '{"_id": "ok1", "text": "duplicate id"}\n'
        '{"_id": "ok2", "title": "Second", "text": "another fine record"}\n'
    )
    scan = read_corpus(tmp_path)
    assert sorted(d.doc_id for d in scan) == ["good.txt", "ok1", "ok2"]
    reasons = {s.source: s.reason for s in scan.skipped}
    assert reasons["binary.txt"] == "binary file"
    assert reasons["empty.md"] == "empty"
    assert reasons["broken.pdf"].startswith("unreadable PDF")
    # pypdf's complaint goes into the report, not onto stderr.
    assert ("broken.pdf", "EOF marker not found") in {(n.source, n.message) for n in scan.notes}
    assert reasons["gone.txt"].startswith("cannot read")
    assert reasons["corpus.jsonl:line 2"].startswith("invalid JSON")
    assert reasons["corpus.jsonl:line 3"] == "not a JSON object"
    assert reasons["corpus.jsonl:line 4"] == "no 'text' string"
    assert reasons["corpus.jsonl:line 5"] == "duplicate _id 'ok1'"
    assert scan.failed_sources == {"gone.txt"}


def test_other_encodings_are_detected_and_true_binaries_skipped(tmp_path):
    french = "Le café crème est servi chaud. Les élèves préfèrent le thé à la menthe. " * 4
    (tmp_path / "latin1.txt").write_bytes(french.encode("latin-1"))
    quotes = "\u201cSmart quotes\u201d \u2013 and a euro sign: \u20ac 5, na\u00efve caf\u00e9. " * 4
    (tmp_path / "cp1252.md").write_bytes(("# Notes\n" + quotes).encode("cp1252"))
    (tmp_path / "utf16.txt").write_bytes("Grüße aus Köln".encode("utf-16"))
    (tmp_path / "random.txt").write_bytes(bytes(range(256)) * 8)
    scan = read_corpus(tmp_path)
    docs = {d.doc_id: d for d in scan}
    assert docs["latin1.txt"].text == french.strip()
    assert docs["cp1252.md"].title == "Notes" and docs["cp1252.md"].text == quotes.strip()
    assert docs["utf16.txt"].text == "Grüße aus Köln"
    assert {s.source: s.reason for s in scan.skipped} == {"random.txt": "binary file"}


def test_large_text_file_is_read_by_its_head(tmp_path):
    """Only what the first max_tokens tokens can need is read; the file is not skipped."""
    from indexer.documents import BYTES_PER_TOKEN

    line = "Sediment settles where the river meets the sea and builds a delta. "
    (tmp_path / "huge.txt").write_text("START " + line * 200_000)  # ~13 MB
    (tmp_path / "huge.md").write_text("# Délta\n" + "é" * (64 * BYTES_PER_TOKEN))  # cut mid-char?
    scan = read_corpus(tmp_path, max_tokens=64)
    docs = {d.doc_id: d for d in scan}
    assert scan.skipped == []
    head = docs["huge.txt"].text
    assert head.startswith("START Sediment") and len(head.encode()) <= 64 * BYTES_PER_TOKEN
    assert len(head) > 64 * 4  # more than 64 tokens' worth of English
    assert docs["huge.md"].title == "Délta" and set(docs["huge.md"].text) == {"é"}
    bigger = list(read_corpus(tmp_path, max_tokens=128))
    assert len(next(d for d in bigger if d.doc_id == "huge.txt").text) > len(head)


def test_pipes_sockets_and_devices_are_skipped_not_opened(tmp_path):
    import os
    import socket

    (tmp_path / "good.txt").write_text("Tides follow the moon.")
    os.mkfifo(tmp_path / "pipe.txt")  # opening it for reading would block forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.md"))
    (tmp_path / "device.txt").symlink_to("/dev/zero")
    try:
        scan = read_corpus(tmp_path)
    finally:
        server.close()
    assert [d.doc_id for d in scan] == ["good.txt"]
    assert {s.source: s.reason for s in scan.skipped} == {
        "pipe.txt": "not a regular file (named pipe)",
        "socket.md": "not a regular file (socket)",
        "device.txt": "not a regular file (character device)",
    }
    alone = read_corpus(tmp_path / "pipe.txt")  # a pipe given as the corpus itself
    assert list(alone) == []
    assert [s.reason for s in alone.skipped] == ["not a regular file (named pipe)"]


def test_cli_indexes_good_files_and_reports_the_rest(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "plants.txt").write_text("Photosynthesis lets plants make sugar from light.")
    (corpus / "tcp.md").write_text("# TCP\nThe handshake is SYN, SYN-ACK, ACK.")
    (corpus / "binary.txt").write_bytes(b"\x00\xff\x00")
    (corpus / "bad.jsonl").write_text('{"_id": "1", "text": "ok record about volcanoes"}\n{oops\n')
    index_dir = tmp_path / "index"
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir), "--verbose"])
    assert result.exit_code == 0, result.output
    assert "Skipped 2 unreadable files or records" in result.stdout
    assert "binary.txt: binary file" in result.stdout
    assert "bad.jsonl:line 2: invalid JSON" in result.stdout

    report = runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir), "--json"])
    summary = json.loads(report.stdout)
    assert (summary["documents"], summary["encoded"], summary["skipped"]) == (3, 0, 2)
    assert {d["source"] for d in summary["skipped_detail"]} == {"binary.txt", "bad.jsonl:line 2"}
    store = Store.open(index_dir)
    assert store.load_faiss().ntotal == store.count() == 3


def test_unreadable_file_keeps_its_indexed_documents(tmp_path, default_encoder):
    """A file that cannot be opened this time is not taken as deleted."""
    from indexer.indexing import update_index

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "keep.txt").write_text("Tides follow the moon.")
    target = corpus / "flaky.txt"
    target.write_text("Basalt lava builds shield volcanoes.")
    index_dir = tmp_path / "index"
    update_index(index_dir, default_encoder, read_corpus(corpus), progress=False)

    target.unlink()
    target.symlink_to(corpus / "missing-target.txt")  # now fails to open, like a permission error
    scan = read_corpus(corpus)
    report = update_index(
        index_dir,
        default_encoder,
        scan,
        keep_sources=scan.failed_sources,
        progress=False,
    )
    assert report.removed == 0 and report.kept_sources == ["flaky.txt"]
    assert sorted(Store.open(index_dir).doc_ids().values()) == ["flaky.txt", "keep.txt"]


def test_html_streams_through_its_visible_text(tmp_path):
    """For passages an HTML page is parsed piece by piece: the same title and text as the page
    read whole, whatever a piece boundary cuts (a tag, an entity, a script), and only the
    head is held however long the page is."""
    import tracemalloc

    block = (
        "<div class='post'><p>Pumps need <b>weekly</b> checks &amp; fresh oil.</p>"
        "<script>var a = '<p>not text</p>';</script><style>p {color: red}</style>"
        "<noscript>hidden</noscript><p>Valves&nbsp;open slowly.</p></div>\n"
    )
    page = tmp_path / "corpus" / "manual.html"
    page.parent.mkdir()
    with page.open("w") as out:
        out.write("<html><head><title>Pump manual</title><style>b {}</style></head><body>")
        for _ in range(40_000):  # ~9 MB of markup
            out.write(block)
        out.write("<p>The last line.</p></body></html>")
    size = page.stat().st_size

    whole = list(read_corpus(page.parent, max_tokens=10**7))[0]  # the head: one string
    tracemalloc.start()
    try:
        (streamed,) = list(read_corpus(page.parent, max_tokens=10**7, whole=True))
        assert streamed.title == whole.title == "Pump manual"
        assert len(streamed.text) < 2**17  # only the head is held
        length = words = 0
        first = last = ""
        for piece in streamed.stream():
            first = first or piece
            length += len(piece)
            words += len(piece.split())
            last = piece
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = "Pumps need weekly checks & fresh oil. Valves open slowly."  # &nbsp; is a space
    assert first.startswith(expected + " " + expected)
    assert "not text" not in first and "hidden" not in first and "color" not in first
    assert last.endswith("The last line.")
    assert words == 40_000 * len(expected.split()) + 3
    assert "".join(streamed.stream()) == whole.text  # parsed whole or in pieces: the same
    assert peak < size / 4, f"{peak / 2**20:.1f} MiB held for a {size / 2**20:.0f} MiB page"


def test_html_with_broken_marked_sections_is_read_not_fatal(tmp_path):
    """``<![`` constructs the parser does not know (Word's ``<![if ...]>``, a stray ``<![ x``)
    are skipped, read whole or streamed: never an exception in the middle of a run."""
    page = tmp_path / "corpus" / "word.html"
    page.parent.mkdir()
    page.write_text(
        "<html><body><p>Before.</p><![if !supportLists]>1.<![endif]> Kept <![ x > "
        + "<p>filler words here</p>" * 5000
        + "<p>After.</p></body></html>"
    )
    (whole,) = list(read_corpus(page.parent, max_tokens=10**6))
    (streamed,) = list(read_corpus(page.parent, max_tokens=10**6, whole=True))
    text = "".join(streamed.stream())
    assert text == whole.text
    assert text.startswith("Before. 1. Kept filler words here") and text.endswith("After.")
