"""`engine bench reliability`: kill -9 at random points of indexing runs, and damage to every
file of an index, with real processes and real files.

A kill round starts `engine index` (a first run, or an incremental one), kills it with
SIGKILL at a random moment, checks that what was committed is searchable, runs it again
and checks that the second run encoded only what was missing, that no document is lost
or duplicated and that every planted document is found first. A fault round damages one
file of a finished index (truncate, empty, zeros or garbage in the middle, delete, a
pointer to a missing file), then checks that `engine search`, `info` and `check` neither
crash nor answer wrongly, repairs with `engine check --repair` (or, when the database is
lost, `engine index --rebuild`), runs the next `engine index` and searches again.

The indexing runs that get killed are real processes. The other commands (search,
info, check, the runs after a fault) go through a ``runner``: `in_process_runner` calls
the `engine` command line in this process, which spares a Python start and a torch
import per search.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from click.testing import CliRunner

from bench.common import command_line, machine
from engine.errors import EngineError
from engine.options import results_dir_option
from indexer.lexical import LexicalError, LexicalIndex
from indexer.store import Store

# Documents a search must find first, with the query that finds each.
PLANTED = {
    "planted/photosynthesis.txt": (
        "Photosynthesis lets plants make sugar from light, water and carbon dioxide.",
        "how do plants make sugar from sunlight",
    ),
    "planted/tcp.md": (
        "# TCP\nThe TCP handshake sends SYN, then SYN-ACK, then ACK before data flows.",
        "what packets open a TCP connection",
    ),
    "planted/chess.md": (
        "# Castling\nIn chess, castling moves the king two squares toward a rook.",
        "how does the king castle in chess",
    ),
}
_FILLER_SUBJECTS = (
    "The river delta",
    "A granite quarry",
    "The old lighthouse",
    "A beehive",
    "The night train",
    "A glacier",
    "The town library",
    "A coral reef",
)
_FILLER_FACTS = (
    "changes slowly over the seasons.",
    "was surveyed by a team of students.",
    "appears on maps drawn two centuries ago.",
    "is described in the regional archive.",
    "attracts visitors every summer.",
)
FAULTS = ("truncate", "empty", "zeros", "garbage", "delete")
FILES = ("database", "snapshot", "pointer", "lexical")


@dataclass
class Outcome:
    """What one `engine` command did."""

    exit_code: int
    stdout: str
    stderr: str
    traceback: bool


Runner = Callable[[Sequence[str]], Outcome]


def in_process_runner(command: click.Command) -> Runner:
    """Each command through click's runner in this process; ``command`` is the `engine` group."""

    def run(args: Sequence[str]) -> Outcome:
        result = CliRunner().invoke(command, list(args))
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        return Outcome(result.exit_code, result.stdout, result.stderr, crashed)

    return run


