"""Flags shared by every training command (same spelling everywhere), their checks and the derived numbers.

Each command passes its `RecipeDefaults` (the original recipe's numbers); a flag left unset takes them.
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass

# The MAE/MAGE learning-rate rule: lr = base lr * global batch / 256.
LR_REFERENCE_BATCH_SIZE = 256
TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio")


@dataclass(frozen=True)
class RecipeDefaults:
    """A command's defaults; `base_learning_rate` is per 256 images of global batch."""

    base_learning_rate: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    num_train_epochs: int
    warmup_epochs: float
    max_grad_norm: float
    min_crop_scale: float
    checkpointing_steps: int = 1000


def add_training_arguments(parser: argparse.ArgumentParser, defaults: RecipeDefaults) -> None:
    """The shared flags (model, optimisation, schedule, checkpoints, logging, hardware)."""
    model = parser.add_argument_group("model")
    model.add_argument("--model-config", help="size preset (tiny | vit-b | vit-l) or a config file / folder")
    model.add_argument("--model", help="pretrained folder (save_pretrained) to start from")
    model.add_argument("--output-dir", required=True, help="where checkpoints and the final model are written")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train-batch-size", type=int, default=64, help="images per process and step (default 64)")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--learning-rate", type=float, help="absolute peak learning rate (overrides the base lr)")
    optim.add_argument(
        "--base-learning-rate",
        type=float,
        help=f"peak lr per {LR_REFERENCE_BATCH_SIZE} images: lr = blr * global batch / {LR_REFERENCE_BATCH_SIZE} "
        f"(default {defaults.base_learning_rate:g})",
    )
    optim.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    optim.add_argument("--adam-beta1", type=float, default=defaults.adam_beta1)
    optim.add_argument("--adam-beta2", type=float, default=defaults.adam_beta2)
    optim.add_argument("--adam-epsilon", type=float, default=1e-8)
    optim.add_argument(
        "--max-grad-norm", type=float, default=defaults.max_grad_norm, help="gradient-norm clip (0: off)"
    )
    optim.add_argument("--min-crop-scale", type=float, default=defaults.min_crop_scale,
                       help="RandomResizedCrop's smallest area fraction")
    optim.add_argument("--no-horizontal-flip", action="store_true",
                       help="no random horizontal flips (for data such as digits or text)")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--num-train-epochs", type=int, default=defaults.num_train_epochs)
    schedule.add_argument("--max-train-steps", type=int, help="optimizer steps in all (overrides the epochs)")
    schedule.add_argument("--warmup-steps", type=int, help="linear warm-up in optimizer steps")
    schedule.add_argument(
        "--warmup-epochs", type=float, help=f"linear warm-up in epochs (default {defaults.warmup_epochs:g})"
    )

    state = parser.add_argument_group("checkpoints and logging")
    state.add_argument("--checkpointing-steps", type=int, default=defaults.checkpointing_steps,
                       help="save a resumable checkpoint-N every N optimizer steps (0: never)")
    state.add_argument("--checkpoints-total-limit", type=int, help="keep only the newest N checkpoints")
    state.add_argument("--resume-from-checkpoint", help="a checkpoint-N folder, or `latest` in --output-dir")
    state.add_argument("--seed", type=int, default=0)
    state.add_argument("--logging-steps", type=int, default=10, help="log averaged metrics every N steps")
    state.add_argument("--report-to", default="none", help=f"none | all | one of {', '.join(TRACKERS)}")
    state.add_argument("--tracker-project-name", help="tracker project (default: mage-<command>)")
    state.add_argument("--verify-replicas", action="store_true",
                       help="record every process's final weight checksum in training_summary.json")

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--mixed-precision", choices=("no", "fp16", "bf16"), help="default: the accelerate config's, else no"
    )
    hardware.add_argument("--cpu", action="store_true", help="train on CPU even when an accelerator is present")
    hardware.add_argument(
        "--adamw-kernel", choices=("auto", "fused", "unfused"), default="auto",
        help="torch AdamW's implementation: fused (one kernel for every parameter) or torch's default; "
        "auto: fused on an accelerator device, torch's default on CPU",
    )
    hardware.add_argument(
        "--compile", action="store_true",
        help="torch.compile the model (inductor, through accelerate's dynamo plugin); default: the accelerate "
        "config's, else eager",
    )
    hardware.add_argument("--dataloader-num-workers", type=int, default=0)
    parser.set_defaults(recipe=defaults)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_training_arguments(args: argparse.Namespace) -> None:
    """Checks of the shared flags; raises `ValueError` naming the flag."""
    _check(args.train_batch_size >= 1, f"`--train-batch-size` must be >= 1, got {args.train_batch_size}")
    _check(args.gradient_accumulation_steps >= 1,
           f"`--gradient-accumulation-steps` must be >= 1, got {args.gradient_accumulation_steps}")
    _check(args.learning_rate is None or args.base_learning_rate is None,
           "pass at most one of `--learning-rate` and `--base-learning-rate`")
    for flag, value in (("--learning-rate", args.learning_rate), ("--base-learning-rate", args.base_learning_rate)):
        _check(value is None or value > 0, f"`{flag}` must be > 0, got {value}")
    _check(args.weight_decay >= 0, f"`--weight-decay` must be >= 0, got {args.weight_decay}")
    for flag, value in (("--adam-beta1", args.adam_beta1), ("--adam-beta2", args.adam_beta2)):
        _check(0 <= value < 1, f"`{flag}` must be in [0, 1), got {value}")
    _check(args.max_grad_norm >= 0, f"`--max-grad-norm` must be >= 0 (0 disables clipping), got {args.max_grad_norm}")
    _check(0 < args.min_crop_scale <= 1, f"`--min-crop-scale` must be in (0, 1], got {args.min_crop_scale}")
    _check(args.num_train_epochs >= 1, f"`--num-train-epochs` must be >= 1, got {args.num_train_epochs}")
    _check(args.max_train_steps is None or args.max_train_steps >= 1,
           f"`--max-train-steps` must be >= 1, got {args.max_train_steps}")
    _check(args.warmup_steps is None or args.warmup_epochs is None,
           "pass at most one of `--warmup-steps` and `--warmup-epochs`")
    _check(args.warmup_steps is None or args.warmup_steps >= 0, f"`--warmup-steps` must be >= 0, got {args.warmup_steps}")
    _check(args.warmup_epochs is None or args.warmup_epochs >= 0,
           f"`--warmup-epochs` must be >= 0, got {args.warmup_epochs}")
    _check(args.checkpointing_steps >= 0, f"`--checkpointing-steps` must be >= 0, got {args.checkpointing_steps}")
    _check(args.checkpoints_total_limit is None or args.checkpoints_total_limit >= 1,
           f"`--checkpoints-total-limit` must be >= 1, got {args.checkpoints_total_limit}")
    _check(args.seed >= 0, f"`--seed` must be >= 0, got {args.seed}")
    _check(args.logging_steps >= 1, f"`--logging-steps` must be >= 1, got {args.logging_steps}")
    _check(args.dataloader_num_workers >= 0,
           f"`--dataloader-num-workers` must be >= 0, got {args.dataloader_num_workers}")
    _check(args.eval_batch_size is None or args.eval_batch_size >= 1,
           f"`--eval-batch-size` must be >= 1, got {args.eval_batch_size}")
    _check(args.model is None or args.model_config is None, "pass at most one of `--model` and `--model-config`")
    if args.streaming:
        _check(args.max_train_steps is not None, "`--streaming` needs `--max-train-steps` (a stream has no length)")
        _check(args.warmup_steps is not None, "`--streaming` needs `--warmup-steps` (a stream has no epochs)")
    _validate_report_to(args.report_to)


