"""The one encoder: profiles, prompts, special tokens, pooling, batching."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from engine.encoder import Encoder, locate_model, pool, token_budget_batches
from engine.errors import EngineError
from engine.profiles import (
    E5_MISTRAL,
    MINILM,
    QWEN3_EMBEDDING,
    ModelProfile,
    known_profile,
    resolve_profile,
)
from tests.tolerances import vector_tolerance

TEXTS = [
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "short",
    "The TCP three-way handshake is SYN, SYN-ACK, ACK. " * 30,
    "Sourdough starters are wild yeast and lactic acid bacteria living in flour paste.",
]

# Every test here compares vectors that the CPU's precision moves: CI runs them again in fp32.
pytestmark = pytest.mark.precision


def test_default_model_matches_sentence_transformers(default_encoder):
    from sentence_transformers import SentenceTransformer

    from engine.encoder import default_model_path

    reference = SentenceTransformer(str(default_model_path()), device="cpu")
    reference.max_seq_length = 256
    ours = default_encoder.encode_texts(TEXTS, max_length=256)
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    assert default_encoder.dim == 384
    assert default_encoder.profile.pooling == "mean"


def test_e5_mistral_prompt_is_exact(tiny_mistral_path):
    encoder = Encoder.load(str(tiny_mistral_path))
    assert encoder.profile.name == E5_MISTRAL.name
    task = "Given a web search query, retrieve relevant passages that answer the query"
    assert (
        encoder.format_query("how much protein should a female eat", task)
        == "Instruct: Given a web search query, retrieve relevant passages that answer the query"
        "\nQuery: how much protein should a female eat"
    )
    # Documents never get an instruction: "title text".
    assert (
        encoder.format_document("Protein", "Adults need 46 grams.")
        == "Protein Adults need 46 grams."
    )
    assert encoder.format_document("", "  untitled text ") == "untitled text"


def test_every_sequence_starts_with_bos_and_ends_with_eos(tiny_mistral_path):
    encoder = Encoder.load(str(tiny_mistral_path))
    long_text = "the grass is green " * 200
    ids = encoder.tokenize(["plants make sugar", long_text, ""], max_length=64)
    for seq in ids:
        assert seq[0] == encoder.bos_id == encoder.tokenizer.bos_token_id
        assert seq[-1] == encoder.eos_id == encoder.tokenizer.eos_token_id
        assert len(seq) <= 64
    assert len(ids[1]) == 64
    # The pad id is the EOS id, so only the attention mask can tell where a sequence ends.
    assert encoder.pad_id == encoder.eos_id


def test_missing_eos_is_caught(tiny_mistral_path):
    encoder = Encoder.load(str(tiny_mistral_path))
    batch = encoder.pad([[encoder.bos_id, 5, 6]])
    with pytest.raises(EngineError, match="EOS"):
        encoder.embed(batch)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_token_pooling_ignores_padding_and_batch(tiny_mistral_path, padding_side):
    base = Encoder.load(str(tiny_mistral_path))
    profile = dataclasses.replace(base.profile, padding_side=padding_side)
    encoder = Encoder(
        base.model, base.tokenizer, profile, name=base.name, fingerprint=base.fingerprint
    )
    texts = ["plants make sugar", "what is the pass key " * 8, "sky"]
    alone = np.vstack([encoder.encode_texts([t]) for t in texts])
    together = encoder.encode_texts(texts)
    reordered = encoder.encode_texts(texts[::-1])[::-1]
    np.testing.assert_allclose(together, alone, atol=vector_tolerance(encoder.precision))
    np.testing.assert_allclose(reordered, alone, atol=vector_tolerance(encoder.precision))


def test_left_and_right_padding_agree(tiny_mistral_path):
    base = Encoder.load(str(tiny_mistral_path))
    vectors = {}
    for side in ("left", "right"):
        profile = dataclasses.replace(base.profile, padding_side=side)
        encoder = Encoder(base.model, base.tokenizer, profile, name="x", fingerprint="x")
        vectors[side] = encoder.encode_texts(["sky", "plants make sugar and energy from light"])
    np.testing.assert_allclose(vectors["left"], vectors["right"], atol=1e-5)


def test_pool_reads_last_real_token_under_both_paddings():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_token_budget_batches_cover_everything_within_budget():
    lengths = [5, 300, 17, 17, 256, 1, 90, 90, 90, 512]
    batches = token_budget_batches(lengths, budget=600)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 600 or len(batch) == 1
    assert batches[0] == [9]  # longest first: an out-of-memory error shows at once


def test_batching_does_not_change_vectors(default_encoder):
    small = Encoder(
        default_encoder.model,
        default_encoder.tokenizer,
        default_encoder.profile,
        name="x",
        fingerprint="x",
        batch_tokens=64,
    )
    np.testing.assert_allclose(
        small.encode_texts(TEXTS),
        default_encoder.encode_texts(TEXTS),
        atol=vector_tolerance(small.precision),
    )
    # A per-call budget (the server's latency budget for queries) splits the same way.
    ids = default_encoder.tokenize(TEXTS)
    passes = list(default_encoder.iter_encode(ids, batch_tokens=64))
    assert len(passes) > 1 and len(list(default_encoder.iter_encode(ids))) == 1
    for positions, _ in passes:
        assert max(len(ids[i]) for i in positions) * len(positions) <= 64 or len(positions) == 1
    assert default_encoder.latency_batch_tokens <= default_encoder.batch_tokens


def test_known_profiles():
    assert known_profile("intfloat/e5-mistral-7b-instruct") is E5_MISTRAL
    assert known_profile("Qwen/Qwen3-Embedding-0.6B") is QWEN3_EMBEDDING
    assert QWEN3_EMBEDDING.padding_side == "left"
    assert QWEN3_EMBEDDING.query_template.format(task="T", query="q") == "Instruct: T\nQuery:q"
    assert known_profile("intfloat/e5-base-v2").document_template == "passage: {text}"
    assert known_profile("BAAI/bge-base-en-v1.5").pooling == "cls"
    assert known_profile("sentence-transformers/all-MiniLM-L6-v2") is MINILM
    assert known_profile("someone/unknown-model") is None


def test_unknown_model_reads_sentence_transformers_pooling(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.models.Pooling"}])
    )
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True})
    )
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}})
    )
    profile = resolve_profile("custom", tmp_path, "bert")
    assert profile.pooling == "cls" and profile.pool_instruction
    assert profile.bare_query_template.format(query="x") == "query: x"
    assert profile.document_template.format(text="y") == "passage: y"
    # sentence-transformers 5 layout: one pooling_mode key; include_prompt=False (INSTRUCTOR-style).
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode": "mean", "include_prompt": False})
    )
    profile = resolve_profile("custom", tmp_path, "bert")
    assert (profile.pooling, profile.pool_instruction) == ("mean", False)
    decoder = resolve_profile("custom-llm", None, "mistral")
    assert (decoder.pooling, decoder.require_eos) == ("last", True)


def test_saved_profile_wins(tmp_path):
    ModelProfile(name="mine", pooling="cls", max_length=77).save(tmp_path)
    profile = resolve_profile("intfloat/e5-mistral-7b-instruct", tmp_path, "mistral")
    assert (profile.name, profile.pooling, profile.max_length) == ("mine", "cls", 77)


def test_bad_models_fail_clearly(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        locate_model(str(tmp_path / "nope"))
    with pytest.raises(EngineError, match="not a model folder"):
        locate_model(str(tmp_path))
    with pytest.raises(EngineError, match="cannot load model"):
        Encoder.load("nobody/no-such-model-anywhere")


def test_max_length_is_bounded_by_the_model(default_encoder, tiny_mistral_path):
    encoder = Encoder.load(str(tiny_mistral_path))
    with pytest.raises(EngineError, match="exceeds"):
        encoder.set_max_length(10_000)
    assert default_encoder.model_max_positions == 512


def test_out_of_memory_batches_are_retried_in_halves(tiny_mistral_path, monkeypatch):
    """The halving retry is device-independent: provoke the error a GPU would raise."""
    encoder = Encoder.load(str(tiny_mistral_path))
    texts = ["plants make sugar", "what is the pass key " * 8, "sky", "blue sky", "sun"]
    expected = encoder.encode_texts(texts)
    real_embed = encoder.embed
    batch_sizes = []

    def embed_at_most_two(batch, **options):
        batch_sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return real_embed(batch, **options)

    monkeypatch.setattr(encoder, "embed", embed_at_most_two)
    np.testing.assert_allclose(
        encoder.encode_texts(texts), expected, atol=vector_tolerance(encoder.precision)
    )
    assert batch_sizes == [5, 2, 3, 1, 2]  # 5 fails -> 2 + 3; 3 fails -> 1 + 2

    monkeypatch.setattr(
        encoder, "embed", lambda batch, **_: (_ for _ in ()).throw(torch.OutOfMemoryError())
    )
    with pytest.raises(EngineError, match="lower --max-length"):
        encoder.encode_texts(["sky"])


def test_fingerprint_ignores_training_records(tiny_bert_path, tmp_path):
    import shutil

    from engine.encoder import fingerprint_files

    folder = shutil.copytree(tiny_bert_path, tmp_path / "model")
    before = fingerprint_files([folder])
    (folder / "training_log.json").write_text("[]")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"x")
    assert fingerprint_files([folder]) == before
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert fingerprint_files([folder]) != before


def _with_profile(encoder: Encoder, **changes) -> Encoder:
    profile = dataclasses.replace(encoder.profile, **changes)
    return Encoder(encoder.model, encoder.tokenizer, profile, name="x", fingerprint="x")


def test_instruction_tokens_can_be_left_out_of_mean_pooling(default_encoder):
    # all-MiniLM-L6-v2 never saw instructions: its profile leaves them out of the mean.
    assert default_encoder.profile.pool_instruction is False
    encoder = default_encoder
    pooled_all = _with_profile(default_encoder, pool_instruction=True)
    task = "Given a scientific claim, retrieve documents that support or refute the claim"
    claim = "Vitamin D prevents flu"
    ids, spans = encoder.tokenize_queries([claim, "sky"], [task, None])
    tokens = encoder.tokenizer.convert_ids_to_tokens(ids[0])
    start, stop = spans[0]
    # [CLS] stays; "instruct : given ... query :" is left out; the claim and [SEP] are pooled.
    assert (start, tokens[start], tokens[stop - 1]) == (1, "ins", ":")
    assert tokens[stop:] == ["vitamin", "d", "prevents", "flu", "[SEP]"]
    assert spans[1] == (0, 0)

    # The vector is the normalised mean of exactly those hidden states, instruction attended to.
    with torch.no_grad():
        hidden = encoder.model(input_ids=torch.tensor([ids[0]])).last_hidden_state[0]
    kept = [0] + list(range(stop, len(ids[0])))
    expected = torch.nn.functional.normalize(hidden[kept].mean(dim=0), dim=0).numpy()
    ours = encoder.encode_queries([claim], task)[0]
    np.testing.assert_allclose(ours, expected, atol=vector_tolerance(encoder.precision))
    assert float(ours @ pooled_all.encode_queries([claim], task)[0]) < 0.99
    assert pooled_all.tokenize_queries([claim], task)[1] is None
    # Bare queries and documents are untouched by the option.
    np.testing.assert_allclose(
        encoder.encode_queries(["sky"]), pooled_all.encode_queries(["sky"]), atol=1e-6
    )
    # Batching and padding do not change a vector.
    queries = [claim, "sky", "how do plants make sugar from light and water"]
    together = encoder.encode_queries(queries, task)
    alone = np.vstack([encoder.encode_queries([q], task) for q in queries])
    np.testing.assert_allclose(together, alone, atol=vector_tolerance(encoder.precision))


def test_instruction_span_survives_bos_and_left_padding(tiny_mistral_path):
    base = Encoder.load(str(tiny_mistral_path))
    task = "given a question retrieve the answer"
    queries = ["why is the sky blue", "sun"]
    vectors = {}
    for side in ("left", "right"):
        encoder = _with_profile(base, pool_instruction=False, pooling="mean", padding_side=side)
        ids, spans = encoder.tokenize_queries(queries, task)
        tokens = encoder.tokenizer.convert_ids_to_tokens(ids[0])
        start, stop = spans[0]
        # <s> is added by the tokenizer, </s> by the profile: both stay in the pool.
        assert tokens[:start] == ["<s>"] and tokens[stop:] == [
            "why",
            "is",
            "the",
            "sky",
            "blue",
            "</s>",
        ]
        vectors[side] = encoder.encode_queries(queries, task)
    np.testing.assert_allclose(vectors["left"], vectors["right"], atol=1e-5)


def test_instruction_pooling_option_is_validated(tmp_path):
    with pytest.raises(ValueError, match="mean pooling"):
        dataclasses.replace(E5_MISTRAL, pool_instruction=False)
    with pytest.raises(ValueError, match="before"):
        ModelProfile(name="x", query_template="{query} ({task})", pool_instruction=False)
    for bad in (
        {"name": "x", "pooling": "cls", "pool_instruction": False},
        {"name": "x", "query_template": "Instruct: {task}"},
        {"name": "x", "pooling": "max"},
    ):
        (tmp_path / "engine_profile.json").write_text(json.dumps(bad))
        with pytest.raises(EngineError, match="not a valid model profile"):
            resolve_profile("x", tmp_path, "bert")


@pytest.mark.parametrize("model", ["minilm", "minilm-e5-template", "mistral"])
def test_token_id_documents_are_framed_like_their_text(default_encoder, tiny_mistral_path, model):
    """A document's own token ids get the ids its text gets: template, CLS/SEP or BOS/EOS, cut."""
    if model == "mistral":
        encoder = Encoder.load(str(tiny_mistral_path))
        text = "plants make sugar from light and water"
    else:
        encoder = default_encoder
        if model == "minilm-e5-template":
            encoder = _with_profile(default_encoder, document_template="passage: {text}")
        text = "Photosynthesis turns light into sugar."
    own = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = encoder.tokenize([encoder.format_document("", text)])[0]
    assert encoder.tokenize_document_ids([own])[0] == expected and len(expected) > len(own)
    long_ids = encoder.tokenize_document_ids([own * 100], max_length=32)[0]
    assert len(long_ids) == 32 and long_ids[-1] == expected[-1] and long_ids[0] == expected[0]
    with pytest.raises(EngineError, match="not in .* vocabulary"):
        encoder.tokenize_document_ids([[len(encoder.tokenizer) + 5]])
    with pytest.raises(EngineError, match="no token ids"):
        encoder.tokenize_document_ids([own, []])
