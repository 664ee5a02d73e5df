"""Tiny random transformer models with real tokenizers, built on the spot (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "the a of and to in is it that was for on are with as be by at this from or an plants make "
    "sugar light water energy sun grass green sky blue pass key query document answer question "
    "retrieve given passage what how why where when who which scientific claim support refute"
).split()


def build_tiny_mistral(folder: Path, *, seed: int = 0, causal_lm: bool = False) -> Path:
    """A 2-layer Mistral whose tokenizer adds BOS (like Llama's) and pads with EOS; with
    ``causal_lm`` a language model that generates (garbage)."""
    from bench.random_models import random_mistral, word_tokenizer

    words = sorted(set(WORDS)) + list("0123456789")
    tokenizer = word_tokenizer(words, 256, split_digits=True)
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    model = random_mistral(shape, seed=seed, causal_lm=causal_lm)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path, *, seed: int = 0) -> Path:
    """A 2-layer BERT with a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(specials + sorted(set(WORDS)) + list("0123456789")) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), model_max_length=128)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(specials) + len(set(WORDS)) + 10,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
