"""Training settings as plain dataclasses, kept apart from the CLI that fills them.

The split follows tevatron: what the model is (``ModelArguments``), what it
learns from (``DataArguments``) and how the loop runs (``TrainingArguments``).
All three are saved to ``training_args.json`` so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError

DEFAULT_QUERY_TOKENS = 128
# Paper section 4.1: InfoNCE with temperature 0.02, LoRA rank 16.
DEFAULT_TEMPERATURE = 0.02
DEFAULT_LORA_RANK = 16
DEFAULT_LORA_ALPHA = 32
DEFAULT_LORA_DROPOUT = 0.1


@dataclass(frozen=True)
class DataSource:
    """One training file and its sampling weight (None: proportional to its size)."""

    path: Path
    weight: float | None = None

    @classmethod
    def parse(cls, spec: str) -> DataSource:
        """``file.jsonl`` or ``file.jsonl:0.3``; a trailing ``:W`` is a weight only if it is a number."""
        head, sep, tail = spec.rpartition(":")
        if sep and head:
            try:
                weight = float(tail)
            except ValueError:
                return cls(Path(spec))
            if not weight > 0 or weight == float("inf"):
                raise EngineError(f"--data {spec}: the weight must be a positive number")
            return cls(Path(head), weight)
        return cls(Path(spec))

    def __str__(self) -> str:
        return str(self.path) if self.weight is None else f"{self.path}:{self.weight:g}"


@dataclass
class ModelArguments:
    """The base model, the LoRA adapter put on it and the loss."""

    base: str | None = None  # None -> the engine's default model
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float = DEFAULT_LORA_ALPHA
    lora_dropout: float = DEFAULT_LORA_DROPOUT
    # None -> the profile's lora_target_modules, else chosen by config.model_type.
    lora_target_modules: tuple[str, ...] | None = None
    temperature: float = DEFAULT_TEMPERATURE
    # Queries get the instruction template (paper); False trains bare queries.
    use_instruction: bool = True
    # Mean pooling includes the instruction's tokens; None keeps the base profile's choice.
    pool_instruction: bool | None = None

    def validate(self) -> None:
        if self.lora_rank < 1:
            raise EngineError(f"--lora-rank must be at least 1, not {self.lora_rank}")
        if not 0 <= self.lora_dropout < 1:
            raise EngineError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}")
        if not self.temperature > 0:
            raise EngineError(f"--temperature must be positive, not {self.temperature}")


@dataclass
class DataArguments:
    """Training files, their mix, and how examples become token sequences."""

    sources: list[DataSource] = field(default_factory=list)
    # Hard negatives per query in a batch; missing ones are filled with random documents.
    negatives_per_query: int = 1
    # None -> 128 / 512 tokens, or the model's maximum if smaller.
    max_query_length: int | None = None
    max_document_length: int | None = None
    # None -> the total number of examples over all files.
    examples_per_epoch: int | None = None

    def validate(self) -> None:
        if not self.sources:
            raise EngineError("no training data: pass --data FILE.jsonl (repeatable)")
        if self.negatives_per_query < 0:
            raise EngineError("--negatives-per-query must be 0 or more")
        for name in ("max_query_length", "max_document_length"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise EngineError(f"--{name.replace('_', '-')} must be at least 8")
        if self.examples_per_epoch is not None and self.examples_per_epoch < 1:
            raise EngineError("--examples-per-epoch must be at least 1")


@dataclass
class TrainingArguments:
    """The optimisation loop: schedule, precision, parallelism, output."""

    out: Path = Path("model")
    epochs: float = 1.0
    max_steps: int | None = None  # stops early; overrides epochs when smaller
    batch_size: int = 16  # queries per device per forward pass
    grad_accum: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_ratio
    max_grad_norm: float = 1.0
    seed: int = 42
    # None -> bf16 autocast on GPU, fp32 on CPU.
    bf16: bool | None = None
    gradient_checkpointing: bool = True
    # False: the frozen base runs without its own dropout (as at search time); LoRA dropout stays.
    base_dropout: bool = False
    # None, "zero3" (the shipped train/zero3.json) or a path to a DeepSpeed JSON config.
    deepspeed: str | None = None
    device: str | None = None
    merge: bool = False
    save_steps: int | None = None
    log_steps: int = 1
    # BEIR dataset folders benchmarked before and after training (``--eval-data``, repeatable).
    eval_data: tuple[Path, ...] = ()
    eval_max_length: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise EngineError("--batch-size must be at least 1")
        if self.grad_accum < 1:
            raise EngineError("--grad-accum must be at least 1")
        if not self.epochs > 0:
            raise EngineError("--epochs must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise EngineError("--max-steps must be at least 1")
        if self.learning_rate < 0:
            raise EngineError("--lr must not be negative")
        if not 0 <= self.warmup_ratio < 1:
            raise EngineError("--warmup-ratio must be in [0, 1)")


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and tuples as JSON values (for training_args.json)."""
    if isinstance(value, (DataSource, Path)):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value
