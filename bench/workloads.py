"""What the speed benchmark encodes: real corpora, synthetic texts and random token ids.

Synthetic documents follow BEIR abstracts' token lengths, so a synthetic run pads and
batches the way a real corpus does.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineError

DEFAULT_SYNTHETIC_SEED = 0
# Lognormal token lengths fitted to SciFact's "title text" documents in the
# all-MiniLM-L6-v2 tokenizer (median 316 tokens, 5-95% 156-568).
SYNTHETIC_LOG_MEAN = 5.74
SYNTHETIC_LOG_STD = 0.40
SYNTHETIC_MIN_TOKENS = 8


@dataclass
class Workload:
    """What gets encoded: formatted texts (None for random token ids) and the engine's ids."""

    source: str
    ids: list[list[int]]
    texts: list[str] | None = None
    lengths_from: str = ""

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def describe(self) -> dict:
        lengths = np.asarray(self.lengths)
        return {
            "source": self.source,
            "documents": len(lengths),
            "tokens": int(lengths.sum()),
            "mean_tokens": round(float(lengths.mean()), 1),
            "median_tokens": float(np.median(lengths)),
            "max_tokens": int(lengths.max()),
            "lengths_from": self.lengths_from,
        }


def synthetic_lengths(count: int, max_length: int, seed: int = DEFAULT_SYNTHETIC_SEED) -> list[int]:
    """Lognormal token lengths like BEIR abstracts, clipped to ``[8, max_length]``."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(SYNTHETIC_LOG_MEAN, SYNTHETIC_LOG_STD, size=count)
    return [int(n) for n in np.clip(np.round(raw), SYNTHETIC_MIN_TOKENS, max_length)]


def single_token_words(tokenizer, *, seed: int = DEFAULT_SYNTHETIC_SEED, limit: int = 2000):
    """Whole words the tokenizer reads as one token each, so word count ~ token count."""
    candidates = sorted(
        {
            token.lstrip("▁Ġ")
            for token in tokenizer.get_vocab()
            if not token.startswith("##")
            and token.lstrip("▁Ġ").isascii()
            and token.lstrip("▁Ġ").isalpha()
            and len(token.lstrip("▁Ġ")) >= 3
        }
    )
    random.Random(seed).shuffle(candidates)
    words = []
    for word in candidates:
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
            if len(words) >= limit:
                break
    if not words:
        raise EngineError("cannot make synthetic text: no single-token words in the vocabulary")
    return words


def synthetic_texts(encoder, count: int, seed: int = DEFAULT_SYNTHETIC_SEED) -> list[str]:
    """Random-word documents whose token lengths follow :func:`synthetic_lengths`."""
    words = single_token_words(encoder.tokenizer, seed=seed)
    special = len(encoder.tokenize(["word"])[0]) - 1
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(words, k=max(length - special, 1)))
        for length in synthetic_lengths(count, encoder.max_length, seed)
    ]


def random_ids(encoder, lengths: Sequence[int], seed: int = DEFAULT_SYNTHETIC_SEED):
    """Random token ids of the given lengths, with the BOS/EOS the profile requires."""
    rng = np.random.default_rng(seed)
    vocab = int(encoder.model.config.vocab_size)
    head = [encoder.bos_id] if encoder.profile.require_bos else []
    tail = [encoder.eos_id] if encoder.profile.require_eos else []
    low = 3 if vocab > 3 else 0
    sequences = []
    for length in lengths:
        body = max(min(length, encoder.max_length) - len(head) - len(tail), 1)
        sequences.append(head + rng.integers(low, vocab, size=body).tolist() + tail)
    return sequences


def corpus_documents(data_dir: Path, limit: int | None):
    """Documents of a BEIR folder (its corpus.jsonl) or any folder ``engine index`` reads."""
    from bench.datasets import CORPUS_FILE, is_beir_folder
    from indexer.documents import read_corpus

    if not data_dir.exists():
        raise EngineError(f"--data-dir not found: {data_dir}")
    path = data_dir / CORPUS_FILE if is_beir_folder(data_dir) else data_dir
    documents = list(itertools.islice(read_corpus(path), limit))  # limit None: all
    if not documents:
        raise EngineError(f"no readable documents in {data_dir}")
    return documents
