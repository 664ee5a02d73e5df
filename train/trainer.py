"""The training loop: schedule, precision, data parallelism, DeepSpeed ZeRO-3, checks, output.

One code path serves a single CPU process, one GPU, ``torchrun`` (DDP) and the
``deepspeed`` launcher (ZeRO-3). The LoRA weights are compared before and after
the first optimiser step and at the end: with ZeRO-3's partitioned parameters
it is easy to train for hours without the adapter ever changing, so a run
that does not move them stops with an error.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from engine.distributed import free_port, join_launched_group, local_rank, rank_and_world
from engine.encoder import DEFAULT_ALIASES, DEFAULT_MODEL, Encoder
from engine.errors import EngineError
from engine.profiles import DEFAULT_DOCUMENT_TOKENS, ModelProfile
from train.arguments import (
    DEFAULT_QUERY_TOKENS,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    to_jsonable,
)
from train.collator import Collator
from train.data import MixedDataset, load_sources
from train.evaluate import headline
from train.model import EmbeddingModel, add_lora, lora_parameters

ZERO3_CONFIG = Path(__file__).with_name("zero3.json")
LOG_FILE = "training_log.json"
PLOT_FILE = "loss.png"
ARGS_FILE = "training_args.json"
ADAPTER_SUBFOLDER = "adapter"  # where the adapter goes when --merge writes a full model


@dataclass
class TrainResult:
    """What a run produced (also written to ``training_args.json``)."""

    out: Path
    steps: int
    seconds: float
    log: list[dict] = field(default_factory=list)
    lora_changed: tuple[int, int] = (0, 0)  # (changed tensors, all LoRA tensors)
    eval_before: dict | None = None
    eval_after: dict | None = None

    @property
    def first_loss(self) -> float:
        return self.log[0]["loss"]

    @property
    def last_loss(self) -> float:
        return self.log[-1]["loss"]


# ------------------------------------------------------------------ helpers
def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then linear decay to zero (paper section 4.1).

    Warm-up starts above zero so the first optimiser step already moves the
    weights (the LoRA-changed check relies on it).
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def base_reference(base: str | None) -> str:
    """How the adapter names its base: the default's name, a hub id, or an absolute folder."""
    if base is None or base.lower() in DEFAULT_ALIASES:
        return DEFAULT_MODEL
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base


