"""GPU training step: bf16, LoRA, gradient checkpointing, DeepSpeed ZeRO-3 (skipped without CUDA)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from engine.encoder import Encoder
from tests.test_train_trainer import PROBES, make_data, run

pytestmark = pytest.mark.gpu


def test_one_bf16_step_on_gpu(tiny_mistral_path, tmp_path):
    data = make_data(tmp_path / "train.jsonl", n=8)
    trainer = run(tiny_mistral_path, data, tmp_path / "gpu", epochs=1, batch_size=4, max_steps=1)
    assert trainer.encoder.device.type == "cuda"
    assert trainer.bf16
    assert next(trainer.encoder.model.get_base_model().parameters()).dtype == torch.bfloat16
    assert trainer.encoder.model.get_base_model().is_activation_checkpointing
    assert math.isfinite(trainer.log[0]["loss"])
    record = json.loads((tmp_path / "gpu" / "training_args.json").read_text())
    assert record["precision"] == "bf16" and record["lora_tensors_changed"] != "0/56"
    assert Encoder.load(str(tmp_path / "gpu")).encode_texts(PROBES).shape[0] == len(PROBES)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_one_zero3_step_on_gpu(tiny_mistral_path, tmp_path):
    data = make_data(tmp_path / "train.jsonl", n=8)
    trainer = run(
        tiny_mistral_path,
        data,
        tmp_path / "zero3",
        epochs=1,
        batch_size=4,
        max_steps=2,
        deepspeed="zero3",
    )
    assert trainer.ds_engine is not None
    assert trainer.ds_engine.zero_optimization_stage() == 3
    record = json.loads((tmp_path / "zero3" / "training_args.json").read_text())
    changed, total = map(int, record["lora_tensors_changed"].split("/"))
    assert changed > 0 and total == 2 * 2 * 7  # A and B of 7 projections in 2 layers
    reloaded = Encoder.load(str(tmp_path / "zero3"))
    assert torch.isfinite(torch.from_numpy(reloaded.encode_texts(PROBES))).all()


def test_gpu_step_script_on_a_small_shape():
    from train.gpu_step import measure

    report = measure(layers=2, hidden_size=256, batch_size=2, max_length=64, steps=2)
    assert report.peak_memory_gib > 0 and report.step_seconds > 0
    assert report.trainable < report.parameters
