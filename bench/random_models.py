"""Random-weight Mistrals with word-level tokenizers: nothing to download.

One builder for the three places that need such a model: `engine bench speed --random-model`
(7B-shaped throughput), ``train/gpu_step.py`` (the 7B-shaped LoRA step) and the tests' tiny
models (``tests/models.py``). Train and the tests sit above bench, so they import it from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import EngineError

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: unknown, BOS, EOS (also the pad)

# Mistral shapes: e5-mistral's (Mistral-7B) and a small one for tests and quick runs.
MISTRAL_SHAPES: dict[str, dict[str, int]] = {
    "mistral-7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 4096,
    },
}


def word_tokenizer(words: Sequence[str], max_length: int, *, split_digits: bool = False):
    """A Llama-like fast tokenizer where each word is one token: it adds BOS, pads with EOS.

    ``words`` follow the three special tokens in the vocabulary; with ``split_digits`` each
    digit of a number is its own token (the passkey benchmark's numbers), so digits must be
    among ``words``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    split = [pre_tokenizers.Whitespace()]
    if split_digits:
        split.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(split)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=max_length,
    )


def random_mistral(
    shape: dict[str, int], *, device=None, dtype=None, seed: int = 0, causal_lm: bool = False
):
    """A ``MistralModel`` (``MistralForCausalLM`` with ``causal_lm``: a generator) of ``shape``
    (MistralConfig fields) with seeded random weights.

    Built directly on ``device`` in ``dtype`` (no fp32 copy of 7B weights on the host); the
    special-token ids are :data:`SPECIAL_TOKENS`' (BOS 1, EOS and pad 2).
    """
    import torch
    from transformers import MistralConfig, MistralForCausalLM, MistralModel

    config = MistralConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return (MistralForCausalLM if causal_lm else MistralModel)._from_config(config, dtype=dtype)


def shape_named(name: str) -> dict[str, int]:
    if name not in MISTRAL_SHAPES:
        raise EngineError(f"--random-model must be one of {', '.join(MISTRAL_SHAPES)}, not {name}")
    return MISTRAL_SHAPES[name]


def build_random_encoder(
    shape: str,
    device: str | None,
    *,
    batch_tokens: int | None = None,
    precision: str | None = None,
    runtime: str | None = None,
):
    """A random-weight Mistral of a named shape with the e5-mistral profile (bf16 on CUDA).

    Its tokenizer knows only the special tokens: callers feed random ids through
    :meth:`Encoder.encode_ids`.
    """
    import torch

    from engine.encoder import Encoder
    from engine.profiles import E5_MISTRAL

    dimensions = shape_named(shape)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    model = random_mistral(dimensions, device=target, dtype=dtype)
    tokenizer = word_tokenizer([], dimensions["max_position_embeddings"])
    return Encoder.from_model(
        model,
        tokenizer,
        E5_MISTRAL,
        name=f"random-{shape}",
        batch_tokens=batch_tokens,
        precision=precision,
        runtime=runtime,
    )
