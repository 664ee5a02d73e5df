"""The probes behind "Third session" in cpu-without-bf16-trials.txt (not a bench command).

Run from the repository root, with the ISA caps of the CPU to emulate set in the
environment (the trials file names them for each figure):

    python bench/results/cpu_without_bf16_probe.py vectors   # fp32 vectors, SciFact + NFCorpus
    python bench/results/cpu_without_bf16_probe.py noise     # the gate's error allowance
    python bench/results/cpu_without_bf16_probe.py roofline  # sgemm peak, workload GFLOP
    python bench/results/cpu_without_bf16_probe.py profile   # OpenVINO fp32 time per kernel
    python bench/results/cpu_without_bf16_probe.py speed fp32 wc8:32 wc8:128 static
    python bench/results/cpu_without_bf16_probe.py quality fp32 wc8:32 static

Variants: ``fp32``; ``wc8[:G]``: NNCF int8 weights, activations quantized at run time in
groups of G (0 or none: off); ``static``: NNCF ``quantize`` calibrated on 300 NFCorpus
documents. Work files go to ``$PROBE_DIR`` (default /tmp/cpu-probe).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("BEIR_DIR", "/work/shared/data/beir"))
WORK = Path(os.environ.get("PROBE_DIR", "/tmp/cpu-probe"))
DATASETS = ("scifact", "nfcorpus")
MAX_LENGTH = 256


def encoder(runtime: str = "torch"):
    from engine.encoder import Encoder

    return Encoder.load(max_length=MAX_LENGTH, precision="fp32", runtime=runtime)


def corpus(name: str) -> tuple[list[dict], list[dict], dict]:
    root = DATA / name
    docs = [json.loads(line) for line in open(root / "corpus.jsonl")]
    qrels: dict[str, dict[str, int]] = {}
    for row in csv.DictReader(open(root / "qrels" / "test.tsv"), delimiter="\t"):
        qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = [json.loads(line) for line in open(root / "queries.jsonl")]
    return docs, [q for q in queries if q["_id"] in qrels], qrels


def doc_texts(enc, docs: list[dict]) -> list[str]:
    return [enc.format_document(d.get("title", ""), d["text"]) for d in docs]


def reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(WORK / f"{name}-D.npy"), np.load(WORK / f"{name}-Q.npy")


def compare(name: str, docs_vectors: np.ndarray, query_vectors: np.ndarray) -> dict:
    """nDCG@10 and the share of queries with the fp32 top-10 set, against the reference."""
    import pytrec_eval

    docs, queries, qrels = corpus(name)
    ref_docs, ref_queries = reference(name)

    def ranked(d, q):
        scores = q @ d.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
        return top, np.take_along_axis(scores, top, 1)

    def ndcg(top, scores):
        run = {
            query["_id"]: {docs[j]["_id"]: float(s) for j, s in zip(top[i], scores[i], strict=True)}
            for i, query in enumerate(queries)
        }
        found = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        return round(float(np.mean([v["ndcg_cut_10"] for v in found.values()])), 5)

    top0, scores0 = ranked(ref_docs, ref_queries)
    top1, scores1 = ranked(docs_vectors, query_vectors)
    same = np.mean([set(a[:10]) == set(b[:10]) for a, b in zip(top0, top1, strict=True)])
    cosine = np.sum(ref_docs * docs_vectors, 1) / np.linalg.norm(docs_vectors, axis=1)
    return {
        "ndcg_fp32": ndcg(top0, scores0),
        "ndcg": ndcg(top1, scores1),
        "same_top10": round(float(same), 4),
        "min_cosine": float(cosine.min()),
    }


def vectors() -> None:
    """fp32 reference vectors (the engine's encoder, OpenVINO f32: within 2e-7 of torch's)."""
    WORK.mkdir(parents=True, exist_ok=True)
    enc = encoder("openvino")
    for name in DATASETS:
        docs, queries, _ = corpus(name)
        np.save(WORK / f"{name}-D.npy", enc.encode_texts(doc_texts(enc, docs), progress=True))
        np.save(WORK / f"{name}-Q.npy", enc.encode_queries([q["text"] for q in queries]))


def noise() -> None:
    rng = np.random.default_rng(0)

    def moved(x: np.ndarray, eps: float) -> np.ndarray:
        step = rng.standard_normal(x.shape).astype(np.float32)
        y = x + step * (eps / np.linalg.norm(step, axis=1, keepdims=True))
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    for name in DATASETS:
        d, q = reference(name)
        for eps in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            print(name, eps, compare(name, moved(d, eps), moved(q, eps)), flush=True)


def roofline() -> None:
    import torch

    enc = encoder()
    docs, _, _ = corpus("scifact")
    lengths = np.array([len(x) for x in enc.tokenize(doc_texts(enc, docs[:1000]))], float)
    hidden, ffn, layers = 384, 1536, 6
    linear = lengths.sum() * layers * (4 * hidden * hidden + 2 * hidden * ffn) * 2
    attention = (lengths**2).sum() * layers * 2 * hidden * 2
    print(
        f"tokens {lengths.sum():.0f}, GFLOP linear {linear / 1e9:.0f}, "
        f"attention {attention / 1e9:.0f}"
    )
    for m, k, n in [
        (4096, 384, 384),
        (4096, 384, 1152),
        (4096, 384, 1536),
        (4096, 1536, 384),
        (2048, 2048, 2048),
        (4096, 4096, 4096),
    ]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(20):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        print((m, k, n), "GFLOP/s", round(2 * m * k * n / float(np.median(times)) / 1e9, 1))


def batches(enc, texts: list[str], batch_tokens: int = 4096):
    from engine.encoder import token_budget_batches

    ids = enc.tokenize(texts, MAX_LENGTH)
    lengths = [len(x) for x in ids]
    for rows in token_budget_batches(lengths, batch_tokens):
        width = max(lengths[i] for i in rows)
        input_ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for j, i in enumerate(rows):
            input_ids[j, : lengths[i]] = ids[i]
            mask[j, : lengths[i]] = 1
        yield {"input_ids": input_ids, "attention_mask": mask}, rows


def compiled(enc, spec: str, profile: bool = False):
    """The variant ``spec`` of the engine's cached OpenVINO fp32 model, compiled."""
    import nncf
    import openvino as ov

    from engine.runtime import _cache_folder

    variant, _, group = spec.partition(":")
    # Converted (and cached) as the engine does; the variants start from that fp32 copy.
    encoder("openvino").inference_network()
    core = ov.Core()
    model = core.read_model(str(_cache_folder(enc._cache_key) / "model.xml"))
    if variant == "wc8":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    elif variant == "static":
        docs, _, _ = corpus("nfcorpus")
        feeds = [f for f, _ in batches(enc, doc_texts(enc, docs[:300]), 2048)]
        model = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds),
        )
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 2,
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": int(group or 0),
        "PERF_COUNT": profile,
    }
    return core.compile_model(model, "CPU", config)


