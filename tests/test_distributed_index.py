"""Distributed indexing: real `torchrun` with 2 gloo ranks on CPU, one writer, the real default model."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.distributed import balance_by_tokens
from indexer.documents import read_corpus
from indexer.indexing import update_index
from indexer.store import Store
from tests.test_index import assert_consistent

WORDS = (
    "plants absorb sunlight water energy volcano lava erupts router forwards packets bread dough "
    "rises yeast chess king castles rook river carves valley star emits photons bee pollinates"
).split()


def write_corpus(folder: Path, count: int, seed: int = 0, longest: int = 120) -> Path:
    """Files of very different lengths, so balancing by tokens differs from balancing by count."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, longest))]
        (folder / f"doc{n:03}.txt").write_text(" ".join(words) + ".")
    return folder


def vectors_by_document(index_dir: Path) -> dict[str, np.ndarray]:
    store = Store.open(index_dir)
    rows = store.db.execute(
        "SELECT d.doc_id, v.vector FROM documents d JOIN vectors v ON v.id = d.id"
    ).fetchall()
    store.close()
    return {doc_id: np.frombuffer(blob, dtype=np.float32) for doc_id, blob in rows}


def torchrun(*args: str, checkpoint: int = 4, **popen) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m engine index ...` as a user runs it."""
    env = {**os.environ, "ENGINE_CHECKPOINT_DOCUMENTS": str(checkpoint), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    return subprocess.Popen(
        [*command, "2", "-m", "engine", "index", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_json(*args: str, **kwargs) -> dict:
    process = torchrun(*args, "--json", **kwargs)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout  # only the writer reports
    return json.loads(lines[0])


def test_balance_by_tokens_evens_out_tokens_not_counts():
    lengths = [10, 500, 10, 10, 10, 400, 10, 10, 10, 10]
    shares = balance_by_tokens(range(len(lengths)), lengths, 2)
    assert sorted(p for share in shares for p in share) == list(range(len(lengths)))
    assert sorted(shares, key=len) == [[1], [5, 0, 2, 3, 4, 6, 7, 8, 9]]  # 500 vs 480 tokens
    # A writer busy committing takes a smaller share, or none.
    assert balance_by_tokens(range(10), lengths, 3, writer_share=0.0)[0] == []
    half = balance_by_tokens(range(100), [10] * 100, 3, writer_share=0.5)
    assert [len(share) for share in half] == [20, 40, 40]


@pytest.mark.slow
def test_two_ranks_build_the_single_process_index(tmp_path, default_encoder):
    corpus = write_corpus(tmp_path / "corpus", 30)
    single = tmp_path / "single"
    update_index(single, default_encoder, read_corpus(corpus), progress=False)

    distributed = tmp_path / "distributed"
    first = run_json(str(corpus), "--index", str(distributed))
    assert (first["ranks"], first["added"], first["documents"]) == (2, 30, 30)
    expected, got = vectors_by_document(single), vectors_by_document(distributed)
    assert got.keys() == expected.keys()
    for doc_id, vector in expected.items():
        np.testing.assert_allclose(got[doc_id], vector, atol=1e-5)
    assert_consistent(distributed, set(expected))

    # Incremental as ever: nothing pending -> nothing encoded; one change -> one encoded.
    second = run_json(str(corpus), "--index", str(distributed))
    assert (second["encoded"], second["unchanged"], second["removed"]) == (0, 30, 0)
    (corpus / "doc003.txt").write_text("Bees pollinate flowers in spring.")
    (corpus / "doc007.txt").unlink()
    third = run_json(str(corpus), "--index", str(distributed))
    assert (third["updated"], third["added"], third["removed"], third["encoded"]) == (1, 0, 1, 1)
    assert_consistent(distributed, set(expected) - {"doc007.txt"})


def passages_by_document(index_dir: Path) -> dict[tuple[str, int], tuple[tuple, np.ndarray]]:
    """(doc id, position) -> ((token and character offsets), vector) of every passage."""
    store = Store.open(index_dir)
    rows = store.db.execute(
        "SELECT d.doc_id, p.position, p.token_start, p.token_end, p.char_start, p.char_end, "
        "v.vector FROM passages p JOIN documents d ON d.id = p.document "
        "JOIN vectors v ON v.id = p.id"
    ).fetchall()
    store.close()
    return {(r[0], r[1]): (tuple(r[2:6]), np.frombuffer(r[6], dtype=np.float16)) for r in rows}


@pytest.mark.slow
def test_two_ranks_build_the_single_process_index_of_passages(tmp_path, default_encoder):
    """`torchrun ... engine index --passages`: the ranks encode the passages, the writer
    commits each document's passages together; the same passages and vectors as one process."""
    from indexer.passages import PassageSpec

    corpus = write_corpus(tmp_path / "corpus", 12, seed=2, longest=400)
    (corpus / "repeated.txt").write_text("the same log line again. " * 80)  # encoded once
    single = tmp_path / "single"
    update_index(single, default_encoder, read_corpus(corpus, whole=True),
                 passages=PassageSpec(64, 8), progress=False)  # fmt: skip
    distributed = tmp_path / "distributed"
    first = run_json(str(corpus), "--index", str(distributed), "--passages", "64",
                     "--passage-overlap", "8")  # fmt: skip
    assert (first["ranks"], first["added"], first["documents"]) == (2, 13, 13)
    expected, got = passages_by_document(single), passages_by_document(distributed)
    assert got.keys() == expected.keys() and first["passages"] == len(expected) > 13
    for key, (offsets, vector) in expected.items():
        assert got[key][0] == offsets
        np.testing.assert_allclose(got[key][1], vector, atol=2e-3)
    (corpus / "doc003.txt").write_text("Bees pollinate flowers in spring.")
    second = run_json(str(corpus), "--index", str(distributed))  # keeps the stored setting
    assert (second["updated"], second["unchanged"], second["passages"]) == (1, 12, 1)
    assert [k for k in passages_by_document(distributed) if k[0] == "doc003.txt"] == [
        ("doc003.txt", 0)
    ]


@pytest.mark.slow
def test_killed_rank_leaves_a_sound_index_and_the_next_run_finishes(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", 80, seed=1, longest=250)
    index_dir = tmp_path / "index"
    process = torchrun(str(corpus), "--index", str(index_dir), "--json", checkpoint=2)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        if committed(index_dir) > 0:
            victim = rank_pid(process.pid, rank=1)
    assert victim is not None, "no checkpoint was committed before the run ended"
    os.kill(victim, signal.SIGKILL)
    process.communicate(timeout=120)
    assert process.returncode != 0  # torchrun stopped the job, the writer with it

    kept = committed(index_dir)
    assert 0 < kept < 80 and kept % 4 == 0  # whole rounds of 2 documents x 2 ranks
    assert_consistent(index_dir, set(vectors_by_document(index_dir)))
    resumed = run_json(str(corpus), "--index", str(index_dir))
    assert (resumed["unchanged"], resumed["added"]) == (kept, 80 - kept)
    assert_consistent(index_dir, {f"doc{n:03}.txt" for n in range(80)})


def committed(index_dir: Path) -> int:
    try:
        store = Store.open(index_dir)
    except Exception:  # not published yet
        return 0
    try:
        return store.count()
    finally:
        store.close()


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's worker process with this RANK."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_bench_beir_under_torchrun(tmp_path):
    """`torchrun -m engine bench beir`: the ranks encode, rank 0 scores and writes the results."""
    data = tmp_path / "tiny"
    write_corpus(tmp_path / "texts", 12)
    (data / "qrels").mkdir(parents=True)
    with (data / "corpus.jsonl").open("w") as corpus:
        for n, path in enumerate(sorted((tmp_path / "texts").iterdir())):
            corpus.write(json.dumps({"_id": f"d{n}", "title": "", "text": path.read_text()}) + "\n")
    (data / "queries.jsonl").write_text(
        json.dumps({"_id": "q0", "text": "bees and flowers"}) + "\n"
    )
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td3\t1\n")
    env = {**os.environ, "ENGINE_CHECKPOINT_DOCUMENTS": "2", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    done = subprocess.run(
        [*command, "2", "-m", "engine", "bench", "beir", "--data-dir", str(data)]
        + ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ranks"] == 2
    index = summary["datasets"][0]["index"]
    assert (index["ranks"], index["encoded"], index["documents"]) == (2, 12, 12)
    assert 0 <= summary["datasets"][0]["metrics"]["ndcg@10"] <= 1
