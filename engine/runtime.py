"""Inference runtime: what executes the transformer's forward pass for encoding.

* ``torch``: the model itself (every precision, every device; training always).
* ``openvino`` (CPU, fp32 or int8): the model converted once to an OpenVINO model and
  run by OpenVINO's CPU plugin. In fp32 it computes in strict f32 (its fused attention,
  LayerNorm and GELU kernels): vectors stay within 2e-7 of torch fp32 (the same BEIR
  top 10s); on emulated CPUs without bf16 it took 1.3x (AVX-512) to 1.6x (AVX2, an upper
  bound) fewer CPU seconds than torch fp32. In int8 (opt-in) the weights are compressed
  to int8 per output channel by NNCF (data-free) and the CPU plugin quantizes
  activations at run time per token in groups of 32, on AVX512-VNNI/AMX int8 dot
  products (bench/results/README.md, "CPUs without bf16"). Needs the optional
  ``openvino`` extra (``pip install 'engine[openvino]'``: openvino, and nncf for int8).
* ``auto``: ``openvino`` where precision ``auto`` resolved to fp32 on a CPU (a CPU without
  native bf16), or where precision ``int8`` runs on a CPU with int8 dot products, and the
  packages are installed; else ``torch``. An explicit ``--precision fp32`` stays on
  torch: it is the reference.

Tokenisation, batching and pooling stay in the one encoder (engine/encoder.py); only
the network's forward pass is swapped. A converted model is cached on disk under
``<cache>/openvino/<key>/`` keyed by the weights' fingerprint, the precision and the
library versions. No openvino or torch import at module level: the CLI's options import
the names below.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

RUNTIME_ENV = "ENGINE_RUNTIME"
AUTO = "auto"
TORCH = "torch"
OPENVINO = "openvino"
RUNTIMES = (AUTO, TORCH, OPENVINO)


def default_cache_dir() -> Path:
    """``$ENGINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/engine`` (``~/.cache/engine``)."""
    if os.environ.get("ENGINE_CACHE_DIR"):
        return Path(os.environ["ENGINE_CACHE_DIR"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "engine"


# Activations are quantized per token in groups of this many channels (int8 only):
# 32 kept SciFact/NFCorpus nDCG@10 within 0.003 of fp32; 128 was 1.2x as fast and 0.004.
DYNAMIC_QUANTIZATION_GROUP = 32


def openvino_available(int8: bool = False) -> bool:
    """Whether openvino (and, for ``int8``, nncf, which compresses the weights) imports."""
    try:
        import openvino  # noqa: F401

        if int8:
            import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(
    requested: str | None, device_type: str, precision_choice: str, precision: str
) -> str:
    """``torch`` or ``openvino`` for ``requested`` (None: ``$ENGINE_RUNTIME``, else ``auto``).

    ``precision_choice`` is the precision asked for (``auto``, ``fp32``, ...),
    ``precision`` what it resolved to on this device. An explicit ``openvino`` takes
    precision ``auto`` or ``fp32`` (and then computes in fp32, whatever the CPU), or
    ``int8``.
    """
    from engine.errors import EngineError
    from engine.precision import INT8, cpu_has_int8_dot_products

    choice = (requested or os.environ.get(RUNTIME_ENV) or AUTO).strip().lower()
    if choice not in RUNTIMES:
        raise EngineError(
            f"runtime must be one of {', '.join(RUNTIMES)}, not {choice!r} "
            f"(--runtime or ${RUNTIME_ENV})"
        )
    if choice == TORCH:
        return TORCH
    int8 = precision == INT8
    if choice == AUTO:
        if device_type != "cpu":
            return TORCH
        fast_fp32 = precision_choice == AUTO and precision == "fp32"
        fast_int8 = int8 and cpu_has_int8_dot_products()
        fast = fast_fp32 or fast_int8
        return OPENVINO if fast and openvino_available(int8=int8) else TORCH
    if device_type != "cpu":
        raise EngineError(f"runtime openvino runs on CPU only, not on {device_type}")
    fp32 = precision_choice in ("auto", "fp32") and precision in ("fp32", "mixed")
    if not (fp32 or int8):
        raise EngineError(
            f"runtime openvino computes in fp32 or int8, not {precision}: "
            "use --precision fp32, int8 or auto"
        )
    if not openvino_available():
        raise EngineError("runtime openvino needs the openvino package: pip install openvino")
    if int8 and not openvino_available(int8=True):
        raise EngineError("runtime openvino in int8 needs the nncf package: pip install nncf")
    return OPENVINO


class OpenVINONetwork:
    """An OpenVINO-compiled copy of a transformer, called like the torch model it came from.

    Returns ``(last_hidden_state,)`` as a torch tensor, so pooling stays the encoder's.
    One infer request, used under a lock (the server encodes from several threads).
    """

    def __init__(self, compiled) -> None:
        self._request = compiled.create_infer_request()
        self._output = compiled.output(0)
        self._lock = threading.Lock()

    def __call__(self, *, input_ids, attention_mask):
        import torch

        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        with self._lock:
            result = self._request.infer(feed)
            hidden = result[self._output].copy()
        return (torch.from_numpy(hidden),)


def openvino_network(
    model, example: dict, cache_key: str | None, *, int8: bool = False
) -> OpenVINONetwork:
    """Convert ``model`` (a PEFT model is merged first, on a copy) and compile it for the CPU.

    ``example`` is a padded batch (``input_ids``, ``attention_mask``) to trace with: it
    must hold padding, or the converter may drop the attention mask from the graph.
    With ``cache_key`` the converted model is read from, or written to, the disk cache.
    ``int8``: weights compressed to int8, activations quantized at run time.
    """
    import openvino as ov
    import torch

    folder = _cache_folder(cache_key, int8) if cache_key else None
    path = folder / "model.xml" if folder else None
    core = ov.Core()
    if path is not None and path.is_file():
        converted = core.read_model(str(path))
    else:
        converted = _convert(model, example)
        if int8:
            converted = _compress_weights(converted)
        if folder is not None:
            _save_atomically(converted, folder)
    config = {
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16/fp16, whatever the CPU offers
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time: one stream on all threads
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        # int8 weights: activations quantized per token and group at run time (0: off).
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": DYNAMIC_QUANTIZATION_GROUP if int8 else 0,
    }
    return OpenVINONetwork(core.compile_model(converted, "CPU", config))


def _compress_weights(converted):
    """Every weight to int8 per output channel, asymmetric (NNCF, no calibration data)."""
    import contextlib
    import io
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar: never on --json stdout
        return nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_ASYM)


def _convert(model, example: dict):
    import copy

    import openvino as ov
    import torch

    network = model
    if hasattr(network, "merge_and_unload"):
        network = copy.deepcopy(network).merge_and_unload()
    # A decoder's key/value cache is an object the tracer cannot follow (Mistral): off.
    config = getattr(network, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is not None:
        config.use_cache = False
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent branches
            converted = ov.convert_model(network, example_input=example)
    finally:
        if use_cache is not None:
            config.use_cache = use_cache
    for port in converted.inputs:
        port.get_node().set_partial_shape(ov.PartialShape([-1, -1]))  # any batch, any length
    converted.validate_nodes_and_infer_types()
    return converted


def _cache_folder(cache_key: str, int8: bool = False) -> Path:
    import openvino as ov
    import torch
    import transformers

    versions = f"{cache_key}\0{ov.__version__}\0{transformers.__version__}\0{torch.__version__}"
    if int8:
        import nncf

        versions += f"\0int8\0{nncf.__version__}"
    key = hashlib.sha256(versions.encode()).hexdigest()[:20]
    return default_cache_dir() / "openvino" / key


def _save_atomically(converted, folder: Path) -> None:
    """Write to a sibling temporary folder, then rename: a killed run leaves no half model."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        # compress_to_fp16=False: the default would halve the weights to fp16.
        ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        os.replace(staging, folder)
    except OSError:
        pass  # another process won the race, or the cache is read-only: convert next time
    finally:
        shutil.rmtree(staging, ignore_errors=True)