def speed(specs: list[str]) -> None:
    """Forward passes alone over the first 1000 SciFact documents, length-sorted."""
    enc = encoder()
    docs, _, _ = corpus("scifact")
    feeds = [f for f, _ in batches(enc, doc_texts(enc, docs[:1000]))]
    for spec in specs:
        network = compiled(enc, spec)
        request = network.create_infer_request()
        request.infer(feeds[0])
        started = time.perf_counter()
        for feed in feeds:
            request.infer(feed)
        seconds = time.perf_counter() - started
        print(spec, f"{seconds:.2f} s, {1000 / seconds:.1f} docs/s", flush=True)


def profile() -> None:
    """OpenVINO's per-node times of the fp32 forward pass, by layer type and kernel."""
    from collections import Counter

    enc = encoder()
    docs, _, _ = corpus("scifact")
    feeds = [f for f, _ in batches(enc, doc_texts(enc, docs[:1000]))]
    request = compiled(enc, "fp32", profile=True).create_infer_request()
    request.infer(feeds[0])
    spent: Counter = Counter()
    for feed in feeds:
        request.infer(feed)
        for node in request.profiling_info:
            spent[(node.node_type, node.exec_type)] += node.real_time.total_seconds()
    total = sum(spent.values())
    for (kind, kernel), seconds in spent.most_common(10):
        print(f"{kind:16} {kernel:26} {seconds:6.2f} s {100 * seconds / total:5.1f}%")


def encode_with(network, enc, texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised vectors from a compiled OpenVINO variant."""
    request = network.create_infer_request()
    out = np.zeros((len(texts), enc.dim), np.float32)
    for feed, rows in batches(enc, texts):
        hidden = request.infer(feed)[network.output(0)]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def quality(specs: list[str]) -> None:
    enc = encoder()
    for spec in specs:
        network = compiled(enc, spec)
        for name in DATASETS:
            docs, queries, _ = corpus(name)
            found = compare(
                name,
                encode_with(network, enc, doc_texts(enc, docs)),
                encode_with(network, enc, [enc.format_query(q["text"]) for q in queries]),
            )
            print(spec, name, found, flush=True)


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["--help"]
    probes = {"vectors": vectors, "noise": noise, "roofline": roofline, "profile": profile}
    if command in probes:
        probes[command]()
    elif command in ("speed", "quality"):
        {"speed": speed, "quality": quality}[command](rest)
    else:
        print(__doc__)