def _validate_report_to(report_to: str) -> None:
    if report_to in ("none", "all"):
        return
    _check(report_to in TRACKERS, f"`--report-to` must be none, all or one of {list(TRACKERS)}, got {report_to!r}")
    available = getattr(importlib.import_module("accelerate.utils"), f"is_{report_to}_available")
    _check(available(), f"`--report-to {report_to}`: the {report_to} package is not installed")


def resolve_learning_rate(args: argparse.Namespace, global_batch_size: int) -> float:
    """`--learning-rate`, else base lr (flag or recipe) * global batch / 256."""
    if args.learning_rate is not None:
        return args.learning_rate
    base = args.base_learning_rate if args.base_learning_rate is not None else args.recipe.base_learning_rate
    return base * global_batch_size / LR_REFERENCE_BATCH_SIZE


def resolve_warmup_steps(args: argparse.Namespace, steps_per_epoch: int | None) -> int:
    """`--warmup-steps`, else warm-up epochs (flag or recipe) in optimizer steps."""
    if args.warmup_steps is not None:
        return args.warmup_steps
    epochs = args.warmup_epochs if args.warmup_epochs is not None else args.recipe.warmup_epochs
    if steps_per_epoch is None:
        raise ValueError("`--streaming` needs `--warmup-steps` (epochs have no length)")
    return math.ceil(epochs * steps_per_epoch)


__all__ = [
    "LR_REFERENCE_BATCH_SIZE",
    "RecipeDefaults",
    "add_training_arguments",
    "resolve_learning_rate",
    "resolve_warmup_steps",
    "validate_training_arguments",
]
