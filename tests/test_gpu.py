"""The encoder and the store on a CUDA GPU (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.encoder import Encoder

pytestmark = pytest.mark.gpu

TEXTS = ["plants make sugar from light", "what is the pass key " * 20, "sky", "blue sky"]


def test_bf16_on_cuda_matches_fp32_on_cpu(tiny_mistral_path):
    cpu = Encoder.load(str(tiny_mistral_path), device="cpu")
    gpu = Encoder.load(str(tiny_mistral_path), device="cuda")
    assert next(gpu.model.parameters()).dtype == torch.bfloat16
    cosines = (cpu.encode_texts(TEXTS) * gpu.encode_texts(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.99


def test_faiss_gpu_search_matches_cpu(tmp_path, default_encoder):
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss has no GPU build here")
    from indexer.documents import Document
    from indexer.indexing import update_index
    from indexer.store import Store

    docs = [Document(str(i), "s", "", text) for i, text in enumerate(TEXTS)]
    update_index(tmp_path / "index", default_encoder, docs, progress=False)
    store = Store.open(tmp_path / "index")
    query = default_encoder.encode_queries(["sugar in plants"])
    gpu_scores, gpu_ids = store.search(query, 4)
    cpu_scores, cpu_ids = store.load_faiss().search(query, 4)
    assert (gpu_ids == cpu_ids).all()
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
