"""The trained model: the engine's encoder with a LoRA adapter, and the InfoNCE loss.

Embeddings come from ``Encoder.embed`` (pooling, EOS handling and
normalisation of the model profile), so training optimises exactly the vectors
that search will compare.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.distributed import rank_and_world
from engine.encoder import Encoder
from engine.errors import EngineError
from engine.profiles import BERT_LORA, DECODER_LORA

# LoRA targets by config.model_type when the profile names none.
LORA_TARGETS_BY_TYPE: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("mistral", "mixtral", "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"),
        DECODER_LORA,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "mpnet"), BERT_LORA),
}
# Never adapted: BERT's pooler is computed but unused by embedding pooling.
LORA_EXCLUDED = ("pooler.dense",)


def lora_target_modules(encoder: Encoder, requested: Sequence[str] | None = None) -> list[str]:
    """Module names to adapt: the request, else the profile's, else by architecture."""
    if requested:
        return list(requested)
    if encoder.profile.lora_target_modules:
        return list(encoder.profile.lora_target_modules)
    model_type = getattr(encoder.model.config, "model_type", "")
    if model_type in LORA_TARGETS_BY_TYPE:
        return list(LORA_TARGETS_BY_TYPE[model_type])
    return ["all-linear"]


def add_lora(
    encoder: Encoder,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str] | None = None,
) -> list[str]:
    """Wrap ``encoder.model`` in a PEFT LoRA model in place; returns the target modules."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(encoder, target_modules)
    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in encoder.model.named_modules()
        if isinstance(module, nn.Linear)
    }
    if targets != ["all-linear"] and not set(targets) & linear_names:
        raise EngineError(
            f"none of the LoRA target modules {', '.join(targets)} is in {encoder.name}; "
            f"its linear layers are: {', '.join(sorted(linear_names))} (use --lora-target-modules)"
        )
    excluded = [
        name
        for name, _ in encoder.model.named_modules()
        if any(name == e or name.endswith("." + e) for e in LORA_EXCLUDED)
    ]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        exclude_modules=excluded or None,
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # peft still calls transformers' deprecated names
            warnings.simplefilter("ignore", FutureWarning)
            encoder.model = get_peft_model(encoder.model, config)
    except ValueError as exc:
        raise EngineError(f"cannot add LoRA to {encoder.name}: {exc}") from None
    return targets


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's trainable parameters by name."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def info_nce(
    query: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paper eq. 2: -log softmax of the positive's similarity over all candidate documents.

    ``mask[i, j]`` removes document ``j`` from query ``i``'s candidates (known
    positives that would otherwise count as negatives).
    """
    scores = query @ documents.T / temperature
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return F.cross_entropy(scores, targets)


def false_negative_mask(
    doc_keys: torch.Tensor, positive_keys: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(queries, documents): document ``j`` is a known positive of query ``i`` other than its target."""
    mask = (doc_keys[None, :, None] == positive_keys[:, None, :]).any(dim=-1)
    mask[torch.arange(targets.shape[0], device=targets.device), targets] = False
    return mask


class _AllGather(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows.

    Written on the stable ``dist.all_gather``/``dist.all_reduce``: torch's own
    differentiable gathers are deprecated or private.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss reaches every rank's documents
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated, and the row offset of this rank's own part.

    Every query then sees every document on every GPU as a negative (paper
    section 4.1). The gather is differentiable: each rank's loss sends gradients
    to the documents of all ranks, so once DDP/DeepSpeed average the gradients
    the update is exactly that of one big batch (``test_train_distributed``).
    Tensors without gradients (document keys) are gathered plainly.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local, 0
    if local.requires_grad:
        return _AllGather.apply(local), rank * local.shape[0]
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts), rank * local.shape[0]


@dataclass
class LossOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor  # share of queries whose positive scores highest


class EmbeddingModel(nn.Module):
    """Query and document towers sharing one encoder, trained with in-batch + hard negatives."""

    def __init__(self, encoder: Encoder, temperature: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.model  # registered so DDP/DeepSpeed see the parameters
        self.temperature = temperature

    def forward(
        self,
        query: dict[str, torch.Tensor],
        documents: dict[str, torch.Tensor],
        targets: torch.Tensor,
        doc_keys: torch.Tensor,
        positive_keys: torch.Tensor,
    ) -> LossOutput:
        q = self.encoder.embed(query)
        d = self.encoder.embed(documents)
        all_documents, offset = gather_with_grad(d)
        all_keys, _ = gather_with_grad(doc_keys)
        targets = targets + offset
        mask = false_negative_mask(all_keys, positive_keys, targets)
        loss = info_nce(q, all_documents, targets, self.temperature, mask)
        with torch.no_grad():
            scores = (q @ all_documents.T).masked_fill(mask, float("-inf"))
            accuracy = (scores.argmax(dim=1) == targets).float().mean()
        return LossOutput(loss, accuracy)
