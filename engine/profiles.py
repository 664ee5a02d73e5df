"""Model profiles: everything model-specific about turning text into an embedding.

A profile is the one place that states how a model must be fed and read:
pooling, prompt templates for each side, maximum length, padding side and how
sequences must start and end. Index, search, bench and train all read it, so a
model behaves the same everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import EngineError

PROFILE_FILE = "engine_profile.json"

# The paper's query format (E5-mistral): the task instruction, then the query.
INSTRUCT_TEMPLATE = "Instruct: {task}\nQuery: {query}"

POOLINGS = ("mean", "cls", "last")

# The paper encodes the first 512 tokens of a document (unless the model has fewer).
DEFAULT_DOCUMENT_TOKENS = 512


@dataclass(frozen=True)
class ModelProfile:
    """How to feed a model and read an embedding out of it."""

    name: str
    pooling: str = "mean"
    normalize: bool = True
    max_length: int = 512
    padding_side: str = "right"
    # Sequences must start with BOS / end with EOS. Checked on every batch:
    # some tokenizers silently drop them (e5-mistral under transformers 5).
    require_bos: bool = False
    require_eos: bool = False
    # Token to append as end of sequence when it is not the tokenizer's eos_token.
    eos_token: str | None = None
    # Query with an instruction; query without one; document (no instruction ever).
    query_template: str = INSTRUCT_TEMPLATE
    bare_query_template: str = "{query}"
    document_template: str = "{text}"
    # Trained with instructions: benchmarks turn them on by default.
    instruction_tuned: bool = False
    # Mean pooling over the whole prompt (the default), or only over the tokens
    # from the query on (False, as INSTRUCTOR does): the instruction still shapes
    # those tokens through attention but is not averaged into the vector, so a
    # long instruction cannot drown a two-word query.
    pool_instruction: bool = True
    lora_target_modules: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {self.padding_side!r}")
        for template in (self.query_template, self.bare_query_template):
            if "{query}" not in template:
                raise ValueError(f"query template {template!r} has no {{query}}")
        if "{text}" not in self.document_template:
            raise ValueError(f"document template {self.document_template!r} has no {{text}}")
        if not self.pool_instruction:
            if self.pooling != "mean":
                raise ValueError("pool_instruction=False needs mean pooling")
            if "{task}" in self.query_template.split("{query}", 1)[1]:
                raise ValueError("pool_instruction=False needs {task} before {query}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "lora_target_modules" in values:
            values["lora_target_modules"] = tuple(values["lora_target_modules"])
        return cls(**values)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PROFILE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def with_max_length(self, max_length: int | None) -> ModelProfile:
        return self if max_length is None else replace(self, max_length=max_length)


DECODER_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_LORA = ("query", "key", "value", "dense")

MINILM = ModelProfile(
    name="all-MiniLM-L6-v2",
    pooling="mean",
    max_length=512,
    # Never trained with instructions: one read as context but averaged into a
    # short query costs 3-8 nDCG@10 points; left out of the mean it costs at most
    # 1.4 (bench/results/train-scifact.md).
    pool_instruction=False,
    lora_target_modules=BERT_LORA,
)

E5_MISTRAL = ModelProfile(
    name="e5-mistral-7b-instruct",
    pooling="last",
    max_length=4096,
    padding_side="right",
    require_bos=True,
    require_eos=True,
    query_template=INSTRUCT_TEMPLATE,
    instruction_tuned=True,
    lora_target_modules=DECODER_LORA,
)

QWEN3_EMBEDDING = ModelProfile(
    name="Qwen3-Embedding",
    pooling="last",
    max_length=8192,
    padding_side="left",
    require_eos=True,
    eos_token="<|endoftext|>",
    query_template="Instruct: {task}\nQuery:{query}",
    instruction_tuned=True,
    lora_target_modules=DECODER_LORA,
)

E5_V2 = ModelProfile(
    name="e5",
    pooling="mean",
    query_template="query: {query}",
    bare_query_template="query: {query}",
    document_template="passage: {text}",
    lora_target_modules=BERT_LORA,
)

MULTILINGUAL_E5_INSTRUCT = ModelProfile(
    name="multilingual-e5-instruct",
    pooling="mean",
    query_template=INSTRUCT_TEMPLATE,
    bare_query_template="{query}",
    instruction_tuned=True,
    lora_target_modules=BERT_LORA,
)

BGE_EN = ModelProfile(
    name="bge",
    pooling="cls",
    query_template="{task} {query}",
    bare_query_template="Represent this sentence for searching relevant passages: {query}",
    lora_target_modules=BERT_LORA,
)

# Matched against the model's name or path, first match wins.
KNOWN_PROFILES: tuple[tuple[str, ModelProfile], ...] = (
    (r"e5-mistral", E5_MISTRAL),
    (r"qwen3-embedding", QWEN3_EMBEDDING),
    (r"multilingual-e5-.*instruct", MULTILINGUAL_E5_INSTRUCT),
    (r"(^|/)(multilingual-)?e5-(small|base|large)", E5_V2),
    (r"bge-(small|base|large)-(en|zh)", BGE_EN),
    (r"all-minilm-l6-v2", MINILM),
)

DECODER_MODEL_TYPES = {"mistral", "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}


def known_profile(name: str) -> ModelProfile | None:
    """The shipped profile whose pattern matches ``name`` (a hub id or path)."""
    lowered = name.lower()
    for pattern, profile in KNOWN_PROFILES:
        if re.search(pattern, lowered):
            return profile
    return None


def read_sentence_transformers_pooling(folder: Path) -> tuple[str | None, bool]:
    """Pooling mode and ``include_prompt`` from a sentence-transformers layout.

    ``(None, True)`` when the folder has no readable Pooling module.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, True
    try:
        modules = json.loads(modules_file.read_text())
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                config = json.loads((folder / module["path"] / "config.json").read_text())
                include_prompt = bool(config.get("include_prompt", True))
                mode = config.get("pooling_mode")  # sentence-transformers 5 writes one key
                if config.get("pooling_mode_cls_token") or mode == "cls":
                    return "cls", include_prompt
                if config.get("pooling_mode_lasttoken") or mode == "lasttoken":
                    return "last", include_prompt
                if config.get("pooling_mode_mean_tokens") or mode == "mean":
                    return "mean", include_prompt
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, True
    return None, True


