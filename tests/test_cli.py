"""The `engine` command line end to end, with the real default model, FAISS and SQLite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import bench
from engine.app.cli import cli

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "corpus"


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    """The shipped sample corpus, indexed once through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    corpus = shutil.copytree(SAMPLE, root / "corpus")
    index_dir = root / "index"
    result = CliRunner().invoke(cli, ["index", str(corpus), "--index", str(index_dir), "--json"])
    assert result.exit_code == 0, result.output
    return corpus, index_dir, json.loads(result.stdout)


def test_index_summary(sample_index):
    _, _, summary = sample_index
    assert summary["model"] == "all-MiniLM-L6-v2" and summary["max_length"] == 512
    assert summary["added"] == summary["documents"] == 11 and summary["skipped"] == 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how do plants make sugar", "science/photosynthesis.md"),
        ("what happens before a TCP connection carries data", "computing/tcp-handshake.md"),
        ("why does toast turn brown", "maillard"),
    ],
)
def test_query_finds_its_document_first(sample_index, query, expected):
    _, index_dir, _ = sample_index
    result = CliRunner().invoke(cli, ["search", query, "--index", str(index_dir), "--json"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert hits[0]["doc_id"] == expected and hits[0]["rank"] == 1
    assert len(hits) == 10 and hits[0]["score"] >= hits[1]["score"]
    assert set(hits[0]) >= {"rank", "score", "doc_id", "source", "title", "snippet"}


def test_human_output_and_k(sample_index):
    _, index_dir, _ = sample_index
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "how do plants make sugar",
            "--index",
            str(index_dir),
            "-k",
            "2",
            "--instruct",
            "Given a question, retrieve passages that answer it",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "Instruction: Given a question, retrieve passages that answer it"
    assert lines[1].lstrip().startswith("1. ") and "science/photosynthesis.md" in lines[1]
    assert sum(1 for line in lines if line.lstrip()[:3] in ("1. ", "2. ")) == 2


def test_default_instruction_is_stored_and_overridable(sample_index, tmp_path):
    corpus, _, _ = sample_index
    index_dir = tmp_path / "index"
    runner = CliRunner()
    instruction = "Given a cooking question, retrieve recipes"
    runner.invoke(cli, ["index", str(corpus), "--index", str(index_dir), "--instruct", instruction])
    info = json.loads(runner.invoke(cli, ["info", "--index", str(index_dir), "--json"]).stdout)
    assert info["default_instruction"] == instruction and info["documents"] == 11
    stored = runner.invoke(cli, ["search", "rice", "--index", str(index_dir)])
    assert stored.stdout.startswith(f"Instruction: {instruction}")
    bare = runner.invoke(cli, ["search", "rice", "--index", str(index_dir), "--no-instruct"])
    assert "Instruction:" not in bare.stdout
    both = runner.invoke(
        cli, ["search", "rice", "--index", str(index_dir), "--no-instruct", "--instruct", "x"]
    )
    assert both.exit_code == 1 and "exclude each other" in both.stderr


def test_info(sample_index):
    _, index_dir, _ = sample_index
    info = json.loads(CliRunner().invoke(cli, ["info", "--index", str(index_dir), "--json"]).stdout)
    assert (info["model"], info["dim"], info["documents"], info["pooling"]) == (
        "all-MiniLM-L6-v2",
        384,
        11,
        "mean",
    )
    assert info["bytes"] > 0 and len(info["fingerprint"]) == 64


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["index"],
        ["search"],
        ["info"],
        ["serve"],
        ["bench"],
        ["bench", "serve"],
        ["train"],
        ["train", "data"],
    ],
)
def test_help_has_examples(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output


@pytest.mark.parametrize("group", [cli, bench], ids=["engine", "bench"])
def test_lazy_subcommands_are_listed_as_they_are(group):
    """`--help` lists each lazy subcommand by a stored summary: it must be the command's own."""
    listing = CliRunner().invoke(group, ["--help"], terminal_width=200).output
    for name, lazy in group.lazy.items():
        command = lazy.load()
        assert command.name == name
        assert command.get_short_help_str(limit=10_000) == lazy.summary
        assert f"  {name}  " in listing


def test_top_help_imports_no_subcommand():
    """`engine --help` lists the subcommands without importing one of their modules."""
    probe = (
        "import sys; from engine.app.cli import cli\n"
        "try: cli(['--help'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'train', 'indexer')"
        " or m.startswith('engine.app.commands.')), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "Commands:" in result.stdout and "serve" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    for args, message in [
        (["index", str(tmp_path / "missing")], "corpus not found"),
        (["index", str(tmp_path), "--model", str(tmp_path / "nope")], "model folder not found"),
        (["search", "x", "--index", str(tmp_path)], "no index at"),
        (["info", "--index", str(tmp_path)], "no index at"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, args
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


# Runs the CLI in a fresh interpreter and reports which heavy libraries it imported.
COLD_PROBE = """
import json, sys
from engine.app.cli import cli
try:
    cli(sys.argv[1:], prog_name="engine")
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "transformers", "engine.encoder") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["bench", "--help"],
        ["train", "--help"],
        ["search", "--help"],
        ["serve", "--help"],
        ["info", "--json"],
        ["search"],  # an argument error
        ["index", "--no-such-option"],
    ],
)
def test_cold_path_does_not_import_torch(sample_index, args):
    """`engine --help`, `engine info` and argument errors never load torch or transformers."""
    _, index_dir, _ = sample_index
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            COLD_PROBE,
            *args,
            *(["--index", str(index_dir)] if args[0] == "info" else []),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["heavy"] == [], (args, report)
    assert (
        report["code"] in (0, None) if "--json" in args or "--help" in args else report["code"] == 2
    )
    if args[0] == "info":
        assert json.loads(result.stdout)["documents"] == 11
