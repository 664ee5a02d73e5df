"""`engine train ...` commands: `engine train` itself trains; `engine train data ...` makes data."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.errors import EngineError, ErrorReportingGroup
from engine.options import (
    cache_dir_option,
    device_option,
    json_option,
    model_option,
    quiet_option,
)


def _positive_float(ctx, param, value):
    if value is not None and not value > 0:
        raise click.BadParameter("must be positive")
    return value


@click.group(
    cls=ErrorReportingGroup,
    invoke_without_command=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--base",
    metavar="MODEL",
    help="Base model: a local folder, a hub id you have cached, or all-MiniLM-L6-v2 "
    "(the default, embedded).",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="FILE[:WEIGHT]",
    help="Training JSON lines (repeatable). WEIGHT is the file's share of each epoch; "
    "without one a file weighs its size.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Output model folder."
)
@click.option("--overwrite", is_flag=True, help="Write into --out even if it holds a model.")
@click.option(
    "--negatives-per-query",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Hard negatives per query in a batch (random documents fill in where a line has fewer).",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    help="Tokens per document (default: 512, or the model's maximum if smaller).",
)
@click.option(
    "--max-query-length",
    type=click.IntRange(min=8),
    help="Tokens per query, instruction included (default: 128, or the model's maximum).",
)
@click.option("--examples-per-epoch", type=click.IntRange(min=1), help="Default: all examples.")
@click.option(
    "--instruction/--no-instruction",
    "use_instruction",
    default=True,
    show_default=True,
    help="Format queries with their task instruction (the model profile's template).",
)
@click.option(
    "--pool-instruction/--no-pool-instruction",
    "pool_instruction",
    default=None,
    help="Mean pooling over the instruction's tokens too, or only over the query's "
    "(default: as the base model's profile; saved in the trained model's profile).",
)
@click.option(
    "--temperature",
    type=float,
    default=0.02,
    show_default=True,
    callback=_positive_float,
    help="InfoNCE temperature.",
)
@click.option("--lora-rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lora-alpha", type=float, default=32.0, show_default=True)
@click.option(
    "--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True
)
@click.option(
    "--lora-target-modules",
    metavar="NAMES",
    help="Comma-separated module names (default: from the model profile or architecture, "
    "e.g. q_proj,...,down_proj for Mistral/Qwen, query,key,value,dense for BERT).",
)
@click.option("--epochs", type=float, default=1.0, show_default=True, callback=_positive_float)
@click.option(
    "--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Queries per device per forward pass (each brings 1 + negatives documents).",
)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Overrides --warmup-ratio.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--bf16/--no-bf16",
    default=None,
    help="bf16 mixed precision. Default: on for GPUs, off (fp32) on CPU.",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=True,
    show_default=True,
    help="Recompute activations in the backward pass (less memory, ~30% more compute).",
)
@click.option(
    "--base-dropout/--no-base-dropout",
    default=False,
    show_default=True,
    help="Keep the base model's own dropout active (LoRA dropout is always used).",
)
@click.option(
    "--deepspeed",
    metavar="zero3|CONFIG.json",
    help="Train with DeepSpeed (GPUs only): 'zero3' is the shipped train/zero3.json.",
)
@device_option("torch device (default: cuda:LOCAL_RANK if available, else cpu).")
@click.option(
    "--merge",
    is_flag=True,
    help="Write a full model (adapter merged) to --out; adapter in out/adapter.",
)
@click.option(
    "--save-steps", type=click.IntRange(min=1), help="Save an adapter checkpoint every N steps."
)
@click.option(
    "--eval-data",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A BEIR dataset folder (repeatable): `engine bench beir` on its test split before and "
    "after training, both printed and recorded.",
)
@click.option(
    "--eval-max-length",
    type=click.IntRange(min=8),
    help="Document tokens for --eval-data (default: --max-length, else 512).",
)
@quiet_option("No progress bar (log lines instead).")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, hidden=True)
@click.pass_context
def train(ctx: click.Context, **options) -> None:
    """Fine-tune an embedding model with contrastive LoRA training (the E5-mistral recipe).

    InfoNCE over the positive, the hard negatives and every other document in
    the batch (across GPUs too), temperature 0.02; queries carry their task
    instruction, documents none; LoRA rank 16 on the attention and MLP
    projections; linear warm-up and decay; gradient checkpointing. The output
    folder works as --model everywhere (adapter + engine_profile.json), with
    training_args.json, training_log.json and loss.png.

    \b
    Examples:
      engine train data from-beir --data-dir ../shared/data/beir/scifact --split train \\
          --mine-negatives --out scifact-train.jsonl
      engine train --data scifact-train.jsonl --out ./my-model --max-length 256 \\
          --eval-data ../shared/data/beir/scifact --eval-data ../shared/data/beir/nfcorpus
      engine train --base ./Mistral-7B-v0.1 --data scifact-train.jsonl:0.3 --data synth.jsonl:0.7 \\
          --out ./my-model --max-length 512
      deepspeed --num_gpus 8 $(which engine) train --base ./Mistral-7B-v0.1 \\
          --data synth.jsonl --out ./my-model --deepspeed zero3
      torchrun --nproc_per_node 2 -m train --data train.jsonl --out ./my-model
      engine index ./corpus --model ./my-model
    """
    if ctx.invoked_subcommand is not None:
        return
    run_training(options)


def run_training(options: dict) -> None:
    """Build the argument dataclasses from CLI options and run the trainer."""
    from train.arguments import DataArguments, DataSource, ModelArguments, TrainingArguments

    if not options["data"]:
        raise EngineError("no training data: pass --data FILE.jsonl (repeatable)")
    out = options["out"]
    if out is None:
        raise EngineError("no output folder: pass --out DIR")
    if (
        out.exists()
        and not options["overwrite"]
        and any((out / name).exists() for name in ("adapter_config.json", "config.json"))
    ):
        raise EngineError(f"{out} already holds a model; pass --overwrite or another --out")
    targets = options["lora_target_modules"]
    model_args = ModelArguments(
        base=options["base"],
        lora_rank=options["lora_rank"],
        lora_alpha=options["lora_alpha"],
        lora_dropout=options["lora_dropout"],
        lora_target_modules=tuple(t.strip() for t in targets.split(",") if t.strip())
        if targets
        else None,
        temperature=options["temperature"],
        use_instruction=options["use_instruction"],
        pool_instruction=options["pool_instruction"],
    )
    data_args = DataArguments(
        sources=[DataSource.parse(spec) for spec in options["data"]],
        negatives_per_query=options["negatives_per_query"],
        max_query_length=options["max_query_length"],
        max_document_length=options["max_length"],
        examples_per_epoch=options["examples_per_epoch"],
    )
    training_args = TrainingArguments(
        out=out,
        epochs=options["epochs"],
        max_steps=options["max_steps"],
        batch_size=options["batch_size"],
        grad_accum=options["grad_accum"],
        learning_rate=options["learning_rate"],
        weight_decay=options["weight_decay"],
        warmup_ratio=options["warmup_ratio"],
        warmup_steps=options["warmup_steps"],
        max_grad_norm=options["max_grad_norm"],
        seed=options["seed"],
        bf16=options["bf16"],
        gradient_checkpointing=options["gradient_checkpointing"],
        base_dropout=options["base_dropout"],
        deepspeed=options["deepspeed"],
        device=options["device"],
        merge=options["merge"],
        save_steps=options["save_steps"],
        eval_data=tuple(options["eval_data"]),
        eval_max_length=options["eval_max_length"] or options["max_length"] or 512,
        progress=not options["quiet"],
    )
    from train.evaluate import beir_evaluator, format_comparison
    from train.trainer import Trainer

    evaluate = None
    if training_args.eval_data:
        evaluate = beir_evaluator(
            training_args.eval_data,
            training_args.eval_max_length,
            trains_instruction=model_args.use_instruction,
            progress=training_args.progress,
        )
    trainer = Trainer(model_args, data_args, training_args, argv=sys.argv, evaluate=evaluate)
    result = trainer.run()
    if trainer.rank != 0:
        return
    click.echo(
        f"Trained {result.steps} steps in {result.seconds / 60:.1f} min: loss "
        f"{result.first_loss:.4f} -> {result.last_loss:.4f}; LoRA tensors changed "
        f"{result.lora_changed[0]}/{result.lora_changed[1]}."
    )
    click.echo(f"Model saved to {result.out} (use --model {result.out}).")
    if result.eval_before is not None:
        click.echo(format_comparison(result.eval_before, result.eval_after))


@train.group()
def data() -> None:
    """Make training data: mine a BEIR train split, or synthesize tasks with an LLM.

    \b
    Examples:
      engine train data from-beir --data-dir ../shared/data/beir/scifact --mine-negatives \\
          --out scifact-train.jsonl
      engine train data synthesize --generator http://localhost:8000/v1 --out synth.jsonl
    """


@data.command("from-beir")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).",
)
@click.option("--split", default="train", show_default=True, help="qrels split to read.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--instruction",
    help="Task instruction for every query (default: the benchmark's instruction for the dataset).",
)
@click.option(
    "--mine-negatives",
    is_flag=True,
    help="Add hard negatives retrieved by --model from the corpus.",
)
@click.option("--negatives", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--skip-top",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Ignore the top N ranks when mining (likely unlabelled positives).",
)
@click.option(
    "--max-pairs",
    type=click.IntRange(min=1),
    help="Keep a seeded random sample of N (query, document) pairs (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --max-pairs.")
@model_option()
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Document tokens for the mining index.",
)
@click.option(
    "--mine-instruction/--mine-no-instruction",
    default=None,
    help="Mine with instruction-formatted queries (default: if the model is instruction-tuned).",
)
@cache_dir_option()
@device_option()
@quiet_option()
def from_beir_command(**options) -> None:
    """Turn a BEIR split into training data: (query, positive) pairs with qrels score > 0.

    One line per relevant (query, document) pair. With --mine-negatives the
    corpus is indexed by the engine (cached, incremental) and each query's
    top-ranked non-relevant documents below rank --skip-top become its hard
    negatives.

    \b
    Examples:
      engine train data from-beir --data-dir ../shared/data/beir/scifact --split train \\
          --mine-negatives --out scifact-train.jsonl
      engine train data from-beir --data-dir ./beir/fiqa --split train --out fiqa.jsonl \\
          --instruction "Given a financial question, retrieve user replies that best answer it"
      engine train data from-beir --data-dir ../shared/data/beir/nfcorpus --split train \\
          --mine-negatives --max-pairs 1000 --out nfcorpus-train.jsonl
    """
    from train.mining import from_beir

    summary = from_beir(**options)
    click.echo(summary)


@data.command("synthesize")
@click.option(
    "--generator",
    required=True,
    envvar="ENGINE_GENERATOR",
    show_envvar=True,
    metavar="MODEL_OR_URL",
    help="A local causal LM (folder or cached hub id) or an OpenAI-compatible endpoint "
    "(http://host:port/v1).",
)
@click.option(
    "--generator-model",
    metavar="NAME",
    help="Model name sent to an HTTP endpoint (OPENAI_API_KEY is sent if set).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--corpus",
    type=click.Path(exists=True, path_type=Path),
    help="Ground tasks and queries on documents from this folder or file.",
)
@click.option(
    "--tasks",
    "num_tasks",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Retrieval tasks to brainstorm.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="TEXT",
    help="A retrieval task to use instead of brainstorming (repeatable).",
)
@click.option(
    "--per-task",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Examples to generate per task.",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=16), default=1024, show_default=True)
@click.option("--language", default="English", show_default=True)
@device_option("torch device for a local generator (default: cuda if available, else cpu).")
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="HTTP timeout, seconds."
)
@quiet_option()
@json_option("Print the summary as JSON.")
def synthesize_command(**options) -> None:
    """Generate synthetic retrieval data the paper's way (two prompts per task).

    First the generator brainstorms retrieval tasks; then, for each task, it
    writes a JSON example with "user_query", "positive_document" and
    "hard_negative_document", with seeded random query type, query length,
    clarity, document length and difficulty. With --corpus, tasks and queries
    are grounded on real documents, which become the positives. Malformed
    generations are counted and dropped.

    \b
    Examples:
      engine train data synthesize --generator ./Qwen2.5-7B-Instruct --out synth.jsonl
      engine train data synthesize --corpus ./corpus --out synth.jsonl \\
          --generator http://localhost:8000/v1 --generator-model Qwen/Qwen2.5-72B-Instruct
    """
    import json

    from train.synthesize import synthesize

    as_json = options.pop("as_json")
    summary = synthesize(**options)
    click.echo(json.dumps(summary.to_dict()) if as_json else summary.describe())