def read_sentence_transformers_prompts(folder: Path) -> dict[str, str]:
    """Prompts stored with a sentence-transformers model (``config_sentence_transformers.json``)."""
    path = folder / "config_sentence_transformers.json"
    try:
        prompts = json.loads(path.read_text()).get("prompts") or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in prompts.items() if isinstance(v, str)}


def resolve_profile(name: str, folder: Path | None, model_type: str | None) -> ModelProfile:
    """Pick the profile for a model.

    Order: a saved ``engine_profile.json`` in the folder (written by ``engine
    train``), a shipped profile matching the name, the sentence-transformers
    pooling config (mode and ``include_prompt``), then a default by architecture (last-token pooling with EOS
    for decoder-only models, mean pooling otherwise).
    """
    if folder is not None and (folder / PROFILE_FILE).is_file():
        path = folder / PROFILE_FILE
        try:
            return ModelProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise EngineError(f"{path}: not a valid model profile ({exc})") from None
    profile = known_profile(name)
    if profile is not None:
        return profile
    is_decoder = (model_type or "") in DECODER_MODEL_TYPES
    pooling, include_prompt = (
        read_sentence_transformers_pooling(folder) if folder is not None else (None, True)
    )
    if is_decoder:
        profile = ModelProfile(
            name=name,
            pooling=pooling or "last",
            require_eos=True,
            instruction_tuned=True,
            lora_target_modules=DECODER_LORA,
        )
    else:
        profile = ModelProfile(
            name=name,
            pooling=pooling or "mean",
            pool_instruction=include_prompt or pooling not in (None, "mean"),
            lora_target_modules=BERT_LORA,
        )
    prompts = read_sentence_transformers_prompts(folder) if folder is not None else {}
    if prompts.get("query"):
        profile = replace(
            profile,
            bare_query_template=prompts["query"] + "{query}",
            query_template="{task} {query}",
        )
    if prompts.get("document") or prompts.get("passage"):
        prefix = prompts.get("document") or prompts["passage"]
        profile = replace(profile, document_template=prefix + "{text}")
    return profile
