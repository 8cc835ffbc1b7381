"""The accelerate training loop shared by every command.

A command supplies a `TrainingTask` (model, loss of one batch, evaluation, how to save); `run_training` does the
rest, in the order of diffusers' `train_amused.py`: checks -> `Accelerator` -> data -> model -> optimizer at the
scaled learning rate -> `prepare` -> warm-up + cosine schedule -> resume -> loop with `accumulate`, clipping on
`sync_gradients`, logging and checkpoints -> evaluation -> final `save_pretrained` -> `end_training`.

Resuming is exact: a checkpoint holds the accelerate state (model, optimizer, schedule, scaler) and where the loop
was (epoch, batches done); randomness is drawn from seeds keyed on what it is for (data order on (seed, epoch),
augmentation on (seed, epoch, example), masks, dropout and mixup on (seed, process, epoch, batch)), so a killed and
resumed run ends with the same weights as an uninterrupted one (bit for bit on CPU). Checkpoints and the final
model are written to a temporary folder first and renamed into place.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    TorchDynamoPlugin,
    is_compiled_module,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .arguments import resolve_learning_rate, resolve_warmup_steps, validate_training_arguments
from .data import (
    EpochShuffleSampler,
    ImageCollator,
    ImageData,
    ImageTransform,
    build_dataloader,
    load_image_data,
)
from .seeding import derive_seed, keyed_generator

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
TRAINING_STATE_FILE = "training_state.json"  # inside every checkpoint: where the loop was
SUMMARY_FILE = "training_summary.json"  # inside the final model folder
FINAL_TMP_DIR = ".final.tmp"
# Files moved into the output folder last: a folder is a loadable model only once its config is there.
PUBLISHED_LAST = ("config.json",)


@dataclass
class StepContext:
    """What a training step may need besides the batch: its keyed generator and the optimizer steps done."""

    generator: torch.Generator
    global_step: int


@dataclass
class StepOutput:
    """A training step's loss (to back-propagate) and detached scalars to log (averaged over steps and processes)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class TrainingTask:
    """What a command plugs into the loop. Subclasses set `command`/`card_kind` and implement `build_model`,
    `image_size`, `training_step` and `save_pretrained`; the rest has defaults (images from the data flags, batches
    of `pixel_values`: `load_data`, `train_transform` and `collator` change that)."""

    command = ""  # the CLI command (tracker project `mage-<command>`)
    card_kind = "pretraining"  # `write_model_card(kind=...)`
    wants_eval = False  # evaluate on the `validation`/`test` split by default

    @classmethod
    def validate_arguments(cls, args: argparse.Namespace) -> None:
        """Checks of the command's own flags (raise `ValueError` naming the flag)."""

    @classmethod
    def uses_labels(cls, args: argparse.Namespace) -> bool:
        return False

    @classmethod
    def find_unused_parameters(cls, args: argparse.Namespace) -> bool:
        """Whether DDP must tolerate parameters without gradients in some steps."""
        return False

    @classmethod
    def load_data(cls, args: argparse.Namespace) -> ImageData:
        """The checked training (and evaluation) data: by default the images named by the data flags."""
        return load_image_data(args, use_labels=cls.uses_labels(args), want_eval=cls.wants_eval)

    def __init__(self, args: argparse.Namespace, data: ImageData):
        self.args = args
        self.data = data
        self.model = self.build_model()

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def train_mode(self, model: nn.Module) -> None:
        """Put `model` (possibly wrapped) in training mode; frozen parts stay in eval mode."""
        model.train()

    def train_transform_kwargs(self) -> dict[str, Any]:
        """Extra `ImageTransform` arguments of the training data (e.g. several views per example)."""
        return {}

    def train_transform(self) -> ImageTransform:
        """The training data's batch transform (`Dataset.with_transform`; the loop calls its `set_epoch(epoch)`):
        RandomResizedCrop + flip keyed on (seed, epoch, example index)."""
        args, data = self.args, self.data
        return ImageTransform(
            data.image_column, data.label_column, self.image_size, train=True, min_crop_scale=args.min_crop_scale,
            horizontal_flip=not args.no_horizontal_flip, seed=args.seed, **self.train_transform_kwargs(),
        )

    def collator(self) -> ImageCollator:
        """Transformed examples -> a batch (`pixel_values`, and `labels` when the data has them)."""
        return ImageCollator(self.data.num_labels, self.data.label_column)

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer groups; a group may carry `lr_scale` (multiplies the learning rate)."""
        return weight_decay_groups(model, self.args.weight_decay)

    def create_optimizer(self, groups: list[dict], learning_rate: float) -> torch.optim.Optimizer:
        args = self.args
        return torch.optim.AdamW(
            groups, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
            fused=use_fused_adamw(args) or None,
        )

    def training_step(self, model: nn.Module, batch: dict, step: StepContext) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, global_step: int, max_steps: int) -> None:
        """Called after every optimizer step (`global_step` steps done of `max_steps`), before logging and
        checkpointing, e.g. for an EMA update of a target network. Does nothing by default."""

    def window_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        """Metrics over recent steps, computed on logging steps on every process (may use collectives)."""
        return {}

    def evaluate(self, model: nn.Module, dataloader, accelerator: Accelerator) -> dict[str, float]:
        """Metrics over the evaluation data (every process takes part; use `gather_for_metrics`)."""
        return {}

    def export_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained module's state dict -> the saved model's (e.g. without a discriminator)."""
        return state_dict

    def save_pretrained(self, model: nn.Module, state_dict: dict[str, torch.Tensor], save_dir: Path) -> None:
        """Write the final model (weights from `state_dict`), its image processor, anything else it needs."""
        raise NotImplementedError

    def model_card_kwargs(self) -> dict[str, Any]:
        """Extra `write_model_card` arguments: `base_model` when `--model` is a Hub id (not a local folder)."""
        model = self.args.model
        return {"base_model": model} if model is not None and not os.path.exists(model) else {}


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """The original's weight-decay rule (timm's `add_weight_decay`): biases, norm weights and every other 1-D
    parameter are not decayed."""
    return not (param.ndim <= 1 or name.endswith(".bias"))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups, decayed and not (`is_decayed`)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if is_decayed(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor: equal digests mean identical weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_image_processor(image_size: int, save_dir: Path) -> None:
    from mage_hf.image_processing_mage import MageImageProcessor

    MageImageProcessor.for_image_size(image_size).save_pretrained(save_dir)


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def run_training(args: argparse.Namespace, task_class: type[TrainingTask]) -> int:
    """Check the flags and data, build the task's model and train it. Returns the exit status (0)."""
    validate_training_arguments(args)
    task_class.validate_arguments(args)
    accelerator = make_accelerator(args, task_class.find_unused_parameters(args))
    _configure_logging(accelerator)
    resume_dir = find_resume_checkpoint(args)
    data = task_class.load_data(args)
    global_batch = args.train_batch_size * accelerator.num_processes
    if not data.streaming and len(data.train) < global_batch:
        raise ValueError(
            f"the training data has {len(data.train)} examples, fewer than one batch on every process "
            f"(`--train-batch-size` {args.train_batch_size} x {accelerator.num_processes} processes)"
        )
    set_seed(args.seed)  # the same initial weights on every process
    task = task_class(args, data)
    return Trainer(args, accelerator, task, data, resume_dir).train()


def trains_on_cpu(args: argparse.Namespace) -> bool:
    return args.cpu or not torch.accelerator.is_available()


def use_fused_adamw(args: argparse.Namespace) -> bool:
    """`--adamw-kernel`: fused (one kernel for all parameters) by default on an accelerator device."""
    return args.adamw_kernel == "fused" or (args.adamw_kernel == "auto" and not trains_on_cpu(args))


def make_accelerator(args: argparse.Namespace, find_unused_parameters: bool = False) -> Accelerator:
    """The `Accelerator`: CPU with `--cpu` or when torch sees no accelerator device; accelerate decides otherwise.
    `--compile` has accelerate compile the prepared model with inductor."""
    project = ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs"))
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    dynamo = TorchDynamoPlugin(backend="inductor") if args.compile else None
    return Accelerator(
        dynamo_plugin=dynamo,
        cpu=trains_on_cpu(args),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project,
        step_scheduler_with_optimizer=False,  # the loop steps the schedule once per optimizer step
        kwargs_handlers=handlers,
    )


def _configure_logging(accelerator: Accelerator) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        for name in ("transformers", "diffusers", "datasets", "mage_hf"):
            logging.getLogger(name).setLevel(logging.ERROR)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete `checkpoint-N` folders of `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def find_resume_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint named by `--resume-from-checkpoint` (`latest`: newest in `--output-dir`, None if none)."""
    choice = args.resume_from_checkpoint
    if choice is None:
        return None
    if choice == "latest":
        checkpoints = list_checkpoints(args.output_dir)
        if not checkpoints:
            logger.info("`--resume-from-checkpoint latest`: no checkpoint in %s, starting from scratch", args.output_dir)
            return None
        return checkpoints[-1]
    path = Path(choice)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise ValueError(f"`--resume-from-checkpoint` {choice!r} is not a checkpoint folder (no {TRAINING_STATE_FILE})")
    return path


def publish_directory(source: Path, target: Path) -> None:
    """Move every entry of `source` into `target` (replacing), `PUBLISHED_LAST` files last; remove `source`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED_LAST:
        (target / name).unlink(missing_ok=True)  # no stale config while the new files arrive
    for entry in sorted(source.iterdir(), key=lambda p: p.name in PUBLISHED_LAST):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    source.rmdir()


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingPlan:
    """Derived sizes: batches and optimizer steps per epoch (None for a stream), totals, warm-up and lr."""

    batches_per_epoch: int | None
    steps_per_epoch: int | None
    max_steps: int
    num_epochs: int | None
    warmup_steps: int
    learning_rate: float
    global_batch_size: int


@dataclass
class LoopPosition:
    """Where the loop is: optimizer steps done, current epoch and batches of it consumed."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


class Trainer:
    """Runs one `TrainingTask` under an `Accelerator` (see the module docstring)."""

    def __init__(self, args, accelerator: Accelerator, task: TrainingTask, data: ImageData, resume_dir: Path | None):
        self.args = args
        self.accelerator = accelerator
        self.task = task
        self.data = data
        self.resume_dir = resume_dir
        self.output_dir = Path(args.output_dir)
        self.pending_logs: dict[str, list[torch.Tensor]] = {}
        self.metrics: dict[str, float] = {}

    # 1. Data
    def _dataloaders(self):
        args, data, task = self.args, self.data, self.task
        collator = task.collator()
        self.train_transform = task.train_transform()
        loader_args = {"seed": args.seed, "num_workers": args.dataloader_num_workers,
                       "shuffle_buffer_size": args.shuffle_buffer_size}
        train_loader = build_dataloader(
            data.train, self.train_transform, collator, batch_size=args.train_batch_size, train=True, **loader_args
        )
        self.train_sampler = train_loader.sampler if isinstance(train_loader.sampler, EpochShuffleSampler) else None
        eval_loader = None
        if data.eval is not None:
            eval_transform = ImageTransform(data.image_column, data.label_column, task.image_size, train=False)
            eval_loader = build_dataloader(
                data.eval, eval_transform, collator, batch_size=args.eval_batch_size or args.train_batch_size,
                train=False, **loader_args,
            )
        return train_loader, eval_loader

    # 2. Optimizer
    def _optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        groups = self.task.parameter_groups(self.task.model)
        for group in groups:
            group["lr"] = learning_rate * group.pop("lr_scale", 1.0)
        return self.task.create_optimizer(groups, learning_rate)

    # 3. Sizes
    def _plan(self, train_loader, learning_rate: float) -> TrainingPlan:
        args = self.args
        batches = None if self.data.streaming else len(train_loader)
        steps_per_epoch = None if batches is None else math.ceil(batches / args.gradient_accumulation_steps)
        max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
        num_epochs = None if steps_per_epoch is None else math.ceil(max_steps / steps_per_epoch)
        warmup = resolve_warmup_steps(args, steps_per_epoch)
        if warmup >= max_steps:
            logger.warning("warm-up (%d steps) covers the whole run (%d steps)", warmup, max_steps)
        return TrainingPlan(batches, steps_per_epoch, max_steps, num_epochs, warmup, learning_rate,
                            self._global_batch_size())

    def _global_batch_size(self) -> int:
        """Images per optimizer step over all processes."""
        args = self.args
        return args.train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes

    # 4. Resume
    def _resume(self, plan: TrainingPlan) -> LoopPosition:
        if self.resume_dir is None:
            return LoopPosition()
        state = json.loads((self.resume_dir / TRAINING_STATE_FILE).read_text())
        if plan.batches_per_epoch is not None and state["batches_per_epoch"] != plan.batches_per_epoch:
            raise ValueError(
                f"`--resume-from-checkpoint` {str(self.resume_dir)!r} was made with {state['batches_per_epoch']} "
                f"batches per epoch and process, this run has {plan.batches_per_epoch}: resume with the same data, "
                "`--train-batch-size`, `--gradient-accumulation-steps` and number of processes"
            )
        self.accelerator.load_state(str(self.resume_dir))
        logger.info("resumed from %s at step %d", self.resume_dir, state["global_step"])
        return LoopPosition(state["global_step"], state["epoch"], state["batches_in_epoch"])

    def _seed_step(self, epoch: int, batch_index: int) -> torch.Generator:
        """Dropout (global RNG) and the task's generator, keyed on (seed, process, epoch, batch)."""
        rank = self.accelerator.process_index
        torch.manual_seed(derive_seed(self.args.seed, "global", rank, epoch, batch_index))
        return keyed_generator(self.args.seed, "step", rank, epoch, batch_index)

    def train(self) -> int:
        args, accelerator, task = self.args, self.accelerator, self.task
        train_loader, eval_loader = self._dataloaders()
        learning_rate = resolve_learning_rate(args, self._global_batch_size())
        optimizer = self._optimizer(learning_rate)
        model, optimizer, train_loader = accelerator.prepare(task.model, optimizer, train_loader)
        if eval_loader is not None:
            eval_loader = accelerator.prepare(eval_loader)
        plan = self._plan(train_loader, learning_rate)
        scheduler = accelerator.prepare(get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.max_steps))
        position = self._resume(plan)
        accelerator.init_trackers(args.tracker_project_name or f"mage-{task.command}", config=_scalar_config(args))
        self._log_plan(plan)

        progress = tqdm(total=plan.max_steps, initial=position.global_step, desc=task.command,
                        disable=not accelerator.is_local_main_process)
        epochs = range(position.epoch, plan.num_epochs) if plan.num_epochs is not None else itertools.count(position.epoch)
        global_step, last_eval_step = position.global_step, None
        for epoch in epochs:
            if global_step >= plan.max_steps:
                break
            task.train_mode(model)
            self.train_transform.set_epoch(epoch)
            if self.train_sampler is not None:
                self.train_sampler.set_epoch(epoch)
            train_loader.set_epoch(epoch)
            skip = position.batches_in_epoch if epoch == position.epoch else 0
            batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for batch_index, batch in enumerate(batches, start=skip):
                with accelerator.accumulate(model):
                    context = StepContext(self._seed_step(epoch, batch_index), global_step)
                    output = task.training_step(model, batch, context)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                self._collect({"loss": output.loss.detach(), **output.logs})
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                global_step += 1
                task.after_optimizer_step(model, global_step, plan.max_steps)
                progress.update(1)
                progress.set_postfix(loss=f"{output.loss.item():.4f}", refresh=False)
                if global_step % args.logging_steps == 0 or global_step == plan.max_steps:
                    self._log(global_step, {"lr": scheduler.get_last_lr()[0], "epoch": epoch})
                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    self._save_checkpoint(LoopPosition(global_step, epoch, batch_index + 1), plan)
                if global_step >= plan.max_steps:
                    break
            else:  # the epoch ran to its end
                if eval_loader is not None:
                    self._evaluate(model, eval_loader, global_step)
                    last_eval_step = global_step
        progress.close()
        if eval_loader is not None and last_eval_step != global_step:
            self._evaluate(model, eval_loader, global_step)
        self._save_final(model, plan, global_step)
        accelerator.end_training()
        return 0

    # Logging and evaluation
    def _collect(self, logs: dict[str, torch.Tensor]) -> None:
        for name, value in logs.items():
            self.pending_logs.setdefault(name, []).append(value.float().reshape(()))

    def _log(self, global_step: int, extra: dict[str, float]) -> None:
        """Average the collected scalars over steps and processes, add window metrics, send to the trackers."""
        names = sorted(self.pending_logs)
        local = torch.stack([torch.stack(self.pending_logs[n]).mean() for n in names]).to(self.accelerator.device)
        averaged = self.accelerator.reduce(local, reduction="mean").tolist()
        self.pending_logs.clear()
        logs = {f"train/{n}": v for n, v in zip(names, averaged)}
        logs.update({f"train/{n}": v for n, v in self.task.window_metrics(self.accelerator).items()})
        logs.update({f"train/{n}": v for n, v in extra.items()})
        self.accelerator.log(logs, step=global_step)
        logger.info("step %d: %s", global_step, _format(logs))

    def _evaluate(self, model: nn.Module, eval_loader, global_step: int) -> None:
        self._average_buffers(model)
        metrics = self.task.evaluate(model, eval_loader, self.accelerator)
        self.task.train_mode(model)
        if metrics:
            self.metrics = metrics
            self.accelerator.log({f"eval/{n}": v for n, v in metrics.items()}, step=global_step)
            logger.info("evaluation at step %d: %s", global_step, _format(metrics))

    def _average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm statistics) over processes so every replica evaluates and
        saves the same statistics."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1 or accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return
        for buffer in self._bare(model).buffers():
            if buffer.is_floating_point():
                buffer.copy_(accelerator.reduce(buffer.detach().clone(), reduction="mean"))

    def _log_plan(self, plan: TrainingPlan) -> None:
        examples = "a stream" if self.data.streaming else f"{len(self.data.train)} examples"
        logger.info(
            "training on %s: %d processes x %d per batch x %d accumulation = global batch %d; lr %.3g; %s steps "
            "(%s per epoch), %d warm-up steps",
            examples, self.accelerator.num_processes, self.args.train_batch_size,
            self.args.gradient_accumulation_steps, plan.global_batch_size, plan.learning_rate, plan.max_steps,
            plan.steps_per_epoch if plan.steps_per_epoch is not None else "unknown", plan.warmup_steps,
        )

    # Checkpoints and the final model
    def _save_checkpoint(self, position: LoopPosition, plan: TrainingPlan) -> None:
        """`accelerator.save_state` into a temporary folder, renamed to `checkpoint-N` once complete."""
        accelerator = self.accelerator
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{position.global_step}"
        staging = self.output_dir / f".{final.name}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            state = {**vars(position), "batches_per_epoch": plan.batches_per_epoch,
                     "global_batch_size": plan.global_batch_size}
            (staging / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            self._rotate_checkpoints()
            logger.info("saved %s", final)
        accelerator.wait_for_everyone()

    def _rotate_checkpoints(self) -> None:
        limit = self.args.checkpoints_total_limit
        checkpoints = list_checkpoints(self.output_dir)
        if limit is not None and len(checkpoints) > limit:
            for old in checkpoints[: len(checkpoints) - limit]:
                shutil.rmtree(old)

    def _save_final(self, model: nn.Module, plan: TrainingPlan, global_step: int) -> None:
        accelerator, task = self.accelerator, self.task
        accelerator.wait_for_everyone()
        self._average_buffers(model)
        summary: dict[str, Any] = {
            "command": task.command, "global_step": global_step, "learning_rate": plan.learning_rate,
            "global_batch_size": plan.global_batch_size, "num_processes": accelerator.num_processes,
            "metrics": self.metrics,
        }
        window = task.window_metrics(accelerator)
        if window:
            summary["final_window_metrics"] = window
            logger.info("last steps: %s", _format(window))
        if self.args.verify_replicas:
            summary["replica_weights_sha256"] = self._replica_digests(model)
        # a collective under FSDP / DeepSpeed; under --compile, of the module inside the compiled wrapper
        state_dict = accelerator.get_state_dict(model._orig_mod if is_compiled_module(model) else model)
        if accelerator.is_main_process:
            staging = self.output_dir / FINAL_TMP_DIR
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            task.save_pretrained(self._bare(model), task.export_state_dict(state_dict), staging)
            (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            self._write_model_card(staging, plan, global_step)
            publish_directory(staging, self.output_dir)
            logger.info("saved the final model to %s", self.output_dir)
        accelerator.wait_for_everyone()

    def _bare(self, model: nn.Module) -> nn.Module:
        """The task's module inside the DDP / FSDP / compile wrappers."""
        return self.accelerator.unwrap_model(model, keep_torch_compile=False)

    def _replica_digests(self, model: nn.Module) -> list[str] | None:
        """Every process's checksum of the weights it would save (equal on all processes when DDP kept sync)."""
        accelerator = self.accelerator
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            logger.warning("`--verify-replicas` is skipped: the weights are sharded")
            return None
        local = state_dict_digest(self.task.export_state_dict(self._bare(model).state_dict()))
        from accelerate.utils import gather_object

        digests = gather_object([local])
        if len(set(digests)) > 1:
            logger.warning("the processes ended with different weights: %s", digests)
        return digests

    def _write_model_card(self, save_dir: Path, plan: TrainingPlan, global_step: int) -> None:
        """The model card; a failure here is logged, not fatal (the weights are what matters)."""
        args, data = self.args, self.data
        start = f" starting from `{args.model}`" if args.model else ""
        text = (
            f"Trained with `mage-hf {self.task.command}` (mage_hf){start} on {data.source}: {global_step} optimizer "
            f"steps at global batch {plan.global_batch_size} and peak learning rate {plan.learning_rate:.3g} "
            f"(warm-up {plan.warmup_steps} steps, cosine decay), seed {args.seed}."
        )
        try:
            from mage_hf.model_card import write_model_card

            write_model_card(
                save_dir,
                kind=self.task.card_kind,
                datasets=[data.hub_dataset_id] if data.hub_dataset_id else None,
                metrics=self.metrics or None,
                dataset_name_for_metrics=data.source if self.metrics else None,
                extra_text=text,
                model_name=self.output_dir.resolve().name,
                **self.task.model_card_kwargs(),
            )
        except Exception:
            logger.exception("could not write the model card")


def _scalar_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}


def _format(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


__all__ = [
    "StepContext",
    "StepOutput",
    "Trainer",
    "TrainingPlan",
    "TrainingTask",
    "find_resume_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "publish_directory",
    "run_training",
    "save_image_processor",
    "state_dict_digest",
    "is_decayed",
    "weight_decay_groups",
]
