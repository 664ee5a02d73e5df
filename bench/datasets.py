"""BEIR datasets: names, reading a folder, fetching the official zip; instructions by name.

The task instructions themselves live in :mod:`engine.instructions` (the server offers them too).

A BEIR folder holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
The corpus and the queries are read with the indexer's JSON corpus reader, so a
BEIR document is exactly what ``engine index`` would make of the same file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError
from engine.instructions import INSTRUCTIONS
from indexer.documents import Document, Skipped, read_json_corpus

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_FOLDER = "qrels"

# The official BEIR archive; ENGINE_BEIR_URL overrides it (a mirror, or a file:// URL in tests).
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DOWNLOAD_TIMEOUT_SECONDS = 60

# BEIR folder (and zip) names of the canonical datasets.
BEIR_FOLDERS: dict[str, str] = {
    "ArguAna": "arguana",
    "ClimateFEVER": "climate-fever",
    "CQADupStack": "cqadupstack",
    "DBPedia": "dbpedia-entity",
    "FEVER": "fever",
    "FiQA2018": "fiqa",
    "HotpotQA": "hotpotqa",
    "MSMARCO": "msmarco",
    "NFCorpus": "nfcorpus",
    "NQ": "nq",
    "QuoraRetrieval": "quora",
    "SCIDOCS": "scidocs",
    "SciFact": "scifact",
    "Touche2020": "webis-touche2020",
    "TRECCOVID": "trec-covid",
}

# Other spellings seen in MTEB and papers.
EXTRA_ALIASES: dict[str, str] = {
    "climatefever": "ClimateFEVER",
    "dbpediaentity": "DBPedia",
    "fiqa": "FiQA2018",
    "naturalquestions": "NQ",
    "naturalquestion": "NQ",
    "quora": "QuoraRetrieval",
    "touche": "Touche2020",
    "webistouche2020": "Touche2020",
    "treccovid": "TRECCOVID",
}

# Datasets whose queries are also documents: BEIR never counts a query's own id as a hit.
IDENTICAL_ID_DATASETS = frozenset({"ArguAna", "QuoraRetrieval"})

# Evaluated on another split than ``test`` by default.
DEFAULT_SPLITS = {"MSMARCO": "dev"}


class UnknownDataset(EngineError, KeyError):
    """A dataset name with no known instruction (a KeyError too, for lookups)."""

    __str__ = Exception.__str__


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _alias_table() -> dict[str, str]:
    table = {_key(canonical): canonical for canonical in INSTRUCTIONS}
    table.update({_key(folder): canonical for canonical, folder in BEIR_FOLDERS.items()})
    table.update(EXTRA_ALIASES)
    return table


ALIASES = _alias_table()


def canonical_name(name: str) -> str:
    """``scifact`` -> ``SciFact``: BEIR folder names and MTEB names, case-insensitive.

    CQADupStack sub-forums (``cqadupstack/android``, ``CQADupstackAndroidRetrieval``)
    are CQADupStack.
    """
    key = _key(name)
    if key in ALIASES:
        return ALIASES[key]
    if key.startswith("cqadupstack"):
        return "CQADupStack"
    if key.endswith("retrieval") and key[: -len("retrieval")] in ALIASES:
        return ALIASES[key[: -len("retrieval")]]
    raise UnknownDataset(
        f"unknown BEIR dataset {name!r} (known: {', '.join(sorted(BEIR_FOLDERS.values()))})"
    )


def instruction_for(name: str) -> str:
    """The paper's query instruction for a dataset (canonical or BEIR folder name)."""
    return INSTRUCTIONS[canonical_name(name)]


def ignores_identical_ids(name: str) -> bool:
    """True where a query's own id must not count as a hit (ArguAna, Quora)."""
    try:
        return canonical_name(name) in IDENTICAL_ID_DATASETS
    except UnknownDataset:
        return False


def default_split(name: str) -> str:
    """``dev`` for MS MARCO (its test split is TREC DL), ``test`` for everything else."""
    try:
        return DEFAULT_SPLITS.get(canonical_name(name), "test")
    except UnknownDataset:
        return "test"


def dataset_name(folder: Path) -> str:
    """The name a dataset folder goes by: ``scifact``, or ``cqadupstack/android`` for a sub-forum."""
    folder = Path(folder).resolve()
    parent = folder.parent.name
    if parent and _key(parent) == "cqadupstack":
        return f"{parent}/{folder.name}"
    return folder.name


def known_name(folder: Path) -> str | None:
    """The canonical name for a dataset folder, or None for a folder BEIR does not name."""
    try:
        return canonical_name(dataset_name(folder))
    except UnknownDataset:
        return None


@dataclass
class BeirDataset:
    """One split of a BEIR dataset, as the benchmark evaluates it."""

    name: str
    folder: Path
    split: str
    corpus: list[Document]
    # Only the split's queries that have judgements, in file order.
    queries: dict[str, str]
    # query id -> document id -> graded relevance (score 0 rows kept, as BEIR does).
    qrels: dict[str, dict[str, int]]
    skipped: list[Skipped] = field(default_factory=list)


def is_beir_folder(folder: Path) -> bool:
    return (Path(folder) / CORPUS_FILE).is_file()


def available_splits(folder: Path) -> list[str]:
    return sorted(p.stem for p in (Path(folder) / QRELS_FOLDER).glob("*.tsv"))