def load_deepspeed_config(
    spec: str, *, batch_size: int, grad_accum: int, world: int, max_grad_norm: float, bf16: bool
) -> dict[str, Any]:
    """The DeepSpeed config for ``--deepspeed zero3`` or a path, with ``"auto"`` values filled."""
    path = ZERO3_CONFIG if spec == "zero3" else Path(spec)
    if not path.is_file():
        raise EngineError(f"DeepSpeed config not found: {spec} (use 'zero3' or a JSON file)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    auto = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in auto.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for precision, enabled in (("bf16", bf16), ("fp16", False)):
        section = config.get(precision)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = enabled
    leftover = [k for k, v in _walk(config) if v == "auto"]
    if leftover:
        raise EngineError(f"{path}: cannot fill 'auto' for {', '.join(leftover)}")
    return config


def _walk(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def setup_distributed(use_deepspeed: bool) -> tuple[int, int, int]:
    """Join the process group a launcher set up; returns (rank, world size, local rank)."""
    if use_deepspeed:
        # DeepSpeed wants a process group even for one GPU started without a launcher.
        for key, value in (
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", str(free_port())),
        ):
            os.environ.setdefault(key, value)
        import deepspeed

        if not dist.is_initialized():
            deepspeed.init_distributed()
    else:
        join_launched_group()
    rank, world = rank_and_world()
    return rank, world, local_rank()


def plot_loss(log: Sequence[dict], path: Path) -> None:
    """Loss per optimiser step, with a moving average when the curve is long enough to be noisy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [entry["step"] for entry in log]
    losses = [entry["loss"] for entry in log]
    figure = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(steps, losses, color="tab:blue", alpha=0.45 if len(log) >= 20 else 1.0, label="loss")
    if len(log) >= 20:
        window = max(5, len(log) // 20)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1])
            / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        axes.plot(steps, smooth, color="tab:red", label=f"moving average ({window} steps)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("InfoNCE loss")
    axes.set_title("engine train")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if "deepspeed" in sys.modules:
        versions["deepspeed"] = sys.modules["deepspeed"].__version__
    return versions


# ------------------------------------------------------------------ trainer
class Trainer:
    """Fine-tunes ``model_args.base`` with LoRA on ``data_args.sources`` and writes a model folder."""

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        *,
        argv: Sequence[str] | None = None,
        evaluate: Callable[[Encoder], dict] | None = None,
    ) -> None:
        model_args.validate()
        data_args.validate()
        training_args.validate()
        self.model_args = model_args
        self.data_args = data_args
        self.args = training_args
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self.evaluate = evaluate
        self.encoder: Encoder | None = None
        self.log: list[dict] = []

    # ----------------------------------------------------------- set-up
    def _device(self, local_rank: int) -> torch.device:
        if self.args.device:
            return torch.device(self.args.device)
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")

    def _load_encoder(self, device: torch.device, bf16: bool) -> tuple[Encoder, ModelProfile]:
        base = self.model_args.base
        if base and (Path(base).expanduser() / "adapter_config.json").is_file():
            raise EngineError(
                f"--base {base} is a LoRA adapter; train on its merged model instead "
                "(train it with --merge, or merge it with peft)"
            )
        # GPU: frozen base weights in bf16, LoRA weights in fp32, compute under autocast.
        dtype = torch.bfloat16 if (bf16 and device.type == "cuda") else torch.float32
        encoder = Encoder.load(base, device=str(device), dtype=dtype)
        base_profile = encoder.profile
        limit = encoder.model_max_positions
        dargs = self.data_args
        for name, attr, default in (
            ("--max-length", "max_document_length", DEFAULT_DOCUMENT_TOKENS),
            ("--max-query-length", "max_query_length", DEFAULT_QUERY_TOKENS),
        ):
            length = getattr(dargs, attr)
            if length is None:
                setattr(dargs, attr, min(default, limit))
            elif length > limit:
                raise EngineError(
                    f"{name} {length} exceeds what {encoder.name} supports ({limit} positions)"
                )
        encoder.set_max_length(dargs.max_document_length)
        return encoder, base_profile

    def _prepare_model(self, encoder: Encoder) -> list[str]:
        args, margs = self.args, self.model_args
        network = encoder.model
        if not args.base_dropout:
            # The frozen base runs as it does at search time; LoRA dropout regularises.
            for name, module in network.named_modules():
                if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
                    module.p = 0.0
        if args.gradient_checkpointing:
            if getattr(network, "supports_gradient_checkpointing", False):
                enable = getattr(network, "activation_checkpointing_enable", None)
                if enable is not None:  # transformers >= 5
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    network.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False}
                    )
                if hasattr(network.config, "use_cache"):
                    network.config.use_cache = False
            else:
                self._print(f"note: {encoder.name} does not support gradient checkpointing")
        torch.manual_seed(args.seed)
        targets = add_lora(
            encoder,
            rank=margs.lora_rank,
            alpha=margs.lora_alpha,
            dropout=margs.lora_dropout,
            target_modules=margs.lora_target_modules,
        )
        return targets

    def _print(self, message: str) -> None:
        if self.rank == 0:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------ LoRA check
    def _lora_snapshot(self) -> dict[str, torch.Tensor]:
        params = lora_parameters(self.encoder.model)
        with self._gathered(list(params.values())):
            return {n: p.detach().float().cpu().clone() for n, p in params.items()}

    def _gathered(self, params: list[nn.Parameter]):
        """Full parameters under ZeRO-3 (partitioned otherwise); a no-op without DeepSpeed."""
        if self.ds_engine is not None:
            import deepspeed

            return deepspeed.zero.GatheredParameters(params)
        return contextlib.nullcontext()

    def _check_lora_changed(self, before: dict[str, torch.Tensor], when: str) -> tuple[int, int]:
        after = self._lora_snapshot()
        changed = sum(not torch.equal(before[n], after[n]) for n in before)
        if changed == 0:
            raise EngineError(
                f"the LoRA weights did not change {when} (lr {self.args.learning_rate:g}): "
                "the adapter is not training. Under DeepSpeed ZeRO-3 this means the optimiser "
                "never saw the partitioned LoRA parameters; check the DeepSpeed config and "
                "that the LoRA parameters require grad"
            )
        return changed, len(before)

    # --------------------------------------------------------------- saving
    def _lora_state(self) -> dict[str, torch.Tensor]:
        params = lora_parameters(self.encoder.model)
        with self._gathered(list(params.values())):
            return {n: p.detach().cpu().clone() for n, p in params.items()}

    def save_adapter(self, folder: Path) -> None:
        """PEFT adapter + engine profile: a folder ``--model`` accepts everywhere."""
        state = self._lora_state()
        if self.rank != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        peft_model = self.encoder.model
        peft_model.peft_config["default"].base_model_name_or_path = base_reference(
            self.model_args.base
        )
        card_existed = (folder / "README.md").exists()
        peft_model.save_pretrained(str(folder), state_dict=state)
        if not card_existed:  # peft's empty model-card template
            (folder / "README.md").unlink(missing_ok=True)
        self.saved_profile.save(folder)

    def merge(self, adapter: Path, out: Path) -> None:
        """Fold the adapter into the base weights and write a full model folder to ``out``."""
        merged = Encoder.load(str(adapter), device="cpu", dtype=self.encoder.model.dtype)
        network = merged.model.merge_and_unload()
        network.save_pretrained(str(out))
        merged.tokenizer.save_pretrained(str(out))
        self.saved_profile.save(out)

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """Train, save, and (with an evaluation hook) score the model before and after."""
        args, dargs, margs = self.args, self.data_args, self.model_args
        started = time.perf_counter()
        use_ds = args.deepspeed is not None
        if use_ds and not torch.cuda.is_available():
            raise EngineError(
                "--deepspeed needs CUDA GPUs; on CPU train without it (single process)"
            )
        self.rank, self.world, local_rank = setup_distributed(use_ds)
        device = self._device(local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
        self.bf16 = bf16
        torch.manual_seed(args.seed)

        sources = load_sources(dargs.sources)
        dataset = MixedDataset(
            sources,
            negatives_per_query=dargs.negatives_per_query,
            examples_per_epoch=dargs.examples_per_epoch,
            seed=args.seed,
        )
        encoder, base_profile = self._load_encoder(device, bf16)
        if margs.pool_instruction is not None:
            # Checked now, applied after the base model's evaluation.
            try:
                base_profile = replace(base_profile, pool_instruction=margs.pool_instruction)
            except ValueError as exc:
                raise EngineError(f"--no-pool-instruction with {encoder.name}: {exc}") from None
        self.encoder = encoder
        eval_before = self._evaluate(encoder, "before training") if self.rank == 0 else None
        if self.world > 1:
            dist.barrier()

        targets = self._prepare_model(encoder)
        # The pooling choice applies from here on: evaluation before training saw the base model.
        encoder.profile = replace(encoder.profile, pool_instruction=base_profile.pool_instruction)
        self.saved_profile = replace(
            base_profile,
            instruction_tuned=base_profile.instruction_tuned or margs.use_instruction,
            lora_target_modules=tuple(targets)
            if targets != ["all-linear"]
            else base_profile.lora_target_modules,
        )
        collator = Collator(
            encoder,
            max_query_length=dargs.max_query_length,
            max_document_length=dargs.max_document_length,
            use_instruction=margs.use_instruction,
        )
        model = EmbeddingModel(encoder, margs.temperature)
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        n_total = sum(p.numel() for p in model.parameters())

        per_rank = len(dataset) // self.world if self.world > 1 else len(dataset)
        if per_rank < args.batch_size and self.world > 1:
            raise EngineError(
                f"{len(dataset)} examples are too few for {self.world} GPUs x --batch-size "
                f"{args.batch_size}"
            )
        micro_per_epoch = (
            per_rank // args.batch_size
            if self.world > 1
            else math.ceil(len(dataset) / args.batch_size)
        )
        total_steps = max(1, round(args.epochs * micro_per_epoch / args.grad_accum))
        if args.max_steps is not None:
            total_steps = min(total_steps, args.max_steps)
        warmup = (
            args.warmup_steps
            if args.warmup_steps is not None
            else int(args.warmup_ratio * total_steps)
        )
        self.total_steps = total_steps
        self.micro_per_epoch = micro_per_epoch

        optimizer = torch.optim.AdamW(
            trainable, lr=args.learning_rate, weight_decay=args.weight_decay
        )
        schedule = linear_schedule(warmup, total_steps)
        self.ds_engine = None
        runner: nn.Module = model
        if use_ds:
            import deepspeed

            config = load_deepspeed_config(
                args.deepspeed,
                batch_size=args.batch_size,
                grad_accum=args.grad_accum,
                world=self.world,
                max_grad_norm=args.max_grad_norm,
                bf16=bf16,
            )
            self.ds_config = config
            try:
                engine, optimizer, _, scheduler = deepspeed.initialize(
                    model=model,
                    optimizer=optimizer,
                    config=config,
                    lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                )
            except (ValueError, AssertionError) as exc:
                raise EngineError(f"DeepSpeed rejected its config: {exc}") from None
            self.ds_engine = runner = engine
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            if self.world > 1:
                runner = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None
                )

        self._print(
            f"Training {encoder.name} + LoRA r={margs.lora_rank} on {', '.join(map(str, dargs.sources))}: "
            f"{len(dataset)} examples/epoch, {total_steps} steps of {args.batch_size} x "
            f"{args.grad_accum} x {self.world} queries, each with "
            f"{dargs.negatives_per_query} hard negatives; {n_trainable:,} of {n_total:,} "
            f"parameters trainable; {device}, {'bf16' if bf16 else 'fp32'}"
            f"{', DeepSpeed' if use_ds else ''}."
        )
        before = self._lora_snapshot()
        changed = self._loop(runner, model, dataset, collator, optimizer, scheduler, before)

        out = args.out
        adapter_dir = out / ADAPTER_SUBFOLDER if args.merge else out
        self.save_adapter(adapter_dir)
        result = TrainResult(
            out=out,
            steps=len(self.log),
            seconds=time.perf_counter() - started,
            log=self.log,
            lora_changed=changed,
            eval_before=eval_before,
        )
        if self.rank == 0:
            if args.merge:
                self.merge(adapter_dir, out)
            # The folder is complete before it is benchmarked; the scores are added after.
            records = (dataset, targets, n_trainable, n_total, device)
            self._write_records(result, *records)
            result.eval_after = self._evaluate_saved(out)
            if result.eval_after is not None:
                result.seconds = time.perf_counter() - started
                self._write_records(result, *records)
        if self.world > 1:
            dist.barrier()
        encoder.model.eval()
        return result

    def _local_batches(self, dataset: MixedDataset) -> list[list[int]]:
        """This rank's micro-batches of dataset positions for the current epoch."""
        size = self.args.batch_size
        if self.world == 1:
            return [
                list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)
            ]
        span = size * self.world
        return [
            list(range(start + self.rank * size, start + (self.rank + 1) * size))
            for start in range(0, len(dataset) - span + 1, span)
        ]

    def _loop(self, runner, model, dataset, collator, optimizer, scheduler, before):
        args = self.args
        accum = args.grad_accum
        total_micro = self.total_steps * accum
        trainable = [p for p in model.parameters() if p.requires_grad]
        autocast = torch.autocast(
            self.encoder.device.type,
            dtype=torch.bfloat16,
            enabled=self.bf16 and self.ds_engine is None,
        )
        bar = None
        if args.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, desc="training", unit="step", dynamic_ncols=True)
        self.encoder.model.train()
        step_started = time.perf_counter()
        run_started = step_started
        losses, accuracies = [], []
        changed = (0, 0)
        micro, epoch = 0, 0
        batches: list[list[int]] = []
        while micro < total_micro:
            if not batches:
                dataset.set_epoch(epoch)
                batches = self._local_batches(dataset)
                epoch += 1
                if not batches:
                    raise EngineError("not enough training examples for one batch")
            positions = batches.pop(0)
            batch = collator([dataset[i] for i in positions])
            boundary = (micro + 1) % accum == 0
            sync = (
                runner.no_sync()
                if isinstance(runner, nn.parallel.DistributedDataParallel) and not boundary
                else contextlib.nullcontext()
            )
            with sync:
                with autocast:
                    output = runner(**batch)
                if self.ds_engine is not None:
                    self.ds_engine.backward(output.loss)
                    self.ds_engine.step()
                else:
                    (output.loss / accum).backward()
            losses.append(output.loss.detach().float())
            accuracies.append(output.accuracy.detach().float())
            micro += 1
            if not boundary:
                continue
            lr = scheduler.get_last_lr()[0]
            if self.ds_engine is None:
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step = micro // accum
            loss = torch.stack(losses).mean()
            accuracy = torch.stack(accuracies).mean()
            if self.world > 1:
                stats = torch.stack([loss, accuracy]).to(self.encoder.device)
                dist.all_reduce(stats)
                loss, accuracy = stats / self.world
            now = time.perf_counter()
            entry = {
                "step": step,
                "epoch": round(micro / self.micro_per_epoch, 4),
                "loss": round(float(loss), 6),
                "accuracy": round(float(accuracy), 4),
                "lr": lr,
                "step_seconds": round(now - step_started, 3),
                "elapsed_seconds": round(now - run_started, 1),
            }
            self.log.append(entry)
            losses, accuracies = [], []
            step_started = now
            if step == 1:
                changed = self._check_lora_changed(before, "in the first optimizer step")
            if bar is not None:
                bar.set_postfix(loss=f"{entry['loss']:.4f}", acc=f"{entry['accuracy']:.2f}")
                bar.update(1)
            elif self.rank == 0 and args.log_steps and step % args.log_steps == 0:
                print(json.dumps(entry), file=sys.stderr, flush=True)
            if args.save_steps and step % args.save_steps == 0 and step < self.total_steps:
                self.save_adapter(args.out / f"checkpoint-{step}")
                if self.rank == 0:
                    self._write_log(args.out / f"checkpoint-{step}")
        if bar is not None:
            bar.close()
        changed = self._check_lora_changed(before, "during training")
        return changed

    # ----------------------------------------------------------- evaluation
    def _evaluate(self, encoder: Encoder, when: str) -> dict | None:
        """Run the evaluation hook on rank 0 only (other ranks never call it)."""
        if self.evaluate is None:
            return None
        names = ", ".join(str(p) for p in self.args.eval_data) or "the evaluation data"
        self._print(f"Evaluating on {names} {when} ...")
        result = self.evaluate(encoder)
        self._print(f"{when}: {json.dumps(headline(result))}")
        return result

    def _evaluate_saved(self, out: Path) -> dict | None:
        """Score the folder as written, the way ``--model`` will load it."""
        if self.evaluate is None:
            return None
        with warnings.catch_warnings():  # peft still calls transformers' deprecated names
            warnings.simplefilter("ignore", FutureWarning)
            encoder = Encoder.load(str(out), device=str(self.encoder.device))
        if hasattr(encoder.model, "merge_and_unload"):
            # Same vectors, ~2x faster encoding than running the adapter unmerged.
            encoder.model = encoder.model.merge_and_unload()
        return self._evaluate(encoder, "after training")

    # -------------------------------------------------------------- records
    def _write_log(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LOG_FILE).write_text(json.dumps(self.log, indent=1) + "\n")
        if self.log:
            plot_loss(self.log, folder / PLOT_FILE)

    def _write_records(self, result, dataset, targets, n_trainable, n_total, device) -> None:
        out = self.args.out
        self._write_log(out)
        record = {
            "command": shlex.join(self.argv),
            "argv": self.argv,
            "cwd": os.getcwd(),
            "model": to_jsonable(self.model_args),
            "data": to_jsonable(self.data_args),
            "training": to_jsonable(self.args),
            "base_model": base_reference(self.model_args.base),
            "lora_target_modules": targets,
            "trainable_parameters": n_trainable,
            "total_parameters": n_total,
            "dataset": dataset.describe(),
            "steps": result.steps,
            "world_size": self.world,
            "device": str(device),
            "precision": "bf16" if self.bf16 else "fp32",
            "deepspeed_config": getattr(self, "ds_config", None),
            "seconds": round(result.seconds, 1),  # all of it, evaluations included
            "training_loop_seconds": self.log[-1]["elapsed_seconds"] if self.log else None,
            "first_loss": result.first_loss if result.log else None,
            "final_loss": result.last_loss if result.log else None,
            "lora_tensors_changed": f"{result.lora_changed[0]}/{result.lora_changed[1]}",
            "eval_before": result.eval_before,
            "eval_after": result.eval_after,
            "versions": _versions(),
        }
        (out / ARGS_FILE).write_text(json.dumps(record, indent=2) + "\n")