def filler_corpus(count: int, *, prefix: str = "notes", seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {
        f"{prefix}/{i:04d}.txt": f"Entry {i}. {rng.choice(_FILLER_SUBJECTS)} "
        + " ".join(rng.choice(_FILLER_FACTS) for _ in range(12))
        for i in range(count)
    }


def write_corpus(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def planted_files() -> dict[str, str]:
    return {name: text for name, (text, _) in PLANTED.items()}


# ------------------------------------------------------------------ state
@dataclass
class IndexState:
    doc_ids: list[str]
    faiss_consistent: bool
    # The lexical index as the last writer left it: SQLite's ids exactly, its generation
    # recorded (read as it is on disk: nothing caught up or rebuilt to look at it).
    lexical_consistent: bool

    def lost(self, expected: set[str]) -> int:
        return len(expected - set(self.doc_ids))

    def duplicated(self) -> int:
        return len(self.doc_ids) - len(set(self.doc_ids))


def index_state(index_dir: Path) -> IndexState:
    """Documents of the current database, and whether the FAISS index and the lexical index
    match them one to one."""
    store = Store.open(index_dir)
    try:
        doc_ids = [row[0] for row in store.db.execute("SELECT doc_id FROM documents")]
        index = store.load_faiss()
        faiss_ids = {int(index.id_map.at(i)) for i in range(index.ntotal)}
        consistent = faiss_ids == set(store.doc_ids()) and index.ntotal == len(doc_ids)
        try:
            lexical = LexicalIndex.open(store.lexical.path)
            lexical_consistent = set(lexical.ids().tolist()) == set(
                store.doc_ids()
            ) and store.lexical.in_step(lexical)
            lexical.close()
        except LexicalError:
            lexical_consistent = False
    finally:
        store.close()
    return IndexState(doc_ids, consistent, lexical_consistent)


def committed_documents(index_dir: Path) -> int:
    """Documents in the published database (0 when nothing is published yet)."""
    try:
        name = json.loads((index_dir / "CURRENT").read_text())["db"]
        conn = sqlite3.connect(f"file:{index_dir / name}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        finally:
            conn.close()
    except (OSError, ValueError, KeyError, sqlite3.Error):
        return 0


def wrong_answers(
    runner: Runner, index_dir: Path, *, strict: bool = True, mode: str = "dense"
) -> tuple[int, int]:
    """(searches answered with a wrong first hit, searches refused or crashed) over PLANTED,
    in a search ``mode`` (dense, or lexical: BM25 alone)."""
    wrong = refused = 0
    for doc_id, (_, query) in PLANTED.items():
        outcome = runner(
            ["search", query, "--index", str(index_dir), "--json", "-k", "1", "--mode", mode]
        )
        if outcome.exit_code != 0 or outcome.traceback:
            refused += 1
            continue
        lines = outcome.stdout.splitlines()
        if not lines or json.loads(lines[0])["doc_id"] != doc_id:
            wrong += 1
    return wrong, refused


# ------------------------------------------------------------ kill rounds
@dataclass
class KillRound:
    kind: str  # "first" or "incremental"
    delay_s: float
    finished_before_kill: bool
    committed_at_kill: int
    searchable_during_run: bool | None
    encoded_by_next_run: int
    missing_before_next_run: int
    lost: int
    duplicated: int
    faiss_consistent: bool
    wrong_answers: int
    # The lexical index after the next run: in step with SQLite, and answering.
    lexical_consistent: bool = False
    lexical_wrong_answers: int = 0
    # Lexical searches of what the killed run committed (first runs): caught up, answering.
    lexical_searchable_after_kill: bool | None = None

    @property
    def reencoded(self) -> int:
        """Documents the next run encoded although they were already committed."""
        return self.encoded_by_next_run - self.missing_before_next_run


def kill_round(
    workdir: Path,
    *,
    kind: str,
    documents: int,
    seed: int,
    search: Runner,
    max_wait_s: float = 120.0,
    checkpoint_documents: int = 8,
) -> KillRound:
    """One indexing run killed with SIGKILL at a random moment, then the next run."""
    rng = random.Random(seed)
    corpus, index_dir = workdir / "corpus", workdir / "index"
    shutil.rmtree(workdir, ignore_errors=True)
    env = {
        **os.environ,
        "ENGINE_CHECKPOINT_DOCUMENTS": str(checkpoint_documents),
        "ENGINE_NO_PROGRESS": "1",
    }
    command = [sys.executable, "-m", "engine", "index", str(corpus), "--index", str(index_dir)]
    expected = dict(planted_files())
    if kind == "incremental":
        expected |= filler_corpus(documents // 4, prefix="old", seed=seed)
        write_corpus(corpus, expected)
        setup = subprocess.run(command, env=env, capture_output=True, text=True)
        if setup.returncode != 0:
            last = (setup.stderr.strip().splitlines() or ["no output"])[-1]
            raise EngineError(f"the first run of an incremental round failed: {last}")
    new = filler_corpus(documents, seed=seed)
    expected |= new
    write_corpus(corpus, expected)

    # A random moment: after a random number of committed documents (0: during start-up),
    # plus a random fraction of a checkpoint's encoding time.
    before = committed_documents(index_dir)
    target = rng.randrange(0, documents)
    extra = rng.uniform(0.0, 0.1)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    deadline = started + (rng.uniform(0.2, 3.0) if target == 0 else max_wait_s)
    while process.poll() is None and time.monotonic() < deadline:
        if target and committed_documents(index_dir) - before >= target:
            time.sleep(extra)
            break
        time.sleep(0.02)
    finished_before_kill = process.poll() is not None
    if not finished_before_kill:
        process.send_signal(signal.SIGKILL)
    process.wait()
    delay = time.monotonic() - started
    committed = committed_documents(index_dir)
    searchable = lexical_searchable = None
    if kind == "first" and committed:
        # What a killed first run committed answers searches, dense and lexical.
        searchable = wrong_answers(search, index_dir)[1] == 0
        lexical_searchable = wrong_answers(search, index_dir, mode="lexical")[1] == 0
    present = set(index_state(index_dir).doc_ids) if (index_dir / "CURRENT").exists() else set()
    missing = len(set(expected) - present)

    finish = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    if finish.returncode != 0:
        raise RuntimeError(f"the run after the kill failed: {finish.stderr.strip()}")
    report = json.loads(finish.stdout)
    state = index_state(index_dir)
    return KillRound(
        kind=kind,
        delay_s=round(delay, 2),
        finished_before_kill=finished_before_kill,
        committed_at_kill=committed,
        searchable_during_run=searchable,
        encoded_by_next_run=report["encoded"],
        missing_before_next_run=missing,
        lost=state.lost(set(expected)),
        duplicated=state.duplicated(),
        faiss_consistent=state.faiss_consistent,
        wrong_answers=wrong_answers(search, index_dir)[0],
        lexical_consistent=state.lexical_consistent,
        lexical_wrong_answers=sum(wrong_answers(search, index_dir, mode="lexical")),
        lexical_searchable_after_kill=lexical_searchable,
    )


# ----------------------------------------------------------- fault rounds
def damage(path: Path, fault: str, rng: random.Random) -> None:
    """Damage one file the way a disk, a crash or a person might."""
    if fault == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if fault == "truncate":
        data = data[: len(data) // 2]
    elif fault == "empty":
        data = bytearray()
    else:
        span = min(8192, max(1, len(data) // 2))
        start = (len(data) - span) // 2
        page = sqlite_page_size(data)
        if page:  # from the start of the middle page: bytes a page leaves unused are no damage
            start -= start % page
        filler = bytes(span) if fault == "zeros" else rng.randbytes(span)
        data[start : start + span] = filler
    path.write_bytes(bytes(data))


def sqlite_page_size(data: bytes) -> int:
    """The page size in an SQLite database header, or 0 for any other file."""
    if not data.startswith(b"SQLite format 3\x00") or len(data) < 18:
        return 0
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def index_file(index_dir: Path, which: str) -> Path:
    if which == "pointer":
        return index_dir / "CURRENT"
    name = json.loads((index_dir / "CURRENT").read_text())["db"]
    if which == "database":
        return index_dir / name
    if which == "lexical":  # the file every open of the tantivy index reads first
        return index_dir / f"{Path(name).stem}.lexical" / "meta.json"
    return next(index_dir.glob(f"{Path(name).stem}.*.faiss"))


@dataclass
class FaultRound:
    file: str
    fault: str
    tracebacks: int = 0
    silent_wrong_answers: int = 0
    refused_in_one_line: int = 0
    detected_by_check: bool = False
    # A search said (one "Warning:" line) that it found damage and rebuilt from SQLite.
    warned_by_search: bool = False
    repair: str = ""
    wrong_after_repair: int = 0
    lost_after_next_run: int = 0
    duplicated_after_next_run: int = 0
    encoded_by_next_run: int = 0
    lexical_consistent_after_next_run: bool = False
    notes: list[str] = field(default_factory=list)


def fault_round(
    base_index: Path, corpus: Path, workdir: Path, *, file: str, fault: str, run: Runner, seed: int
) -> FaultRound:
    """Damage ``file`` of a copy of ``base_index`` with ``fault``; search, check, repair, re-run."""
    index_dir = workdir / f"{file}-{fault}"
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.copytree(base_index, index_dir)
    if file == "pointer" and fault == "truncate":
        fault = "missing-target"  # half a JSON line is "garbage"; a pointer to nothing is new
        (index_dir / "CURRENT").write_text(json.dumps({"db": "index-000000000000.db"}) + "\n")
    else:
        damage(index_file(index_dir, file), fault, random.Random(seed))
    result = FaultRound(file=file, fault=fault)
    index = ["--index", str(index_dir)]

    def record(outcome: Outcome) -> Outcome:
        result.tracebacks += outcome.traceback
        if outcome.exit_code != 0 and not outcome.traceback:
            lines = outcome.stderr.strip().splitlines()
            error_lines = [line for line in lines if line.startswith("Error:")]
            result.refused_in_one_line += len(error_lines) == 1
        return outcome

    for doc_id, (_, query) in PLANTED.items():
        for mode in ("dense", "lexical"):
            outcome = record(run(["search", query, *index, "--json", "-k", "1", "--mode", mode]))
            if outcome.exit_code == 0 and not outcome.traceback:
                lines = outcome.stdout.splitlines()
                warned = "Warning:" in outcome.stderr
                result.warned_by_search |= warned
                if (not lines or json.loads(lines[0])["doc_id"] != doc_id) and not warned:
                    result.silent_wrong_answers += 1
    record(run(["info", *index]))
    result.detected_by_check = record(run(["check", *index])).exit_code != 0

    repaired = record(run(["check", "--repair", *index]))
    result.repair = "check --repair" if repaired.exit_code == 0 else ""
    if repaired.exit_code != 0:
        result.notes.append(repaired.stderr.strip())
        rebuilt = record(run(["index", str(corpus), *index, "--rebuild", "--json"]))
        result.repair = "index --rebuild" if rebuilt.exit_code == 0 else "failed"
    next_run = record(run(["index", str(corpus), *index, "--json"]))
    if next_run.exit_code == 0 and not next_run.traceback:
        result.encoded_by_next_run = json.loads(next_run.stdout)["encoded"]
        state = index_state(index_dir)
        expected = {p.relative_to(corpus).as_posix() for p in corpus.rglob("*") if p.is_file()}
        result.lost_after_next_run = state.lost(expected)
        result.duplicated_after_next_run = state.duplicated()
        result.lexical_consistent_after_next_run = state.lexical_consistent
    else:
        result.notes.append(f"next run failed: {next_run.stderr.strip()}")
        result.repair = "failed"
    wrong, refused = wrong_answers(run, index_dir)
    lexical_wrong, lexical_refused = wrong_answers(run, index_dir, mode="lexical")
    result.wrong_after_repair = wrong + refused + lexical_wrong + lexical_refused
    return result


# ------------------------------------------------------------------ command
@click.command()
@click.option("--kill-rounds", type=click.IntRange(min=0), default=20, show_default=True)
@click.option(
    "--documents",
    type=click.IntRange(min=1),
    default=160,
    show_default=True,
    help="Filler documents per kill round (plus the planted ones).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".reliability",
    show_default=True,
    help="Scratch folder for corpora and indexes (emptied first).",
)
@click.option(
    "--hostile/--no-hostile",
    default=True,
    show_default=True,
    help="Also run the hostile cases of bench/hostile.py (bad text, kills inside a publish, "
    "damage under a server, bad keys and requests, overload, SIGTERM).",
)
@results_dir_option("reliability summary (reliability.json)")
def reliability(
    kill_rounds: int, documents: int, seed: int, work_dir: Path, hostile: bool, out: Path
) -> None:
    """Kill -9 indexing runs at random moments, damage every file of an index, hostile cases.

    Records rounds, faults injected, documents lost and duplicated, re-encoded
    documents and wrong answers in <out>/reliability.json. The killed indexing runs
    are real processes (each loads the default model: a round takes seconds).

    \b
    Examples:
      engine bench reliability --kill-rounds 30 --out bench/results
      engine bench reliability --kill-rounds 0 --out /tmp/rel    # fault rounds and hostile cases
    """
    # The `engine` group itself, from click's context (bench does not import the CLI).
    run = in_process_runner(click.get_current_context().find_root().command)
    shutil.rmtree(work_dir, ignore_errors=True)
    started = time.time()
    kills = []
    for number in range(kill_rounds):
        kind = "first" if number % 2 == 0 else "incremental"
        kills.append(
            kill_round(
                work_dir / "kill", kind=kind, documents=documents, seed=seed + number, search=run
            )
        )
        last = kills[-1]
        click.echo(
            f"kill {number + 1}/{kill_rounds} ({kind}, {last.delay_s}s): "
            f"committed {last.committed_at_kill}, next run encoded {last.encoded_by_next_run} "
            f"of {last.missing_before_next_run} missing; lost {last.lost}, "
            f"duplicated {last.duplicated}, wrong {last.wrong_answers}, "
            f"lexical in step {last.lexical_consistent}, lexical wrong {last.lexical_wrong_answers}"
        )
    corpus, base = work_dir / "faults" / "corpus", work_dir / "faults" / "base"
    write_corpus(corpus, planted_files() | filler_corpus(24, seed=seed))
    outcome = run(["index", str(corpus), "--index", str(base)])
    if outcome.exit_code != 0:
        raise click.ClickException(outcome.stderr)
    faults = []
    for file in FILES:
        for fault in FAULTS:
            faults.append(
                fault_round(
                    base, corpus, work_dir / "faults", file=file, fault=fault, run=run, seed=seed
                )
            )
            click.echo(f"fault {file}/{faults[-1].fault}: {asdict(faults[-1])}")
    cases = []
    if hostile:
        from bench.hostile import run_all

        cases = run_all(work_dir / "hostile", run, progress=click.echo)
    summary = summarize(kills, faults, cases)
    if hostile:
        from bench.hostile import snapshot_read_cost

        summary["snapshot_read_cost"] = snapshot_read_cost(work_dir / "cost")
    summary["seconds"] = round(time.time() - started, 1)
    summary["command"] = command_line(click.get_current_context())
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(json.dumps(summary["totals"]))


def summarize(kills: list[KillRound], faults: list[FaultRound], cases: Sequence = ()) -> dict:

    totals = {
        "kill_rounds": len(kills),
        "kill_rounds_first_run": sum(k.kind == "first" for k in kills),
        "kill_rounds_incremental": sum(k.kind == "incremental" for k in kills),
        "killed_mid_run": sum(not k.finished_before_kill for k in kills),
        "faults_injected": len(faults),
        "lost": sum(k.lost for k in kills)
        + sum(f.lost_after_next_run for f in faults)
        + sum(c.lost for c in cases),
        "duplicated": sum(k.duplicated for k in kills)
        + sum(f.duplicated_after_next_run for f in faults),
        "reencoded_after_kill": sum(k.reencoded for k in kills),
        "wrong_answers": sum(k.wrong_answers for k in kills)
        + sum(f.silent_wrong_answers + f.wrong_after_repair for f in faults)
        + sum(c.wrong_answers for c in cases),
        "tracebacks": sum(f.tracebacks for f in faults) + sum(c.tracebacks for c in cases),
        "server_crashes": sum(c.server_crashes for c in cases),
        "hostile_cases": len(cases),
        "hostile_cases_held": sum(c.held for c in cases),
        "faults_detected_by_check": sum(f.detected_by_check for f in faults),
        "faults_repaired": sum(f.repair not in ("", "failed") for f in faults),
        "faiss_inconsistent": sum(not k.faiss_consistent for k in kills),
        "lexical_inconsistent": sum(not k.lexical_consistent for k in kills)
        + sum(not f.lexical_consistent_after_next_run for f in faults),
        "lexical_wrong_answers": sum(k.lexical_wrong_answers for k in kills),
    }
    return {
        "machine": machine(),
        "totals": totals,
        "kill_rounds": [{**asdict(k), "reencoded": k.reencoded} for k in kills],
        "fault_rounds": [asdict(f) for f in faults],
        "hostile_cases": [asdict(c) for c in cases],
    }
