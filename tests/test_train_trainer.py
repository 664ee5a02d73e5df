"""Training end to end on tiny models: the loss falls, only LoRA moves, the output reloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoder import Encoder
from engine.errors import EngineError
from tests.models import WORDS
from tests.tolerances import vector_tolerance
from train.arguments import DataArguments, DataSource, ModelArguments, TrainingArguments
from train.collator import Collator
from train.data import MixedDataset, load_sources
from train.model import EmbeddingModel
from train.trainer import Trainer, load_deepspeed_config

INSTRUCTION = "Given a question, retrieve passages that answer it"
PROBES = ["plants make sugar", "the sky is blue", "water and light energy"]


def make_data(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Queries are 3 words; the positive contains them, negatives are random words."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(n):
            topic = rng.sample(WORDS, 3)
            row = {
                "instruction": INSTRUCTION,
                "query": " ".join(topic),
                "positive": {"title": "", "text": " ".join(topic + rng.sample(WORDS, 5))},
                "negatives": [" ".join(rng.sample(WORDS, 8)) for _ in range(2)],
            }
            handle.write(json.dumps(row) + "\n")
    return path


def fixed_batch_loss(encoder: Encoder, data: Path, temperature: float) -> float:
    """The loss of the whole file as one batch, dropout off."""
    dataset = MixedDataset(load_sources([DataSource(data)]), negatives_per_query=2, seed=7)
    collator = Collator(encoder, max_query_length=32, max_document_length=64)
    encoder.model.eval()
    with torch.no_grad():
        batch = collator([dataset[i] for i in range(len(dataset))])
        return EmbeddingModel(encoder, temperature)(**batch).loss.item()


def run(base: Path, data: Path, out: Path, **overrides) -> Trainer:
    training = {
        "out": out,
        "epochs": 6,
        "batch_size": 8,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "progress": False,
        **overrides,
    }
    trainer = Trainer(
        ModelArguments(base=str(base), temperature=0.1),
        DataArguments(
            sources=[DataSource(data)],
            negatives_per_query=2,
            max_query_length=32,
            max_document_length=64,
        ),
        TrainingArguments(**training),
        argv=["engine", "train", "--base", str(base)],
    )
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def trained_bert(tiny_bert_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    data = make_data(folder / "train.jsonl")
    trainer = run(tiny_bert_path, data, folder / "model", merge=False, save_steps=5)
    return trainer, data, folder / "model"


def test_training_lowers_the_loss_and_moves_only_lora(trained_bert, tiny_bert_path):
    trainer, data, out = trained_bert
    base = Encoder.load(str(tiny_bert_path))
    before = fixed_batch_loss(base, data, 0.1)
    after = fixed_batch_loss(trainer.encoder, data, 0.1)
    assert after < before - 0.2, (before, after)
    # Base weights are byte-identical to the model on disk; every LoRA tensor moved.
    trained = trainer.encoder.model.get_base_model().state_dict()
    original = base.model.state_dict()
    base_keys = {k.replace(".base_layer", ""): k for k in trained if "lora_" not in k}
    assert set(base_keys) == set(original)
    for name, key in base_keys.items():
        assert torch.equal(trained[key], original[name]), name
    record = json.loads((out / "training_args.json").read_text())
    changed, total = record["lora_tensors_changed"].split("/")
    assert int(changed) == int(total) == 2 * 2 * 6  # A and B of 6 modules in 2 layers


def test_saved_adapter_reloads_and_encodes_identically(trained_bert):
    trainer, _, out = trained_bert
    assert (out / "adapter_config.json").is_file()
    assert (out / "engine_profile.json").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert set(config["target_modules"]) == {"query", "key", "value", "dense"}
    assert config["r"] == 16 and config["lora_alpha"] == 32
    reloaded = Encoder.load(str(out))
    trainer.encoder.set_max_length(reloaded.max_length)
    ours = trainer.encoder.encode_texts(PROBES)
    theirs = reloaded.encode_texts(PROBES)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    base = Encoder.load(str(trainer.model_args.base)).encode_texts(PROBES)
    assert np.abs(base - theirs).max() > 1e-3  # the adapter is really applied
    profile = json.loads((out / "engine_profile.json").read_text())
    assert profile["instruction_tuned"] is True  # trained with instructions


def test_save_steps_checkpoints_load_back(trained_bert):
    """--save-steps 5 over 18 steps: checkpoints after steps 5, 10 and 15 (the end is the
    output folder itself), each a loadable adapter with the log up to its step."""
    trainer, _, out = trained_bert
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-5",
    ]
    final = Encoder.load(str(out)).encode_texts(PROBES)
    for step in (5, 10, 15):
        folder = out / f"checkpoint-{step}"
        log = json.loads((folder / "training_log.json").read_text())
        assert [entry["step"] for entry in log] == list(range(1, step + 1))
        assert log == trainer.log[:step]
        vectors = Encoder.load(str(folder)).encode_texts(PROBES)
        assert vectors.shape == final.shape and np.isfinite(vectors).all()
        assert np.abs(vectors - final).max() > 1e-4  # an earlier state, not the final one


def test_records_command_log_and_plot(trained_bert):
    trainer, _, out = trained_bert
    record = json.loads((out / "training_args.json").read_text())
    assert record["argv"][:2] == ["engine", "train"]
    assert record["model"]["temperature"] == 0.1
    assert record["steps"] == len(trainer.log) == 18  # 24 examples / 8 x 6 epochs
    log = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in log] == list(range(1, 19))
    assert log[-1]["lr"] < log[0]["lr"]  # linear decay
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.precision
def test_merge_writes_a_full_model(tiny_bert_path, tmp_path):
    data = make_data(tmp_path / "train.jsonl", n=8)
    trainer = run(tiny_bert_path, data, tmp_path / "merged", merge=True, epochs=1)
    out = tmp_path / "merged"
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = Encoder.load(str(out))
    adapter = Encoder.load(str(out / "adapter"))
    # Merged weights against base + LoRA: other sums, so equal within the precision's tolerance.
    tolerance = vector_tolerance(merged.precision)
    np.testing.assert_allclose(
        merged.encode_texts(PROBES), adapter.encode_texts(PROBES), atol=tolerance
    )
    assert "lora" not in " ".join(n for n, _ in merged.model.named_parameters())
    # The merge really folded the trained adapter in: the merged model is not the base one.
    base = Encoder.load(str(tiny_bert_path)).encode_texts(PROBES)
    assert np.abs(merged.encode_texts(PROBES) - base).max() > 1e-3
    assert len(trainer.log) == 1  # 8 examples, one batch of 8, one epoch


def test_unchanged_lora_weights_fail_loudly(tiny_bert_path, tmp_path):
    data = make_data(tmp_path / "train.jsonl", n=8)
    with pytest.raises(
        EngineError, match="LoRA weights did not change in the first optimizer step"
    ):
        run(tiny_bert_path, data, tmp_path / "frozen", learning_rate=0.0)


def test_mistral_trains_with_checkpointing_last_token_pooling(tiny_mistral_path, tmp_path):
    data = make_data(tmp_path / "train.jsonl", n=8)
    trainer = run(tiny_mistral_path, data, tmp_path / "mistral", epochs=1, batch_size=4)
    network = trainer.encoder.model.get_base_model()
    assert network.is_activation_checkpointing
    assert trainer.encoder.profile.pooling == "last"
    targets = json.loads((tmp_path / "mistral" / "adapter_config.json").read_text())[
        "target_modules"
    ]
    assert set(targets) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    # The query carries the instruction in the E5-mistral template.
    collator = Collator(trainer.encoder)
    group = MixedDataset(load_sources([DataSource(data)]))[0]
    encoder = trainer.encoder
    prompt = encoder.format_query(group.query, collator.instruction(group))
    assert prompt.startswith(f"Instruct: {INSTRUCTION}\nQuery: ")
    ids = collator([group])["query"]["input_ids"][0].tolist()
    assert ids == encoder.tokenize([prompt], collator.max_query_length)[0]
    bare = Collator(encoder, use_instruction=False)([group])["query"]["input_ids"][0].tolist()
    assert bare == encoder.tokenize([group.query], collator.max_query_length)[0]


def test_zero3_config_is_accepted_by_deepspeed(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    config = load_deepspeed_config(
        "zero3", batch_size=4, grad_accum=2, world=1, max_grad_norm=1.0, bf16=True
    )
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_batch_size == 8
    assert parsed.gradient_accumulation_steps == 2
    assert parsed.bfloat16_config.enabled
    # The parser is strict, so the check above means something.
    config["zero_optimization"]["not_a_key"] = 1
    with pytest.raises(Exception, match="not_a_key"):
        DeepSpeedConfig(config)


def test_deepspeed_config_errors(tmp_path):
    with pytest.raises(EngineError, match="DeepSpeed config not found"):
        load_deepspeed_config(
            str(tmp_path / "nope.json"),
            batch_size=1,
            grad_accum=1,
            world=1,
            max_grad_norm=1,
            bf16=False,
        )
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EngineError, match="bad.json: invalid JSON"):
        load_deepspeed_config(
            str(tmp_path / "bad.json"),
            batch_size=1,
            grad_accum=1,
            world=1,
            max_grad_norm=1,
            bf16=False,
        )