def load_beir(folder: str | Path, split: str | None = None) -> BeirDataset:
    """Read a BEIR folder: the whole corpus, the split's judged queries and its qrels.

    ``split`` None means the dataset's default split (``test``; ``dev`` for MS MARCO).
    """
    folder = Path(folder)
    name = dataset_name(folder)
    split = split or default_split(name)
    if not folder.is_dir():
        raise EngineError(f"BEIR dataset folder not found: {folder}")
    for required in (CORPUS_FILE, QUERIES_FILE):
        if not (folder / required).is_file():
            raise EngineError(f"{folder} is not a BEIR dataset folder: no {required}")
    qrels_path = folder / QRELS_FOLDER / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        raise EngineError(
            f"{folder} has no {split!r} split (qrels/{split}.tsv); "
            f"available: {', '.join(splits) or 'none'}"
        )
    qrels = read_qrels(qrels_path)
    corpus, skipped = read_json_corpus(folder / CORPUS_FILE, CORPUS_FILE)
    if not corpus:
        raise EngineError(f"{folder / CORPUS_FILE} holds no readable documents")
    query_records, skipped_queries = read_json_corpus(folder / QUERIES_FILE, QUERIES_FILE)
    queries = {q.doc_id: q.text for q in query_records if q.doc_id in qrels}
    if not queries:
        raise EngineError(f"{folder}: no query in {QUERIES_FILE} has judgements in {qrels_path}")
    # Judgements for queries that have no text cannot be evaluated.
    qrels = {qid: rels for qid, rels in qrels.items() if qid in queries}
    return BeirDataset(
        name=name,
        folder=folder,
        split=split,
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        skipped=skipped + skipped_queries,
    )


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` lines (header optional) -> nested dict."""
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if number == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise EngineError(f"{path}:{number}: expected query-id, corpus-id, score")
            try:
                score = int(parts[2])
            except ValueError:
                raise EngineError(
                    f"{path}:{number}: score {parts[2]!r} is not an integer"
                ) from None
            qrels.setdefault(parts[0], {})[parts[1]] = score
    if not qrels:
        raise EngineError(f"{path} holds no judgements")
    return qrels


# ------------------------------------------------------------------ locating
def is_offline() -> bool:
    """Offline when told so (ENGINE_OFFLINE / HF_HUB_OFFLINE), so no download is even tried."""
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("ENGINE_OFFLINE", "HF_HUB_OFFLINE")
    )


def download_url(folder_name: str) -> str:
    return os.environ.get("ENGINE_BEIR_URL", BEIR_URL).format(name=folder_name)


def locate_dataset(name: str, data_dir: Path | None, download_dir: Path) -> Path:
    """The folder of dataset ``name``: under ``data_dir``, in the download cache, or downloaded.

    Offline (or when the download fails) the error names the folder to provide.
    """
    candidates = [Path(data_dir) / name] if data_dir is not None else []
    candidates.append(download_dir / name)
    for candidate in candidates:
        if is_beir_folder(candidate) or _is_group(candidate):
            return candidate
    wanted = candidates[0]
    try:
        folder_name = BEIR_FOLDERS[canonical_name(name)]
    except UnknownDataset:
        raise EngineError(
            f"BEIR dataset {name!r} not found: no {wanted / CORPUS_FILE} "
            "(and it is not a dataset BEIR publishes)"
        ) from None
    url = download_url(folder_name)
    provide = f"provide the BEIR folder {wanted} (corpus.jsonl, queries.jsonl, qrels/) from {url}"
    if is_offline():
        raise EngineError(
            f"BEIR dataset {name!r} is not on disk and this machine is offline: {provide}"
        )
    try:
        return download_dataset(folder_name, url, download_dir)
    except (OSError, urllib.error.URLError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise EngineError(
            f"BEIR dataset {name!r} is not on disk and could not be downloaded ({reason}): {provide}"
        ) from None


def _is_group(folder: Path) -> bool:
    """A folder of datasets (CQADupStack's sub-forums)."""
    return folder.is_dir() and any(is_beir_folder(sub) for sub in folder.iterdir())


def expand_group(folder: Path) -> list[Path]:
    """A dataset folder, or the dataset sub-folders of a group such as ``cqadupstack``."""
    if is_beir_folder(folder):
        return [folder]
    return sorted(sub for sub in folder.iterdir() if is_beir_folder(sub))


def download_dataset(folder_name: str, url: str, download_dir: Path) -> Path:
    """Fetch and unpack the BEIR zip into ``download_dir/<name>`` (atomic: all or nothing)."""
    download_dir.mkdir(parents=True, exist_ok=True)
    target = download_dir / folder_name
    with tempfile.TemporaryDirectory(dir=download_dir, prefix=f".{folder_name}-") as tmp:
        archive = Path(tmp) / f"{folder_name}.zip"
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            with archive.open("wb") as out:
                shutil.copyfileobj(response, out, length=2**20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                resolved = (unpacked / member).resolve()
                if not resolved.is_relative_to(unpacked.resolve()):
                    raise zipfile.BadZipFile(f"unsafe path in archive: {member}")
            bundle.extractall(unpacked)
        # The official zips hold one top folder named like the dataset.
        inner = unpacked / folder_name
        source = inner if inner.is_dir() else unpacked
        if not (is_beir_folder(source) or _is_group(source)):
            raise zipfile.BadZipFile(f"{url} does not hold a BEIR dataset folder")
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
    return target
