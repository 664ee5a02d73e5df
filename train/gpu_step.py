"""Peak GPU memory and step time of LoRA training on a 7B-shaped random-weight Mistral.

Random weights, so nothing is downloaded: the shape is E5-mistral's (hidden
4096, 32 layers, 32 heads, 8 KV heads, MLP 14336), and the step is the real one
(``Collator`` -> ``EmbeddingModel`` -> InfoNCE with LoRA, gradient
checkpointing and bf16). With ``--fit`` it halves the layer count until a step
fits in memory.

    python -m train.gpu_step                       # 7B shape, batch 8 x (1 + 1) x 512 tokens
    python -m train.gpu_step --layers 8 --batch-size 32 --max-length 256
    python -m train.gpu_step --fit --json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass

import click
import torch

from engine.errors import EngineError
from engine.options import json_option


@dataclass
class StepReport:
    layers: int
    parameters: int
    trainable: int
    batch_size: int
    negatives: int
    max_length: int
    peak_memory_gib: float
    step_seconds: float
    tokens_per_second: float
    device: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def measure(
    *,
    layers: int = 32,
    batch_size: int = 8,
    negatives: int = 1,
    max_length: int = 512,
    steps: int = 3,
    gradient_checkpointing: bool = True,
    lora_rank: int = 16,
    hidden_size: int | None = None,
    seed: int = 0,
) -> StepReport:
    """Build the random model on the GPU, run ``steps`` optimiser steps, report the last ones."""
    from bench.random_models import MISTRAL_SHAPES, SPECIAL_TOKENS, random_mistral, word_tokenizer
    from engine.encoder import Encoder
    from engine.profiles import E5_MISTRAL
    from train.collator import Collator
    from train.data import TrainDocument, TrainGroup
    from train.model import EmbeddingModel, add_lora

    if not torch.cuda.is_available():
        raise EngineError("train.gpu_step needs a CUDA GPU")
    device = torch.device("cuda")
    shape = dict(MISTRAL_SHAPES["mistral-7b"], num_hidden_layers=layers)
    if hidden_size:
        shape.update(hidden_size=hidden_size, intermediate_size=hidden_size * 7 // 2)
    # Built in bf16 on the GPU: no fp32 copy of 7B weights.
    network = random_mistral(shape, device=device, dtype=torch.bfloat16, seed=seed)
    torch.cuda.reset_peak_memory_stats()
    # Words w0 .. wN, one token each, so a text of N words is N tokens.
    words = [f"w{i}" for i in range(shape["vocab_size"] - len(SPECIAL_TOKENS))]
    tokenizer = word_tokenizer(words, max_length)
    encoder = Encoder.from_model(network, tokenizer, E5_MISTRAL.with_max_length(max_length))
    if gradient_checkpointing:
        enable = getattr(network, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            network.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    add_lora(encoder, rank=lora_rank, alpha=2 * lora_rank, dropout=0.1)
    model = EmbeddingModel(encoder, temperature=0.02)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    collator = Collator(encoder, max_query_length=max_length, max_document_length=max_length)
    generator = torch.Generator().manual_seed(seed)

    def text() -> str:
        ids = torch.randint(0, len(words), (max_length,), generator=generator)
        return " ".join(words[int(i)] for i in ids)

    encoder.model.train()
    times = []
    tokens = batch_size * (2 + negatives) * max_length
    for _ in range(steps):
        groups = [
            TrainGroup(
                query=text(),
                instruction=None,
                positive=TrainDocument("", text()),
                negatives=tuple(TrainDocument("", text()) for _ in range(negatives)),
                positive_keys=frozenset(),
            )
            for _ in range(batch_size)
        ]
        batch = collator(groups)
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return StepReport(
        layers=layers,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in trainable),
        batch_size=batch_size,
        negatives=negatives,
        max_length=max_length,
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        step_seconds=round(step, 3),
        tokens_per_second=round(tokens / step),
        device=torch.cuda.get_device_name(),
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--layers", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--negatives", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--no-checkpointing", is_flag=True, help="Keep activations (faster, more memory).")
@click.option("--fit", is_flag=True, help="Halve --layers until a step fits in GPU memory.")
@json_option()
def main(layers, batch_size, negatives, max_length, steps, no_checkpointing, fit, as_json) -> None:
    """Measure peak GPU memory and step time of LoRA training on a 7B-shaped random Mistral.

    \b
    Examples:
      python -m train.gpu_step
      python -m train.gpu_step --fit --batch-size 16 --json
    """
    while True:
        try:
            report = measure(
                layers=layers,
                batch_size=batch_size,
                negatives=negatives,
                max_length=max_length,
                steps=steps,
                gradient_checkpointing=not no_checkpointing,
            )
            break
        except torch.OutOfMemoryError:
            if not fit or layers == 1:
                raise click.ClickException(f"out of GPU memory with {layers} layers") from None
            torch.cuda.empty_cache()
            layers //= 2
            click.echo(f"out of memory; retrying with {layers} layers", err=True)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    for key, value in report.to_dict().items():
        click.echo(f"{key:<18} {value}")


if __name__ == "__main__":
    sys.exit(main())
