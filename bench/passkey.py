"""`engine bench passkey`: the paper's personalized passkey retrieval test (its Figures 4 and 5).

For each context length, 100 documents of filler text, each exactly that many
tokens long (as :meth:`Encoder.tokenize` counts them, special tokens included),
hide one person's name and passkey at a random position. A query asks for one
person's passkey; it is answered when that person's document ranks first.
A model that cannot take the whole document sees only its first
``model_max_positions`` tokens, so it can find the person only when the passkey
sentence landed inside that window: the table counts those cases to check the
curve against.

``--passages TOKENS`` runs the same documents and queries through engine's own
passage index beside it (``engine index --passages``: windows of TOKENS tokens, a
document scored by its best passage), searched in each mode from one index: hybrid
(what ``engine search`` does by default), dense and lexical. The model-only curve stays
the paper's protocol. Why dense alone misses: each length also scores the passkey
sentences alone (the model tells every name apart there) and counts the misses whose
first passage holds another person's passkey, and the sentences no window cuts in two.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from bench.common import command_line, file_slug, machine
from engine.encoder import Encoder
from engine.errors import EngineError
from engine.options import (
    batch_tokens_option,
    device_option,
    json_option,
    model_option,
    passage_options,
    quiet_option,
    results_dir_option,
)
from indexer.passages import passage_spec

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_INSTRUCTION = (
    "Given a person's name, retrieve the document that contains that person's passkey"
)
CONTEXT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_DOCUMENTS = 100
DEFAULT_QUERIES = 50

FIRST_NAMES = (
    "Alice Bob Carmen David Elena Farid Grace Hiroshi Ingrid Jamal Kavya Liam Mei Nikolai Olivia "
    "Pedro Quinn Rosa Samir Tanya Umar Vera Walter Ximena Yusuf Zoe Anders Beatriz Chidi Dmitri"
).split()
LAST_NAMES = (
    "Anderson Bianchi Chen Dubois Eriksson Fernandez Garcia Hoffmann Ivanova Jensen Kowalski Lopez "
    "Murphy Nakamura Okafor Petrov Quintero Rossi Schmidt Tanaka Umarov Varga Wagner Xu Yilmaz "
    "Zhang Abara Brennan Costa Dalton"
).split()


def passkey_sentence(name: str, passkey: str) -> str:
    return f"{name}'s passkey is {passkey}. Remember it. {passkey} is the passkey of {name}."


def passkey_query(name: str) -> str:
    return f"What is the passkey of {name}?"


@dataclass
class PasskeyTask:
    """The documents and queries for one context length."""

    length: int
    documents: list[str]
    names: list[str]
    passkeys: list[str]
    # Token span [start, end) of the inserted passkey sentence in each document.
    spans: list[tuple[int, int]]
    queries: list[str]
    targets: list[int]  # index of the right document for each query


class _Filler:
    """The filler in token ids, so a stretch of exactly ``n`` filler tokens is easy to cut."""

    def __init__(self, tokenizer, tokens_needed: int) -> None:
        self.tokenizer = tokenizer
        piece = tokenizer(FILLER, add_special_tokens=False)["input_ids"]
        repeats = tokens_needed // max(len(piece), 1) + 2
        self.ids = tokenizer(" ".join([FILLER] * repeats), add_special_tokens=False)["input_ids"]

    def text(self, start: int, count: int) -> str:
        if count <= 0:
            return ""
        return self.tokenizer.decode(self.ids[start : start + count]).strip()


class _Counter:
    """Token counts exactly as the encoder will feed a text (special tokens included)."""

    def __init__(self, encoder, ceiling: int) -> None:
        self.encoder = encoder
        self.ceiling = ceiling
        probe_plain = encoder.tokenizer("passkey", add_special_tokens=False)["input_ids"]
        probe_full = encoder.tokenize(["passkey"], max_length=64)[0]
        self.special = len(probe_full) - len(probe_plain)
        # Special tokens before the text (BOS, [CLS]) and after it (EOS, [SEP]).
        self.leading = probe_full.index(probe_plain[0])
        self.trailing = self.special - self.leading

    def full(self, text: str) -> int:
        return len(self.encoder.tokenize([text], max_length=self.ceiling)[0])

    def plain(self, text: str) -> int:
        if not text:
            return 0
        return len(self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"])


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _exact_document(
    counter: _Counter, filler: _Filler, sentence: str, target: int, before: int
) -> str:
    """A document of exactly ``target`` tokens with ``sentence`` after ``before`` filler tokens.

    Tokenisation is not quite additive (pieces merge at the joins), so the filler
    after the sentence is corrected until the count is exact.
    """
    content = target - counter.special
    after = max(content - counter.plain(sentence) - before, 0)
    prefix = filler.text(0, before)
    tried: set[int] = set()
    for _ in range(12):
        text = _join(prefix, sentence, filler.text(before, after))
        difference = target - counter.full(text)
        if difference == 0:
            return text
        tried.add(after)
        step = max(after + difference, 0)
        if step in tried:
            break
        after = step
    for candidate in sorted(range(max(after - 4, 0), after + 5), key=lambda n: abs(n - after)):
        text = _join(prefix, sentence, filler.text(before, candidate))
        if counter.full(text) == target:
            return text
    raise EngineError(f"cannot build a passkey document of exactly {target} tokens")


def unique_names(rng: random.Random, count: int) -> list[str]:
    pool = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    if count > len(pool):
        raise EngineError(f"at most {len(pool)} documents (one unique name each), not {count}")
    return rng.sample(pool, count)


def build_passkey_task(
    encoder,
    length: int,
    *,
    documents: int = DEFAULT_DOCUMENTS,
    queries: int = DEFAULT_QUERIES,
    seed: int = 0,
) -> PasskeyTask:
    """Documents of exactly ``length`` tokens, one name and passkey each at a random place."""
    if queries > documents:
        raise EngineError(f"--queries ({queries}) cannot exceed --documents ({documents})")
    rng = random.Random(f"passkey-{seed}-{length}")
    counter = _Counter(encoder, ceiling=2 * length + 64)
    names = unique_names(rng, documents)
    passkeys = [str(key) for key in rng.sample(range(10000, 100000), documents)]
    filler = _Filler(encoder.tokenizer, length)
    texts, spans = [], []
    for name, passkey in zip(names, passkeys, strict=True):
        sentence = passkey_sentence(name, passkey)
        sentence_tokens = counter.plain(sentence)
        room = length - counter.special - sentence_tokens
        if room < 0:
            raise EngineError(f"{length} tokens is too short for a passkey sentence")
        before = rng.randint(0, room)
        text = _exact_document(counter, filler, sentence, length, before)
        start = counter.leading + counter.plain(filler.text(0, before))
        texts.append(text)
        spans.append((start, start + sentence_tokens))
    targets = rng.sample(range(documents), queries)
    return PasskeyTask(
        length=length,
        documents=texts,
        names=names,
        passkeys=passkeys,
        spans=spans,
        queries=[passkey_query(names[t]) for t in targets],
        targets=targets,
    )


def top1(scores: np.ndarray, rng: np.random.Generator, tolerance: float = 1e-6) -> np.ndarray:
    """Best document per query; exact ties (identical truncated documents) are broken at random."""
    best = []
    for row in scores:
        candidates = np.flatnonzero(row >= row.max() - tolerance)
        best.append(int(rng.choice(candidates)))
    return np.asarray(best)


@dataclass
class LengthResult:
    length: int
    encoded_tokens: int
    truncated: bool
    accuracy: float
    correct: int
    queries: int
    # Queries whose passkey sentence lies wholly inside the encoded tokens, and how
    # many of those / of the others were answered.
    in_window: int
    correct_in_window: int
    correct_outside: int
    # in_window share + chance (1/documents) for the rest: what a model that reads
    # its window perfectly and nothing beyond it would score.
    expected_accuracy: float
    # The analytic version: a share encoded/length of the passkeys is seen, the rest is chance.
    window_share_accuracy: float
    # Top-1 when each document is its passkey sentence alone: what the model can tell apart
    # without filler (1.0 for all-MiniLM-L6-v2: its misses come from the filler around it).
    sentence_alone_accuracy: float
    seconds: float
    misses: list[dict] = field(default_factory=list)


def run_length(
    encoder,
    task: PasskeyTask,
    *,
    instruction: str | None,
    seed: int,
    progress: bool = False,
) -> LengthResult:
    started = time.perf_counter()
    encoded_tokens = min(task.length, encoder.model_max_positions)
    documents = encoder.encode_texts(
        task.documents, max_length=encoded_tokens, progress=progress, desc=f"{task.length} tokens"
    )
    queries = encoder.encode_queries(task.queries, instruction)
    scores = queries @ documents.T
    best = top1(scores, np.random.default_rng(seed + task.length))
    targets = np.asarray(task.targets)
    hits = best == targets
    sentences = encoder.encode_texts(
        [passkey_sentence(n, k) for n, k in zip(task.names, task.passkeys, strict=True)],
        max_length=min(128, encoder.model_max_positions),
    )
    alone = top1(queries @ sentences.T, np.random.default_rng(seed + task.length)) == targets
    # Truncation keeps the trailing special tokens, so the text ends before them.
    window_end = encoded_tokens - _Counter(encoder, ceiling=64).trailing
    inside = np.asarray([task.spans[t][1] <= window_end for t in task.targets])
    in_window = int(inside.sum())
    chance = 1 / len(task.documents)
    n = len(task.targets)
    misses = [
        {"query": task.queries[i], "target": int(targets[i]), "ranked_first": int(best[i])}
        for i in np.flatnonzero(~hits)[:5]
    ]
    return LengthResult(
        length=task.length,
        encoded_tokens=encoded_tokens,
        truncated=task.length > encoded_tokens,
        accuracy=float(hits.mean()),
        correct=int(hits.sum()),
        queries=n,
        in_window=in_window,
        correct_in_window=int(hits[inside].sum()),
        correct_outside=int(hits[~inside].sum()),
        expected_accuracy=(in_window + (n - in_window) * chance) / n,
        window_share_accuracy=encoded_tokens / task.length
        + (1 - encoded_tokens / task.length) * chance,
        sentence_alone_accuracy=float(alone.mean()),
        seconds=time.perf_counter() - started,
        misses=misses,
    )


# The modes the passage curve is searched in, from one index: engine search's default first.
PASSAGE_MODES = ("hybrid", "dense", "lexical")


@dataclass
class PassageResult:
    """Top-1 of the same task through an index of passages (``engine index --passages``),
    searched in one ``mode`` (``hybrid``: engine search's default on such an index)."""

    length: int
    mode: str
    passage_tokens: int
    overlap: int
    passages: int
    accuracy: float
    correct: int
    queries: int
    # Why a query was missed: the passage ranked first holds another person's passkey
    # sentence (the model mixes up names), or only filler.
    misses_on_another_passkey: int
    # Queries whose passkey sentence lies wholly inside one passage (none cut in two).
    sentence_in_one_passage: int
    seconds: float


def run_length_passages(
    encoder,
    task: PasskeyTask,
    *,
    tokens: int,
    overlap: int,
    instruction: str | None,
    modes: Sequence[str] = PASSAGE_MODES,
) -> list[PassageResult]:
    """Index the task's documents with passages in a scratch index, ask each query for one
    document in each of ``modes`` (a document scored by its best passage,
    :func:`indexer.search.passage_hits`), count the right ones."""
    from indexer.documents import Document
    from indexer.indexing import update_index
    from indexer.passages import PassageSpec
    from indexer.search import passage_hits, resolve_fusion
    from indexer.store import Store

    started = time.perf_counter()
    documents = [Document(str(i), "passkey", "", text) for i, text in enumerate(task.documents)]
    spec = PassageSpec(tokens, overlap, max(task.length * 2, tokens))
    vectors = encoder.encode_queries(task.queries, instruction)
    results = []
    with tempfile.TemporaryDirectory(prefix="passkey-passages-") as folder:
        report = update_index(folder, encoder, documents, passages=spec, progress=False)
        indexed = time.perf_counter() - started
        store = Store.open(folder)
        try:
            whole = _sentences_in_one_passage(store, task, encoder)
            for mode in modes:
                began = time.perf_counter()
                found = passage_hits(
                    store, vectors, 1, queries=task.queries, mode=mode, fusion=resolve_fusion()
                )
                top = [hits[0] if hits else None for hits in found]
                hits = [
                    hit is not None and hit.doc_id == str(target)
                    for hit, target in zip(top, task.targets, strict=True)
                ]
                results.append(
                    PassageResult(
                        length=task.length,
                        mode=mode,
                        passage_tokens=tokens,
                        overlap=overlap,
                        passages=report.passages,
                        accuracy=sum(hits) / len(hits),
                        correct=sum(hits),
                        queries=len(hits),
                        misses_on_another_passkey=sum(
                            not ok and hit is not None and "passkey" in hit.snippet
                            for hit, ok in zip(top, hits, strict=True)
                        ),
                        sentence_in_one_passage=whole,
                        seconds=round(indexed + time.perf_counter() - began, 3),
                    )
                )
        finally:
            store.close()
    return results


def _sentences_in_one_passage(store, task: PasskeyTask, encoder) -> int:
    """How many queries' passkey sentences lie wholly inside one of their document's passages
    (passage token offsets count the text's tokens, without the leading special tokens)."""
    leading = _Counter(encoder, ceiling=64).leading
    windows: dict[str, list[tuple[int, int]]] = {}
    for doc_id, start, end in store.db.execute(
        "SELECT d.doc_id, p.token_start, p.token_end FROM passages p "
        "JOIN documents d ON d.id = p.document"
    ):
        windows.setdefault(doc_id, []).append((start, end))
    count = 0
    for target in task.targets:
        first, last = (position - leading for position in task.spans[target])
        count += any(a <= first and last <= b for a, b in windows.get(str(target), []))
    return count


def run_passkey(
    encoder,
    lengths: Sequence[int],
    *,
    documents: int = DEFAULT_DOCUMENTS,
    queries: int = DEFAULT_QUERIES,
    seed: int = 0,
    instruction: str | None = None,
    progress: bool = False,
    passages: tuple[int, int] | None = None,
) -> tuple[list[LengthResult], list[PassageResult]]:
    """The model-only curve, and with ``passages`` (tokens, overlap) the passage curve on
    the same documents and queries."""
    results, split = [], []
    for length in lengths:
        task = build_passkey_task(encoder, length, documents=documents, queries=queries, seed=seed)
        results.append(
            run_length(encoder, task, instruction=instruction, seed=seed, progress=progress)
        )
        if passages is not None:
            tokens, overlap = passages
            split.extend(
                run_length_passages(
                    encoder, task, tokens=tokens, overlap=overlap, instruction=instruction
                )
            )
    return results, split


def parse_lengths(value: str) -> list[int]:
    try:
        lengths = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise EngineError(f"--lengths must be comma-separated integers, not {value!r}") from None
    if not lengths or lengths[0] < 16:
        raise EngineError("--lengths needs at least one length of 16 tokens or more")
    return lengths


def write_plot(
    path: Path,
    results: Sequence[LengthResult],
    model: str,
    max_positions: int,
    passages: Sequence[PassageResult] = (),
) -> None:
    """Accuracy against context length, like the paper's Figure 5 (and with passages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r.length for r in results]
    figure, axes = plt.subplots(figsize=(6.4, 5.6 if passages else 4.2), dpi=120)
    axes.plot(
        lengths,
        [r.accuracy for r in results],
        "o-",
        label="model only (the paper's protocol)",
    )
    styles = {"hybrid": ("s-", "tab:purple"), "dense": ("^--", "tab:orange"),
              "lexical": ("v:", "tab:brown")}  # fmt: skip
    for mode in dict.fromkeys(r.mode for r in passages):
        curve = [r for r in passages if r.mode == mode]
        marker, color = styles.get(mode, ("x-", "black"))
        axes.plot(
            [r.length for r in curve],
            [r.accuracy for r in curve],
            marker,
            color=color,
            label=f"--passages {curve[0].passage_tokens}, --mode {mode}"
            + (" (engine search's default)" if mode == PASSAGE_MODES[0] else ""),
        )
    axes.plot(
        lengths,
        [r.expected_accuracy for r in results],
        "--",
        color="gray",
        label="share of queries with the passkey in the window (+ chance)",
    )
    axes.plot(
        lengths,
        [r.window_share_accuracy for r in results],
        ":",
        color="tab:green",
        label="window / length (+ chance)",
    )
    if max_positions < lengths[-1]:
        axes.axvline(
            max_positions, color="tab:red", linestyle=":", label=f"model max {max_positions}"
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(lengths, [_short(n) for n in lengths])
    axes.minorticks_off()
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("context length (tokens)")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title(f"Personalized passkey retrieval: {model}", fontsize=10)
    axes.grid(alpha=0.3)
    if passages:  # below the axes: the passage curves run along the top
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7.5)
    else:
        axes.legend(loc="upper right", fontsize=7.5)
    figure.tight_layout()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def format_table(results: Sequence[LengthResult], passages: Sequence[PassageResult] = ()) -> str:
    header = (
        f"{'length':>7}  {'encoded':>7}  {'truncated':>9}  {'in window':>9}  "
        f"{'expected':>8}  {'top-1 acc':>9}  {'hits in window':>14}  {'hits outside':>12}"
    )
    modes = list(dict.fromkeys(p.mode for p in passages))
    header += "".join(f"  {'passages ' + mode:>16}" for mode in modes)
    by_length = {(p.length, p.mode): p for p in passages}
    rows = [header]
    for r in results:
        row = (
            f"{r.length:>7}  {r.encoded_tokens:>7}  {'yes' if r.truncated else 'no':>9}  "
            f"{f'{r.in_window}/{r.queries}':>9}  {r.expected_accuracy:>8.2f}  {r.accuracy:>9.2f}  "
            f"{f'{r.correct_in_window}/{r.in_window}':>14}  "
            f"{f'{r.correct_outside}/{r.queries - r.in_window}':>12}"
        )
        for mode in modes:
            found = by_length.get((r.length, mode))
            row += f"  {found.accuracy:>16.2f}" if found else f"  {'':>16}"
        rows.append(row)
    return "\n".join(rows)


@click.command()
@model_option()
@click.option(
    "--lengths",
    default=",".join(str(n) for n in CONTEXT_LENGTHS),
    show_default=True,
    help="Context lengths in tokens, comma-separated. Lengths beyond the model's maximum are "
    "truncated to it (and marked so).",
)
@click.option(
    "--documents",
    type=click.IntRange(min=2),
    default=DEFAULT_DOCUMENTS,
    show_default=True,
    help="Candidate documents per length.",
)
@click.option(
    "--queries",
    type=click.IntRange(min=1),
    default=DEFAULT_QUERIES,
    show_default=True,
    help="Queries per length.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--instruct/--no-instruct",
    "instruct",
    default=None,
    help="Query with the task instruction (default: only if the model is instruction-tuned).",
)
@passage_options(
    "Also run every length through an index of passages of TOKENS tokens "
    "(engine index --passages), beside the model-only curve (the paper's protocol)."
)
@device_option()
@batch_tokens_option()
@results_dir_option("JSON and PNG")
@json_option()
@quiet_option()
def passkey(
    model: str | None,
    lengths: str,
    documents: int,
    queries: int,
    seed: int,
    instruct: bool | None,
    passage_tokens: int | None,
    passage_overlap: int | None,
    device: str | None,
    batch_tokens: int | None,
    out: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Personalized passkey retrieval: find a person's passkey in long filler documents.

    Per context length: DOCUMENTS documents of exactly that many tokens of filler,
    each with one person's name and passkey at a random position; QUERIES queries
    ask for a person's passkey; top-1 accuracy is reported. A model with fewer
    positions sees only the start of each document, so the table also counts the
    queries whose passkey lies inside what the model reads.

    \b
    Examples:
      engine bench passkey --lengths 256,512,1024,2048
      engine bench passkey --model ./e5-mistral-7b-instruct --device cuda
      engine bench passkey --lengths 64,128 --documents 10 --queries 5 --json
      engine bench passkey --passages 128 --passage-overlap 48
        (the model-only curve, and beside it documents found by their best passage,
        searched hybrid as engine search does by default, dense and lexical)
    """

    ctx = click.get_current_context()
    length_list = parse_lengths(lengths)
    if queries > documents:
        raise EngineError(f"--queries ({queries}) cannot exceed --documents ({documents})")
    encoder = Encoder.load(model, device=device, batch_tokens=batch_tokens)
    use_instruction = encoder.profile.instruction_tuned if instruct is None else instruct
    instruction = PASSKEY_INSTRUCTION if use_instruction else None
    settings = passage_spec(passage_tokens, passage_overlap, None)
    passages = (settings["tokens"], settings["overlap"]) if settings is not None else None
    results, passage_results = run_passkey(
        encoder,
        length_list,
        documents=documents,
        queries=queries,
        seed=seed,
        instruction=instruction,
        progress=not (quiet or as_json),
        passages=passages,
    )
    out.mkdir(parents=True, exist_ok=True)
    stem = f"passkey-{file_slug(encoder.name)}"
    if passages is not None:
        stem += f"-passages{passages[0]}"
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    report = {
        "benchmark": "passkey",
        "model": encoder.name,
        "fingerprint": encoder.fingerprint,
        "model_max_positions": encoder.model_max_positions,
        "device": str(encoder.device),
        "instruction": instruction,
        "documents": documents,
        "queries": queries,
        "seed": seed,
        "filler": FILLER,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items()},
        "command": command_line(ctx),
        "machine": machine(),
        "protocol": "model only: the paper's (each document encoded up to the model's maximum)"
        + (
            f"; passages: engine index --passages {passages[0]} --passage-overlap {passages[1]}, "
            "a document scored by its best passage, searched with --mode hybrid (engine "
            "search's default: dense and BM25 document rankings fused), dense and lexical"
            if passages
            else ""
        ),
        "results": [asdict(r) for r in results],
        "passage_results": [asdict(r) for r in passage_results],
        "json": str(json_path),
        "plot": str(png_path),
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_plot(png_path, results, encoder.name, encoder.model_max_positions, passage_results)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"Personalized passkey retrieval: {encoder.name}, {documents} documents and "
        f"{queries} queries per length, seed {seed}"
    )
    click.echo(f"Query instruction: {instruction!r}" if instruction else "Query instruction: none")
    if any(r.truncated for r in results):
        click.echo(
            f"Documents longer than {encoder.model_max_positions} tokens are truncated to the "
            "model's maximum (truncated = yes): the passkey is findable only inside that window."
        )
    click.echo(format_table(results, passage_results))
    click.echo(f"Wrote {json_path} and {png_path}")
