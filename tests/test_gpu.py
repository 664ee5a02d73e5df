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


@pytest.mark.parametrize("index_type", ["flat", "ivf-flat", "hnsw"])
def test_index_types_on_all_gpus_match_the_cpu(tmp_path, index_type):
    """Flat and IVF go to every GPU sharded in fp16; HNSW becomes CAGRA where faiss has cuVS."""
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss has no GPU build here")
    if index_type == "hnsw" and not hasattr(faiss, "GpuIndexCagra"):
        pytest.skip("faiss was built without cuVS (no CAGRA)")
    from indexer import vector_index
    from indexer.store import Store, Writer

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = {"model": "m", "fingerprint": "f", "dim": 64, "max_length": 8,
                "engine_version": "t", "index_type": index_type}  # fmt: skip
    rows = [{"id": None, "doc_id": str(i), "source": "s", "title": "", "text": "t",
             "content_hash": str(i), "token_count": 1} for i in range(3000)]  # fmt: skip
    with Writer(tmp_path / "index", settings, rebuild=False) as store:
        store.commit(upsert=rows, vectors=vectors)
    store = Store.open(tmp_path / "index")
    gpu = store.snapshots.search_index()
    assert gpu is not store.load_faiss()  # a GPU copy answers
    _, gpu_ids = store.search(vectors[:20], 10)
    cpu_ids = vector_index.search(store.load_faiss(), store.spec, vectors[:20], 10)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gpu_ids, cpu_ids, strict=True)])
    assert overlap >= 0.9
