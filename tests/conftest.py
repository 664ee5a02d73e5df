"""Shared fixtures: real models (the embedded default and tiny random ones), no downloads."""

from __future__ import annotations

import os

import pytest
import torch

from tests.models import build_tiny_bert, build_tiny_mistral

os.environ.setdefault("ENGINE_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite encodes with torch on every CPU (on one without bf16, auto would pick OpenVINO
# and convert each model it loads); tests/test_runtime.py tests the OpenVINO runtime itself.
os.environ.setdefault("ENGINE_RUNTIME", "torch")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_encoder():
    """The embedded all-MiniLM-L6-v2, loaded once per test session."""
    from engine.encoder import Encoder

    return Encoder.load()


@pytest.fixture(scope="session")
def tiny_mistral_path(tmp_path_factory):
    """A tiny random Mistral named like e5-mistral, so it gets that profile."""
    return build_tiny_mistral(tmp_path_factory.mktemp("models") / "tiny-e5-mistral-7b-instruct")


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")
